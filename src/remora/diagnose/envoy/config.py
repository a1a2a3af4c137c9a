"""Read Envoy configuration evidence into one view: listeners, clusters, routes, endpoints.

Accepted shapes (any number of files per pod, merged):
- Envoy admin ``/config_dump`` and ``istioctl proxy-config all POD -o json`` (which prints
  the raw ``config_dump?include_eds`` of the pod; istioctl/pkg/proxyconfig/proxyconfig.go
  allConfigCmd): an object with ``configs``, each typed by ``@type`` (BootstrapConfigDump,
  ListenersConfigDump, ClustersConfigDump, RoutesConfigDump, EndpointsConfigDump; others
  ignored);
  https://www.envoyproxy.io/docs/envoy/latest/api-v3/admin/v3/config_dump.proto
- an Envoy bootstrap (``static_resources``), as remora and the reference configs write;
- ``istioctl proxy-config listener|cluster|route|endpoint POD -o json``: a JSON array of
  listeners, clusters, route configurations or cluster statuses (``hostStatuses``);
- one listener or cluster object.
Keys may be camelCase (istioctl, protobuf JSON) or snake_case (Envoy); they are converted
to Envoy's snake_case field names. Text cut from a document (the seed) may carry the
command line above it, ``//`` or ``#`` comments, ``...`` and trailing commas: it is read,
and the result is marked ``partial`` because such an excerpt leaves things out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from remora.diagnose.pasted import is_prompt
from remora.diagnose.proxy_config.dump import snake as struct_aware_snake
from remora.errors import RemoraError

JSON = dict[str, Any]
_CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")


def snake(obj: Any) -> Any:
    """camelCase keys -> snake_case; map keys (type URLs, ``@type``) and free-form Struct
    contents (TypedStruct ``value``, v2 ``config``, metadata) keep their keys as written."""
    return struct_aware_snake(obj)


def relaxed_json(text: str) -> tuple[Any, bool]:
    """Strict JSON first; then the same text with prose, comments and trailing commas removed.

    Returns (value, relaxed). A truncated document is still an error: we do not guess.
    """
    try:
        return json.loads(text), False
    except json.JSONDecodeError as strict_error:
        start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
        if start < 0:
            raise
        body = text[start:]
        # drop comments outside strings
        out: list[str] = []
        in_str = esc = False
        i = 0
        while i < len(body):
            ch = body[i]
            if in_str:
                out.append(ch)
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
                out.append(ch)
            elif ch == "#" or body.startswith("//", i):
                while i < len(body) and body[i] != "\n":
                    i += 1
                continue
            else:
                out.append(ch)
            i += 1
        cleaned = "".join(out)
        cleaned = re.sub(r"^\s*\.\.\.\s*$", "", cleaned, flags=re.M)
        cleaned = re.sub(r",(\s*[}\]])", r"\1", cleaned)
        try:
            return json.loads(cleaned), True
        except json.JSONDecodeError:
            raise strict_error from None


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    tls_mode: str | None = None  # endpoint metadata envoy.transport_socket_match.tlsMode
    healthy: bool = True


@dataclass
class EnvoyConfig:
    listeners: list[JSON] = field(default_factory=list)
    clusters: dict[str, JSON] = field(default_factory=dict)
    routes: dict[str, JSON] = field(default_factory=dict)
    endpoints: dict[str, list[Endpoint]] = field(default_factory=dict)
    node_id: str | None = None
    node_metadata: dict[str, Any] = field(default_factory=dict)  # ISTIO_VERSION, ...
    partial: bool = False
    sources: list[str] = field(default_factory=list)
    has_listeners: bool = False
    has_clusters: bool = False
    has_routes: bool = False
    has_endpoints: bool = False

    def listener_named(self, name: str) -> JSON | None:
        return next((lst for lst in self.listeners if lst.get("name") == name), None)

    def node_type(self) -> str | None:
        """Istio's proxy type, the node id's first field (pilot/pkg/model/context.go
        NodeType): ``sidecar``, or ``router`` for a gateway."""
        if self.node_id and self.node_id.count("~") >= 3:
            return self.node_id.split("~", 1)[0]
        return None

    def pod_ip(self) -> str | None:
        """Istio node ids are ``sidecar~POD_IP~POD.NS~NS.svc.cluster.local``."""
        if self.node_id and self.node_id.count("~") >= 3:
            return self.node_id.split("~")[1] or None
        return None


def _type(obj: JSON) -> str:
    return str(obj.get("@type", "")).rsplit(".", 1)[-1]


def _add_listener(cfg: EnvoyConfig, listener: JSON) -> None:
    cfg.has_listeners = True
    cfg.listeners = [x for x in cfg.listeners if x.get("name") != listener.get("name")]
    cfg.listeners.append(listener)


def _add_cluster(cfg: EnvoyConfig, cluster: JSON) -> None:
    cfg.has_clusters = True
    cfg.clusters[str(cluster.get("name", ""))] = cluster
    # A STATIC cluster carries its endpoints inline (load_assignment); Istio's inbound
    # clusters were STATIC with endpoint 127.0.0.1:PORT before 1.10 (pilot/pkg/networking/
    # core/v1alpha3 cluster_builder buildInboundClusterForPortOrUDS), and the dump's
    # EndpointsConfigDump lists only EDS clusters. An EDS entry read first is kept.
    cla = cluster.get("load_assignment")
    name = str(cluster.get("name", ""))
    if isinstance(cla, dict) and name not in cfg.endpoints:
        _add_cla(cfg, {**cla, "cluster_name": name})


def _add_cla(cfg: EnvoyConfig, cla: JSON) -> None:
    cfg.has_endpoints = True
    eps: list[Endpoint] = []
    for locality in cla.get("endpoints", []):
        for lb in locality.get("lb_endpoints", []):
            sock = lb.get("endpoint", {}).get("address", {}).get("socket_address", {})
            meta = lb.get("metadata", {}).get("filter_metadata", {})
            tls = meta.get("envoy.transport_socket_match", {}).get("tlsMode")
            healthy = lb.get("health_status", "HEALTHY") in ("HEALTHY", "UNKNOWN")
            if sock:
                eps.append(Endpoint(str(sock.get("address")), int(sock.get("port_value", 0)),
                                    tls, healthy))
    cfg.endpoints[str(cla.get("cluster_name", ""))] = eps


def _add_cluster_status(cfg: EnvoyConfig, status: JSON) -> None:
    cfg.has_endpoints = True
    eps = []
    for host in status.get("host_statuses", []):
        sock = host.get("address", {}).get("socket_address", {})
        health = host.get("health_status", {}).get("eds_health_status", "HEALTHY")
        eps.append(Endpoint(str(sock.get("address")), int(sock.get("port_value", 0)),
                            None, health in ("HEALTHY", "UNKNOWN")))
    cfg.endpoints[str(status.get("name", ""))] = eps


def _add_bootstrap(cfg: EnvoyConfig, boot: JSON) -> None:
    node = boot.get("node", {})
    if node.get("id"):
        cfg.node_id = str(node["id"])
    if isinstance(node.get("metadata"), dict):
        cfg.node_metadata.update(node["metadata"])
    static = boot.get("static_resources", {})
    for listener in static.get("listeners", []):
        _add_listener(cfg, listener)
    for cluster in static.get("clusters", []):
        _add_cluster(cfg, cluster)


def _add_dump_entry(cfg: EnvoyConfig, entry: JSON) -> bool:
    kind = _type(entry)
    if kind == "BootstrapConfigDump":
        _add_bootstrap(cfg, entry.get("bootstrap", {}))
    elif kind == "ListenersConfigDump":
        cfg.has_listeners = True
        for item in entry.get("static_listeners", []):
            _add_listener(cfg, item.get("listener", {}))
        # Envoy <= 1.12 (Istio <= 1.4) listed dynamic_active_listeners with the listener
        # directly under each entry
        for item in entry.get("dynamic_active_listeners", []) or []:
            if isinstance(item.get("listener"), dict):
                _add_listener(cfg, item["listener"])
        for item in entry.get("dynamic_listeners", []):
            state = item.get("active_state") or item.get("warming_state") or {}
            if state.get("listener"):
                _add_listener(cfg, state["listener"])
    elif kind == "ClustersConfigDump":
        cfg.has_clusters = True
        for key in ("static_clusters", "dynamic_active_clusters", "dynamic_warming_clusters"):
            for item in entry.get(key, []):
                if item.get("cluster"):
                    _add_cluster(cfg, item["cluster"])
    elif kind == "RoutesConfigDump":
        cfg.has_routes = True
        for key in ("static_route_configs", "dynamic_route_configs"):
            for item in entry.get(key, []):
                rc = item.get("route_config", {})
                cfg.routes[str(rc.get("name", ""))] = rc
    elif kind == "EndpointsConfigDump":
        for key in ("static_endpoint_configs", "dynamic_endpoint_configs"):
            for item in entry.get(key, []):
                _add_cla(cfg, item.get("endpoint_config", {}))
    else:
        return False
    return True


def _classify(obj: JSON) -> str | None:
    if "filter_chains" in obj or "use_original_dst" in obj or "listener_filters" in obj or (
        "address" in obj and "traffic_direction" in obj
    ):
        return "listener"
    if "virtual_hosts" in obj:
        return "route"
    if "host_statuses" in obj:
        return "cluster_status"
    if "cluster_name" in obj and "endpoints" in obj:
        return "cla"
    if "name" in obj and ({"type", "connect_timeout", "lb_policy", "eds_cluster_config",
                           "load_assignment", "cluster_type"} & set(obj)):
        return "cluster"
    return None


def add_document(cfg: EnvoyConfig, doc: Any, source: str, relaxed: bool = False) -> None:
    """Merge one parsed JSON document into ``cfg``; RemoraError if it is not Envoy config."""
    doc = snake(doc)
    cfg.sources.append(source)
    cfg.partial = cfg.partial or relaxed
    items: list[Any]
    if isinstance(doc, dict) and isinstance(doc.get("configs"), list):
        known = [_add_dump_entry(cfg, e) for e in doc["configs"] if isinstance(e, dict)]
        if any(known):
            return
    if isinstance(doc, dict) and ("static_resources" in doc or "bootstrap" in doc):
        _add_bootstrap(cfg, doc.get("bootstrap", doc))
        return
    if isinstance(doc, dict) and isinstance(doc.get("cluster_statuses"), list):
        items = doc["cluster_statuses"]
    elif isinstance(doc, dict) and any(isinstance(doc.get(k), list) for k in (
            "listeners", "clusters", "routes", "endpoints")):
        # {"listeners": [...], "clusters": [...], ...}: per-type lists in one object
        items = [x for k in ("listeners", "clusters", "routes", "endpoints")
                 for x in doc.get(k) or [] if isinstance(doc.get(k), list)]
    elif isinstance(doc, list):
        items = doc
    elif isinstance(doc, dict):
        items = [doc]
    else:
        items = []
    used = 0
    for item in items:
        if isinstance(item, dict) and "version_info" in item:
            # one dynamic_active_* entry of /config_dump pasted alone:
            # {"version_info": ..., "cluster"|"listener"|"route_config": {...}}
            inner = next((item[k] for k in ("cluster", "listener", "route_config")
                          if isinstance(item.get(k), dict)), None)
            item = inner if inner is not None else item
        kind = _classify(item) if isinstance(item, dict) else None
        if kind == "listener":
            _add_listener(cfg, item)
        elif kind == "cluster":
            _add_cluster(cfg, item)
        elif kind == "route":
            cfg.has_routes = True
            cfg.routes[str(item.get("name", ""))] = item
        elif kind == "cla":
            _add_cla(cfg, item)
        elif kind == "cluster_status":
            _add_cluster_status(cfg, item)
        else:
            continue
        used += 1
    if not used:
        raise RemoraError(
            f"{source} is JSON but not Envoy configuration (no listeners, clusters, routes or "
            "endpoints found)",
            "give `istioctl proxy-config all POD -o json`, the Envoy admin /config_dump, or "
            "`istioctl proxy-config listener|cluster POD -o json` output")


def parse_config_text(cfg: EnvoyConfig, text: str, source: str) -> None:
    if not text.strip():
        raise RemoraError(f"{source} is empty", "give an Envoy config dump (JSON)")
    # a shell prompt above the JSON (`$ istioctl ...`, `[root@host dir]# istioctl ...`),
    # and a markdown fence around it (```json ... ```) as documents paste it
    lines = [line for line in text.splitlines() if not re.fullmatch(r"\s*```\w*\s*", line)]
    while lines and (is_prompt(lines[0]) or not lines[0].strip()):
        lines = lines[1:]
    text = "\n".join(lines) if lines else text
    try:
        doc, relaxed = relaxed_json(text)
    except json.JSONDecodeError as exc:
        yaml_doc = _yaml_document(text)
        if yaml_doc is not None:
            add_document(cfg, yaml_doc, source + " (YAML)")
            return
        raise RemoraError(
            f"{source} is not complete JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "expected an Envoy config dump",
            "re-collect it with `istioctl proxy-config all POD -o json > config_dump.json` "
            "(the file may be truncated)") from exc
    add_document(cfg, doc, source, relaxed)


def _yaml_document(text: str) -> Any:
    """`istioctl proxy-config all POD -o yaml` (or a YAML copy of /config_dump): the same
    document as YAML. None when the text is not a YAML mapping or list."""
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if not re.match(r"\s*(?:-\s|['\"]?[@\w.-]+['\"]?:(?:\s|$))", first):
        return None
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return doc if isinstance(doc, (dict, list)) else None
