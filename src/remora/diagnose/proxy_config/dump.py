"""Reading an Envoy /config_dump (or `istioctl proxy-config all -o json`) into resources.

Envoy's admin API writes proto field names (``dynamic_listeners``, ``use_original_dst``);
istioctl's JSON writes proto3 JSON names (``dynamicListeners``, ``useOriginalDst``). Both
are accepted: everything is normalised to snake_case first, and ``camel()`` turns a
resource back into istioctl's layout for ``-o json``. Map-valued fields keep their keys
as written (``filter_metadata`` keys and the google.protobuf.Struct values under them,
``typed_extension_protocol_options`` keys), as protobuf JSON does.
Layout: https://www.envoyproxy.io/docs/envoy/latest/api-v3/admin/v3/config_dump.proto
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from remora.diagnose.textdecode import decode_evidence
from remora.errors import RemoraError

JSON = dict[str, Any]

# snake name -> how its value's keys are treated: "struct" keeps the whole value verbatim,
# "map" keeps the keys but converts the values (Any messages).
# Fields whose keys are data, not proto field names: kept as written. TypedStruct.value and
# the v2 filters' `config` are google.protobuf.Struct (Istio <= 1.6 sent `config` blocks);
# a transport_socket_matches entry's `match` is a Struct matched against endpoint metadata
# (`tlsMode`).
_MAPS = {"filter_metadata": "struct", "typed_filter_metadata": "map",
         "typed_extension_protocol_options": "map", "typed_per_filter_config": "map",
         "value": "struct", "config": "struct"}


def _snake_key(key: str) -> str:
    if key.startswith("@"):
        return key
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower()


def _camel_key(key: str) -> str:
    if key.startswith("@") or "_" not in key:
        return key
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _convert(value: Any, to_camel: bool) -> Any:
    if isinstance(value, list):
        return [_convert(v, to_camel) for v in value]
    if not isinstance(value, dict):
        return value
    out: JSON = {}
    for key, v in value.items():
        snake = _snake_key(key)
        new_key = _camel_key(snake) if to_camel else snake
        mode = _MAPS.get(snake)
        if snake == "node" and isinstance(v, dict):
            # node.metadata is a Struct of Istio's (ISTIO_VERSION, INTERCEPTION_MODE, ...)
            out[new_key] = {**_convert({k: x for k, x in v.items() if k != "metadata"},
                                       to_camel),
                            **({"metadata": v["metadata"]} if "metadata" in v else {})}
        elif snake == "transport_socket_matches" and isinstance(v, list):
            out[new_key] = [{**_convert({k: x for k, x in m.items() if k != "match"},
                                        to_camel),
                             **({"match": m["match"]} if "match" in m else {})}
                            if isinstance(m, dict) else m for m in v]
        elif mode == "struct" and isinstance(v, dict):
            out[new_key] = v
        elif mode == "map" and isinstance(v, dict):
            out[new_key] = {k: _convert(x, to_camel) for k, x in v.items()}
        else:
            out[new_key] = _convert(v, to_camel)
    return out


def snake(value: Any) -> Any:
    return _convert(value, to_camel=False)


def camel(value: Any) -> Any:
    """A resource in istioctl's -o json layout (proto3 JSON names)."""
    return _convert(value, to_camel=True)


@dataclass
class ConfigDump:
    """The resources of one sidecar, each list in the dump's order (dynamic first)."""

    listeners: list[JSON] = field(default_factory=list)
    clusters: list[JSON] = field(default_factory=list)
    endpoints: list[JSON] = field(default_factory=list)  # ClusterLoadAssignments
    routes: list[JSON] = field(default_factory=list)  # RouteConfigurations (RDS)
    bootstrap: JSON = field(default_factory=dict)
    has_endpoint_section: bool = False
    # an Envoy <= 1.12 dump (dynamic_active_listeners, Istio <= 1.4): istioctl of that era
    # listed its listeners unsorted, in a padding-5 table
    v2_listeners: bool = False
    # the dump has a RoutesConfigDump (a proxy's /config_dump; the control plane's files
    # have none): its route configs are what istioctl lists
    route_section: bool = False
    raw: JSON = field(default_factory=dict)  # the dump as given (for `all -o json`)


def _section(kind: str) -> str:
    return kind.rsplit(".", 1)[-1]


def dump_text(text: str) -> str:
    """TEXT without a byte-order mark and what a terminal paste puts above the JSON: the
    shell prompt and command (`$ istioctl proxy-config all POD -o json`) and a markdown
    fence, as explain reads the same files (diagnose/envoy/config.py)."""
    from remora.diagnose.pasted import is_prompt

    text = text.lstrip("\ufeff")
    given = text.splitlines()
    lines = [line for line in given if not re.fullmatch(r"\s*```\w*\s*", line)]
    start = 0
    while start < len(lines) and (is_prompt(lines[start]) or not lines[start].strip()):
        start += 1
    return "\n".join(lines[start:]) if start or len(lines) != len(given) else text


def load_config_dump(data: str | bytes | Any, name: str = "config dump") -> JSON:
    """The JSON object of a whole /config_dump (or `istioctl proxy-config all -o json`),
    from text or bytes (BOM, UTF-16, gzip: remora.diagnose.textdecode); a one-line
    RemoraError saying what it is instead."""
    if isinstance(data, bytes):
        data = decode_evidence(data, name)
    if isinstance(data, str):
        text = dump_text(data)
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            hint = ("it looks like YAML: save it with -o json" if re.match(
                r"\s*(?:-\s|['\"]?[@\w.-]+['\"]?:(?:\s|$))", text) else
                "give the output of /config_dump or istioctl proxy-config all -o json")
            raise RemoraError(f"config dump is not JSON: {exc}", hint) from exc
    else:
        raw = data
    if isinstance(raw, list):
        kinds = {_array_kind(x) for x in raw if isinstance(x, dict)} - {""}
        what = f"a list of {', '.join(k + 's' for k in sorted(kinds))}" if kinds else (
            "a JSON array")
        cmd = (f"istioctl proxy-config {sorted(kinds)[0]} POD -o json" if len(kinds) == 1
               else "istioctl proxy-config TYPE POD -o json")
        raise RemoraError(f"{name} is {what} (`{cmd}` output), not a whole config dump "
                          "(no \"configs\" list)",
                          "save `istioctl proxy-config all POD -n NS -o json` (or the admin "
                          "/config_dump) and give that")
    if not isinstance(raw, dict) or not isinstance(raw.get("configs"), list):
        got = "an object" if isinstance(raw, dict) else f"JSON {type(raw).__name__}".replace(
            "NoneType", "null")
        raise RemoraError(f"{name} has no \"configs\" list (it is {got})",
                          "give the output of Envoy's /config_dump (or istioctl proxy-config "
                          "all -o json)")
    return raw


def _array_kind(item: JSON) -> str:
    """What an element of `istioctl proxy-config TYPE -o json` output is (its TYPE)."""
    if "filterChains" in item or "filter_chains" in item or "listenerFilters" in item:
        return "listener"
    if "virtualHosts" in item or "virtual_hosts" in item:
        return "route"
    if "hostStatuses" in item or "host_statuses" in item:
        return "endpoint"
    if "name" in item and ({"type", "connectTimeout", "connect_timeout", "edsClusterConfig",
                            "eds_cluster_config", "loadAssignment", "load_assignment"} & set(item)):
        return "cluster"
    return ""


def parse_config_dump(data: str | bytes | JSON) -> ConfigDump:
    """An Envoy /config_dump or istioctl `proxy-config all -o json` output."""
    raw = load_config_dump(data)
    dump = ConfigDump(raw=raw)
    for section in raw["configs"]:
        s = snake(section)
        kind = _section(str(s.get("@type", "")))
        if kind == "BootstrapConfigDump":
            dump.bootstrap = s.get("bootstrap", {})
        elif kind == "ListenersConfigDump":
            # Envoy <= 1.12 (Istio <= 1.4): dynamic_active_listeners[].listener
            dump.listeners += [d["listener"] for d in s.get("dynamic_active_listeners", [])
                               if "listener" in d]
            dump.v2_listeners = dump.v2_listeners or "dynamic_active_listeners" in s
            for d in s.get("dynamic_listeners", []):
                active = d.get("active_state") or {}
                if "listener" in active:
                    dump.listeners.append(active["listener"])
            dump.listeners += [d["listener"] for d in s.get("static_listeners", [])
                               if "listener" in d]
        elif kind == "ClustersConfigDump":
            for key in ("dynamic_active_clusters", "static_clusters"):
                dump.clusters += [d["cluster"] for d in s.get(key, []) if "cluster" in d]
        elif kind == "EndpointsConfigDump":
            dump.has_endpoint_section = True
            for key in ("dynamic_endpoint_configs", "static_endpoint_configs"):
                dump.endpoints += [d["endpoint_config"] for d in s.get(key, [])
                                   if "endpoint_config" in d]
        elif kind == "RoutesConfigDump":
            dump.route_section = True
            for key in ("dynamic_route_configs", "static_route_configs"):
                dump.routes += [d["route_config"] for d in s.get(key, [])
                                if "route_config" in d]
    for resources in (dump.listeners, dump.clusters, dump.endpoints, dump.routes):
        for r in resources:
            r.pop("@type", None)
    if not dump.has_endpoint_section:
        # Envoy leaves EDS out unless asked (?include_eds); inline load assignments of
        # static clusters still say where they send.
        dump.endpoints = [c["load_assignment"] for c in dump.clusters
                          if isinstance(c.get("load_assignment"), dict)]
    return dump


def typed_config(filt: JSON) -> JSON:
    """A filter's config: ``typed_config``, or the v2 Struct ``config`` (Istio <= 1.6)."""
    tc = filt.get("typed_config")
    if isinstance(tc, dict):
        return tc
    conf = filt.get("config")
    return conf if isinstance(conf, dict) else {}


def inline_route_configs(listeners: list[JSON]) -> list[JSON]:
    """Route configurations carried inline in http_connection_managers (remora's sidecar
    config has no RDS), once per name."""
    seen: dict[str, JSON] = {}  # by content: unnamed configs (bootstrap's) are distinct
    for listener in listeners:
        chains = list(listener.get("filter_chains", []))
        if listener.get("default_filter_chain"):
            chains.append(listener["default_filter_chain"])
        for chain in chains:
            for f in chain.get("filters", []):
                rc = typed_config(f).get("route_config")
                if f.get("name") in ("envoy.filters.network.http_connection_manager",
                                     "envoy.http_connection_manager") \
                        and isinstance(rc, dict):
                    seen.setdefault(json.dumps(rc, sort_keys=True), rc)
    return list(seen.values())


def from_xds_files(files: dict[str, JSON]) -> ConfigDump:
    """A ConfigDump of the control plane's own files (bootstrap.json, lds.json, cds.json,
    eds/*.json as written by remora.controlplane), for inspecting a sidecar's intended
    config without asking the running proxy; laid out as Envoy's /config_dump would be."""
    def resources(name: str) -> list[JSON]:
        body = files.get(name, {})
        return [{k: v for k, v in r.items() if k != "@type"} for r in body.get("resources", [])]

    admin = "type.googleapis.com/envoy.admin.v3."
    boot = files.get("bootstrap.json", {})
    static = boot.get("static_resources", {})
    raw = {"configs": [
        {"@type": admin + "BootstrapConfigDump", "bootstrap": boot},
        {"@type": admin + "ClustersConfigDump",
         "static_clusters": [{"cluster": c} for c in static.get("clusters", [])],
         "dynamic_active_clusters": [{"cluster": c} for c in resources("cds.json")]},
        {"@type": admin + "ListenersConfigDump",
         "static_listeners": [{"listener": x} for x in static.get("listeners", [])],
         "dynamic_listeners": [{"name": x.get("name", ""), "active_state": {"listener": x}}
                               for x in resources("lds.json")]},
        {"@type": admin + "EndpointsConfigDump",
         "static_endpoint_configs": [{"endpoint_config": c["load_assignment"]}
                                     for c in static.get("clusters", [])
                                     if "load_assignment" in c],
         "dynamic_endpoint_configs": [{"endpoint_config": cla} for name in sorted(files)
                                      if name.startswith("eds/") for cla in resources(name)]},
    ]}
    return parse_config_dump(raw)
