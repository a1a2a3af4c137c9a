"""``/config_dump`` in Envoy's layout (envoy.admin.v3.*ConfigDump), from the server state.
https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--config_dump
Resources are echoed as they were loaded (snake_case field names, as Envoy prints them).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from remora.proxy.config.listener import LISTENER_TYPE
from remora.proxy.upstream.config import CLA_TYPE, CLUSTER_TYPE

if TYPE_CHECKING:
    from remora.proxy.server.runtime import DrainingListener, Server

ADMIN = "type.googleapis.com/envoy.admin.v3."
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def timestamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _typed(type_url: str, raw: dict[str, Any]) -> dict[str, Any]:
    return {"@type": type_url, **{k: v for k, v in raw.items() if k != "@type"}}


def _draining_state(old: DrainingListener) -> dict[str, Any]:
    """A ListenersConfigDump.DynamicListenerState of a draining version (the version,
    config and update time it had while active, as Envoy 1.40 shows them)."""
    return {"version_info": old.version_info, "listener": _typed(LISTENER_TYPE, old.raw),
            "last_updated": timestamp(old.last_updated)}


def _inline_routes(listener_raw: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    chains = list(listener_raw.get("filter_chains") or listener_raw.get("filterChains") or [])
    default = listener_raw.get("default_filter_chain") or listener_raw.get("defaultFilterChain")
    if default:
        chains.append(default)
    for chain in chains:
        for filt in chain.get("filters", []):
            typed = filt.get("typed_config") or filt.get("typedConfig") or {}
            rc = typed.get("route_config") or typed.get("routeConfig")
            if typed.get("@type") == HCM_TYPE and isinstance(rc, dict):
                found.append(rc)
    return found


def _hosts_cla(name: str, hosts: list[Any]) -> dict[str, Any]:
    by_prio: dict[int, list[dict[str, Any]]] = {}
    for h in hosts:
        endpoint: dict[str, Any] = {"address": {"socket_address": {
            "address": h.address.ip, "port_value": h.address.port}}}
        if h.additional:  # a dual-stack endpoint's other addresses, as Envoy dumps them
            endpoint["additional_addresses"] = [
                {"address": {"socket_address": {"address": a.ip, "port_value": a.port}}}
                for a in h.additional]
        by_prio.setdefault(h.priority, []).append({
            "endpoint": endpoint,
            "health_status": "HEALTHY" if h.healthy else "UNHEALTHY",
            "load_balancing_weight": h.weight,
        })
    endpoints = []
    for prio in sorted(by_prio):
        group: dict[str, Any] = {"lb_endpoints": by_prio[prio]}
        if prio:
            group["priority"] = prio
        endpoints.append(group)
    out: dict[str, Any] = {"@type": CLA_TYPE, "cluster_name": name}
    if endpoints:
        out["endpoints"] = endpoints
    return out


def config_dump(server: Server, include_eds: bool = False) -> dict[str, Any]:
    boot_ts = timestamp(server.bootstrap_time)
    configs: list[dict[str, Any]] = [{
        "@type": ADMIN + "BootstrapConfigDump",
        "bootstrap": server.bootstrap.raw,
        "last_updated": boot_ts,
    }]

    cm = server.cluster_manager
    clusters: dict[str, Any] = {"@type": ADMIN + "ClustersConfigDump"}
    if server.versions["cds"]:
        clusters["version_info"] = server.versions["cds"]
    static_c = [{"cluster": _typed(CLUSTER_TYPE, c.config.raw), "last_updated": boot_ts}
                for n, c in sorted(cm.clusters.items()) if n in cm.static_names]
    dynamic_c = [{"version_info": cm.versions.get(n, ""),
                  "cluster": _typed(CLUSTER_TYPE, c.config.raw),
                  "last_updated": timestamp(c.last_updated)}
                 for n, c in sorted(cm.clusters.items()) if n not in cm.static_names]
    if static_c:
        clusters["static_clusters"] = static_c
    if dynamic_c:
        clusters["dynamic_active_clusters"] = dynamic_c
    configs.append(clusters)

    if include_eds:
        eds: dict[str, Any] = {"@type": ADMIN + "EndpointsConfigDump"}
        static_e = []
        dynamic_e = []
        for name, c in sorted(cm.clusters.items()):
            if c.config.type == "EDS":
                dynamic_e.append({"version_info": c.version_info,
                                  "endpoint_config": _hosts_cla(name, c.hosts),
                                  "last_updated": timestamp(c.last_updated)})
            elif c.config.type == "STATIC":
                static_e.append({"endpoint_config": _hosts_cla(name, c.hosts)})
        if static_e:
            eds["static_endpoint_configs"] = static_e
        if dynamic_e:
            eds["dynamic_endpoint_configs"] = dynamic_e
        configs.append(eds)

    listeners: dict[str, Any] = {"@type": ADMIN + "ListenersConfigDump"}
    if server.versions["lds"]:
        listeners["version_info"] = server.versions["lds"]
    static_l = []
    dynamic_l = []
    routes = []
    # a drained listener version's draining_state (Envoy's draining_listeners_, the newest
    # of a name), next to the active_state of the version that replaced it, or alone for
    # a removed listener: after the active ones, as Envoy fills the list
    draining = {d.name: d for d in server.draining_listeners}
    for name, active in sorted(server.listeners.items()):
        raw = active.config.raw
        routes.extend(_inline_routes(raw))
        if name in server.static_listener_names:
            static_l.append({"listener": _typed(LISTENER_TYPE, raw), "last_updated": boot_ts})
        else:
            entry: dict[str, Any] = {"name": name, "active_state": {
                "version_info": active.version_info, "listener": _typed(LISTENER_TYPE, raw),
                "last_updated": timestamp(active.last_updated)}}
            old = draining.pop(name, None)
            if old is not None:
                entry["draining_state"] = _draining_state(old)
            dynamic_l.append(entry)
    for name, old in sorted(draining.items()):
        dynamic_l.append({"name": name, "draining_state": _draining_state(old)})
    if static_l:
        listeners["static_listeners"] = static_l
    if dynamic_l:
        listeners["dynamic_listeners"] = dynamic_l
    configs.append(listeners)

    route_dump: dict[str, Any] = {"@type": ADMIN + "RoutesConfigDump"}
    if routes:
        route_dump["static_route_configs"] = [
            {"route_config": _typed(ROUTE_TYPE, rc), "last_updated": boot_ts} for rc in routes]
    configs.append(route_dump)
    configs.append({"@type": ADMIN + "SecretsConfigDump"})
    return {"configs": configs}
