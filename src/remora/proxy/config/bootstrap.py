"""``envoy.config.bootstrap.v3.Bootstrap`` and the xDS files it points at.

https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/bootstrap/v3/bootstrap.proto
Static listeners/clusters are parsed by the server (they need its factory context); here
the bootstrap's own fields are read strictly and the dynamic sources resolved to paths.
A path-based xDS file is a ``DiscoveryResponse`` in JSON or YAML
(https://www.envoyproxy.io/docs/envoy/latest/configuration/overview/xds_api#filesystem-subscriptions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from remora.proxy.config.address import Address, parse_address
from remora.proxy.config.strict import (
    ConfigError,
    Fields,
    json_kind,
    not_an_object,
    type_url_of,
)
from remora.proxy.upstream.config import config_source_path

BOOTSTRAP_TYPE = "envoy.config.bootstrap.v3.Bootstrap"
MAX_CX_MONITORS = (
    "envoy.resource_monitors.global_downstream_max_connections",
    "envoy.resource_monitors.downstream_connections",
)
MAX_CX_TYPE = ("envoy.extensions.resource_monitors.downstream_connections.v3."
               "DownstreamConnectionsConfig")


@dataclass
class Bootstrap:
    raw: dict[str, Any]
    path: str
    node_id: str = ""
    node_cluster: str = ""
    admin: Address | None = None
    static_listeners: list[Any] = field(default_factory=list)
    static_clusters: list[Any] = field(default_factory=list)
    lds_path: str | None = None
    cds_path: str | None = None
    max_downstream_connections: int | None = None


def read_document(path: str) -> Any:
    """JSON or YAML by extension (YAML is a superset, so unknown extensions try both)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}", "check the path") from exc
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ConfigError("", f"{path} is not valid JSON: {str(exc).splitlines()[0]}") \
                from exc
    # imported here: a sidecar on JSON files (the lab's, Istio's) does not pay PyYAML's
    # import, 15-65 ms of each start on the 2-core VM (python3 -X importtime)
    import yaml

    try:
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        # PyYAML's first line says what it was parsing; its marks say where (1-based, as
        # an editor counts), so the message names the line to look at
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = f"{str(exc).splitlines()[0]}{f' ({problem})' if problem else ''}"
        raise ConfigError("", f"{path} is not valid YAML{where}: {what}") from exc


def read_discovery_file(path: str, type_url: str) -> tuple[str, list[dict[str, Any]]]:
    """A DiscoveryResponse file -> (version_info, resources), resources checked for type."""
    doc = read_document(path)
    f = Fields(doc, "", f"DiscoveryResponse in {path}")
    version = f.string("version_info", "")
    f.string("type_url")
    resources = f.items("resources")
    f.ignore("@type", "nonce")
    f.done()
    want = type_url.rsplit("/", 1)[-1]
    out = []
    for i, res in enumerate(resources):
        rf = Fields(res, f"resources[{i}]")
        got = type_url_of(rf)
        if got != want:
            raise ConfigError(rf.at("@type"), f"expected {want}, got {got} ({path})")
        out.append({k: v for k, v in res.items() if k != "@type"})
    return version, out


def _overload(f: Fields, boot: Bootstrap) -> None:
    f.duration("refresh_interval")
    for mon in f.each("resource_monitors", "ResourceMonitor"):
        name = mon.string("name", required=True)
        typed = mon.fields("typed_config", "typed_config")
        mon.done()
        if name not in MAX_CX_MONITORS or typed is None or type_url_of(typed) != MAX_CX_TYPE:
            raise ConfigError(mon.path, f"unsupported resource monitor {name!r}",
                              f"remora implements {MAX_CX_MONITORS[0]} ({MAX_CX_TYPE})")
        boot.max_downstream_connections = typed.integer("max_active_downstream_connections",
                                                        required=True)
        typed.done()
    if f.items("actions"):
        raise ConfigError(f.at("actions"), "overload actions are not supported",
                          "remora implements the global downstream connection limit only")
    f.done()


def parse_bootstrap(doc: Any, path: str) -> Bootstrap:
    if not isinstance(doc, dict):
        # Envoy 1.40: "error initializing configuration 'FILE': Unable to parse JSON as
        # proto (INVALID_ARGUMENT: invalid JSON in envoy.config.bootstrap.v3.Bootstrap,
        # near 1:1 (offset 0): unexpected character: '['; expected '{')"
        if doc is None:  # Envoy: "Unable to convert YAML as JSON: "
            raise ConfigError("", f"the file is empty (no {BOOTSTRAP_TYPE})",
                              "write the bootstrap in it: an object such as "
                              "{\"static_resources\": {...}, \"admin\": {...}}")
        raise ConfigError("", f"the bootstrap is {json_kind(doc)}, not an object "
                              f"({BOOTSTRAP_TYPE})", not_an_object(doc, "the bootstrap"))
    f = Fields(doc, "", "Bootstrap")
    boot = Bootstrap(raw=doc, path=path)
    node = f.fields("node", "Node")
    if node is not None:
        boot.node_id = node.string("id", "")
        boot.node_cluster = node.string("cluster", "")
        node.ignore("metadata", "locality", "user_agent_name", "user_agent_version")
        node.done()
    admin = f.fields("admin", "Admin")
    if admin is not None:
        boot.admin = parse_address(admin.fields("address", "Address"), admin.at("address"))
        admin.string("access_log_path")  # deprecated; remora does not log admin requests
        admin.string("profile_path")
        if admin.items("access_log"):
            raise ConfigError(admin.at("access_log"), "remora does not log admin requests",
                              "remove admin.access_log")
        admin.done()
    static = f.fields("static_resources", "StaticResources")
    if static is not None:
        boot.static_listeners = static.items("listeners")
        boot.static_clusters = static.items("clusters")
        static.done()
    dynamic = f.fields("dynamic_resources", "DynamicResources")
    if dynamic is not None:
        lds = dynamic.fields("lds_config", "ConfigSource")
        cds = dynamic.fields("cds_config", "ConfigSource")
        dynamic.done()
        # Relative paths are relative to the working directory, as in Envoy.
        if lds is not None:
            boot.lds_path = config_source_path(lds)
        if cds is not None:
            boot.cds_path = config_source_path(cds)
    overload = f.fields("overload_manager", "OverloadManager")
    if overload is not None:
        _overload(overload, boot)
    f.done()
    return boot
