"""Follow one connection through a sidecar's Envoy config: listener to upstream socket.

The steps Envoy takes for an accepted connection (docs: intro/arch_overview/listeners,
configuration/listeners/listener_filters/original_dst_filter, original_src_filter):
the listener bound to the port the capture delivered to; the original destination
(``use_original_dst`` hands the connection to the listener for that address, Istio's
virtualOutbound; the ``original_dst`` listener filter restores it in place, Istio's
virtualInbound; TPROXY leaves it as the socket's local address); the filter chain
(``envoy_match``); tcp_proxy or http_connection_manager and its route; the cluster and an
endpoint; the upstream transport socket (TLS with SNI/ALPN, or plain text); and the
source address of the upstream socket: ``upstream_bind_config`` (Istio's 127.0.0.6 on
inbound clusters) unless the ``original_src`` listener filter binds the downstream
client's address first (envoy source/common/network/connection_impl.cc prefers the
socket's already-set local address over the cluster's bind address).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from remora.diagnose.envoy_config import JSON, Endpoint, EnvoyConfig
from remora.diagnose.envoy_match import ConnInfo, describe_match, select_filter_chain
from remora.diagnose.facts import Missing, hostport

TCP_PROXY = ("envoy.filters.network.tcp_proxy", "envoy.tcp_proxy")
HCM = ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager")


@dataclass(frozen=True)
class TlsHello:
    sni: str
    alpn: tuple[str, ...] = ()


@dataclass(frozen=True)
class Downstream:
    """A connection as it reaches a sidecar."""

    src_ip: str
    src_port: int
    orig_dst_ip: str
    orig_dst_port: int
    capture: str  # "REDIRECT", "TPROXY"
    arrived_port: int  # the port capture delivered it to (15001 / 15006)
    tls: TlsHello | None = None
    http: bool = True
    authority: str | None = None
    path: str = "/"


@dataclass(frozen=True)
class UpstreamTls:
    mode: str  # "TLS", "plaintext", "unknown"
    sni: str = ""
    alpn: tuple[str, ...] = ()
    how: str = ""


@dataclass
class SidecarTrace:
    role: str
    listener: str | None = None
    handoff: str | None = None
    local_address: str | None = None
    original_dst_how: str = ""
    transport_protocol: str = ""
    server_name: str = ""
    application_protocols: tuple[str, ...] = ()
    chain: str | None = None
    chain_match: str | None = None
    chain_reasons: tuple[str, ...] = ()
    network_filter: str | None = None
    route_config: str | None = None
    virtual_host: str | None = None
    route: str | None = None
    use_remote_address: bool | None = None
    cluster: str | None = None
    cluster_type: str | None = None
    endpoint: str | None = None
    upstream_tls: UpstreamTls | None = None
    upstream_source: str | None = None
    upstream_source_why: str = ""
    upstream_mark: int | None = None
    failure: str | None = None  # no listener, no filter chain, no route, no endpoint, ...
    failure_detail: str = ""
    notes: list[str] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.failure is None and self.upstream_source is not None


def _filter_names(listener: JSON) -> list[str]:
    names = []
    for f in listener.get("listener_filters", []) or []:
        t = str((f.get("typed_config") or {}).get("@type", ""))
        names.append(str(f.get("name", "")) + " " + t)
    return names


def _has_filter(listener: JSON, short: str, type_name: str) -> JSON | None:
    for f in listener.get("listener_filters", []) or []:
        t = str((f.get("typed_config") or {}).get("@type", ""))
        if str(f.get("name", "")).endswith(short) or t.endswith(type_name):
            return dict(f)
    return None


def _sock(listener: JSON) -> tuple[str, int]:
    sa = (listener.get("address") or {}).get("socket_address") or {}
    return str(sa.get("address", "")), int(sa.get("port_value", 0) or 0)


def _fail(trace: SidecarTrace, name: str, detail: str) -> SidecarTrace:
    trace.failure, trace.failure_detail = name, detail
    return trace


def simulate(cfg: EnvoyConfig, ds: Downstream, role: str, pod_ip: str | None = None,
             prefer_endpoint: str | None = None, pod: str = "POD") -> SidecarTrace:
    """Pure: the path of ``ds`` through ``cfg``; a named failure when it stops."""
    t = SidecarTrace(role)
    if not cfg.has_listeners:
        t.missing.append(Missing(f"{role} sidecar listeners",
                                 f"istioctl proxy-config all {pod} -o json"))
        return t
    bound = [x for x in cfg.listeners if _sock(x)[1] == ds.arrived_port
             and x.get("bind_to_port") is not False]
    if not bound:
        ports = ", ".join(f"{x.get('name')}:{_sock(x)[1]}" for x in cfg.listeners)
        return _fail(t, "no listener", f"no listener bound to port {ds.arrived_port} "
                     f"(listeners: {ports or 'none'})")
    listener = bound[0]
    t.listener = str(listener.get("name"))
    if ds.capture == "TPROXY" and not listener.get("transparent"):
        if "transparent" not in listener and cfg.partial:
            t.notes.append(f"`transparent` is not in the given excerpt of {t.listener}; "
                           "Istio sets it in TPROXY mode")
        else:
            return _fail(t, "dropped", f"listener {t.listener} is not `transparent: true`: "
                         "connections delivered by TPROXY are dropped")
    orig = hostport(ds.orig_dst_ip, ds.orig_dst_port)
    local = orig
    if listener.get("use_original_dst"):
        target = _handoff_target(cfg, ds, listener)
        if target is not None:
            t.handoff = f"{t.listener} -> {target.get('name')} (use_original_dst, {orig})"
            listener = target
            t.listener = str(listener.get("name"))
        t.original_dst_how = "use_original_dst: SO_ORIGINAL_DST restores " + orig
    elif ds.capture == "TPROXY":
        t.original_dst_how = f"TPROXY keeps the destination: the socket's local address is {orig}"
    elif _has_filter(listener, "original_dst", "OriginalDst"):
        t.original_dst_how = f"listener filter envoy.filters.listener.original_dst restores {orig}"
    elif "listener_filters" not in listener and cfg.partial:
        t.original_dst_how = f"assumed envoy.filters.listener.original_dst restores {orig}"
        t.notes.append(f"listener_filters of {t.listener} are not in the given excerpt; "
                       "assumed Istio's original_dst")
        t.missing.append(Missing(f"listener filters of {t.listener}",
                                 f"istioctl proxy-config listener {pod} --port "
                                 f"{ds.arrived_port} -o json"))
    else:
        local = hostport(pod_ip or ds.orig_dst_ip, ds.arrived_port)
        t.original_dst_how = (f"no original-destination step on {t.listener}: the local "
                              f"address stays {local}")
    t.local_address = local
    local_ip, local_port = local.rsplit(":", 1)
    local_ip = local_ip.strip("[]")
    _detect_protocols(t, cfg, listener, ds)
    conn = ConnInfo(local_ip, int(local_port), ds.src_ip, ds.src_port, t.server_name,
                    t.transport_protocol, t.application_protocols)
    chains: list[JSON] = list(listener.get("filter_chains", []) or [])
    choice = select_filter_chain(chains, conn, listener.get("default_filter_chain"))
    t.chain_reasons = choice.reasons
    chain: JSON | None
    if choice.default_used:
        chain = listener.get("default_filter_chain")
    elif choice.index is not None:
        chain = chains[choice.index]
    else:
        chain = _partial_fallback(cfg, chains, conn, t)
        if chain is None:
            alpn = ", " + ",".join(t.application_protocols) if t.application_protocols else ""
            return _fail(t, "no filter chain", f"no filter chain of {t.listener} matches "
                         f"{local} ({t.transport_protocol}{alpn})")
    assert chain is not None
    t.chain = str(chain.get("name") or f"filter_chains[{choice.index}] (unnamed)")
    t.chain_match = describe_match(chain)
    cluster_name = _network_filters(cfg, chain, ds, t, pod)
    if t.failure or cluster_name is None:
        return t
    return _cluster_step(cfg, cluster_name, listener, ds, t, local, pod_ip, prefer_endpoint,
                         pod)


def _handoff_target(cfg: EnvoyConfig, ds: Downstream, virtual: JSON) -> JSON | None:
    """The listener for the original destination: exact address, then 0.0.0.0/[::]."""
    exact = wildcard = None
    for x in cfg.listeners:
        if x is virtual:
            continue
        addr, port = _sock(x)
        if port != ds.orig_dst_port:
            continue
        if addr == ds.orig_dst_ip:
            exact = x
        elif addr in ("0.0.0.0", "::"):
            wildcard = x
    return exact or wildcard


def _detect_protocols(t: SidecarTrace, cfg: EnvoyConfig, listener: JSON, ds: Downstream) -> None:
    # An excerpt without listener_filters: assume what Istio puts on its capture listeners
    # (tls_inspector and http_inspector; pilot listener_inbound.go populateListenerFilters).
    assumed = "listener_filters" not in listener and cfg.partial
    tls_inspector = assumed or _has_filter(listener, "tls_inspector", "TlsInspector") is not None
    http_inspector = assumed or (
        _has_filter(listener, "http_inspector", "HttpInspector") is not None)
    if ds.tls is not None and tls_inspector:
        t.transport_protocol = "tls"
        t.server_name = ds.tls.sni
        t.application_protocols = ds.tls.alpn
    else:
        t.transport_protocol = "raw_buffer"
        if ds.tls is not None:
            t.notes.append(f"TLS arrives but {t.listener} has no tls_inspector: matched as "
                           "raw_buffer")
        elif ds.http and http_inspector:
            t.application_protocols = ("http/1.1",)


def _partial_fallback(cfg: EnvoyConfig, chains: list[JSON], conn: ConnInfo,
                      t: SidecarTrace) -> JSON | None:
    """An excerpt (the seed's JSON) leaves chains out: fall back to the destination port."""
    if not cfg.partial:
        return None
    for want in (conn.dst_port, None):
        for c in chains:
            if (c.get("filter_chain_match") or {}).get("destination_port") == want:
                t.chain_reasons = (f"destination_port {want or 'any'} only (excerpt)",)
                t.notes.append(
                    f"the given excerpt of {t.listener} has no chain for "
                    f"{conn.transport_protocol} on port {conn.dst_port}; chose "
                    f"{c.get('name')} by destination port alone")
                return c
    return None


def _typed(f: JSON) -> JSON:
    return dict(f.get("typed_config") or {})


def _network_filters(cfg: EnvoyConfig, chain: JSON, ds: Downstream, t: SidecarTrace,
                     pod: str) -> str | None:
    for f in chain.get("filters", []) or []:
        name = str(f.get("name", ""))
        tc = _typed(f)
        kind = str(tc.get("@type", ""))
        if name in TCP_PROXY or kind.endswith("TcpProxy"):
            t.network_filter = "envoy.filters.network.tcp_proxy"
            if tc.get("cluster"):
                return str(tc["cluster"])
            weighted = (tc.get("weighted_clusters") or {}).get("clusters") or []
            if weighted:
                t.notes.append("tcp_proxy weighted_clusters: " + ", ".join(
                    f"{w.get('name')} ({w.get('weight')})" for w in weighted))
                return str(weighted[0].get("name"))
            _fail(t, "no route", f"tcp_proxy in chain {t.chain} names no cluster")
            return None
        if name in HCM or kind.endswith("HttpConnectionManager"):
            t.network_filter = "envoy.filters.network.http_connection_manager"
            t.use_remote_address = bool(tc.get("use_remote_address", False))
            return _http_route(cfg, tc, ds, t, pod)
    t.missing.append(Missing(f"network filters of chain {t.chain}",
                             f"istioctl proxy-config listener {pod} -o json"))
    t.notes.append(f"chain {t.chain} shows no tcp_proxy or http_connection_manager in the "
                   "given config")
    return None


def _domain_rank(domain: str, host: str) -> int | None:
    """Envoy's virtual host order: exact, then longest suffix *x, then prefix x*, then *."""
    if domain == host:
        return 4000
    if domain == "*":
        return 0
    if domain.startswith("*") and host.endswith(domain[1:]) and len(host) > len(domain) - 1:
        return 3000 + len(domain)
    if domain.endswith("*") and host.startswith(domain[:-1]) and len(host) > len(domain) - 1:
        return 2000 + len(domain)
    return None


def _http_route(cfg: EnvoyConfig, hcm: JSON, ds: Downstream, t: SidecarTrace,
                pod: str) -> str | None:
    rc: Any = hcm.get("route_config")
    if rc is None:
        name = str((hcm.get("rds") or {}).get("route_config_name", ""))
        t.route_config = name
        rc = cfg.routes.get(name)
        if rc is None:
            if cfg.has_routes:
                _fail(t, "no route", f"route configuration {name!r} is not in the config")
            else:
                t.missing.append(Missing(
                    f"route configuration {name!r}",
                    f"istioctl proxy-config route {pod} --name {name} -o json"))
            return None
    else:
        t.route_config = str(rc.get("name", "(inline)"))
    host = (ds.authority or hostport(ds.orig_dst_ip, ds.orig_dst_port)).lower()
    best: tuple[int, JSON] | None = None
    for vh in rc.get("virtual_hosts", []) or []:
        for d in vh.get("domains", []) or []:
            rank = _domain_rank(str(d).lower(), host)
            if rank is not None and (best is None or rank > best[0]):
                best = (rank, vh)
    if best is None:
        _fail(t, "no route", f"no virtual host of {t.route_config} has a domain matching {host}")
        return None
    vh = best[1]
    t.virtual_host = str(vh.get("name"))
    for route in vh.get("routes", []) or []:
        m = route.get("match") or {}
        if not _path_matches(m, ds.path) or m.get("headers"):
            continue
        t.route = str(route.get("name", "(unnamed)"))
        action = route.get("route")
        if action is None:
            what = "direct_response" if "direct_response" in route else "redirect"
            _fail(t, "no route", f"route {t.route} answers with a {what}, not an upstream")
            return None
        if action.get("cluster"):
            return str(action["cluster"])
        weighted = (action.get("weighted_clusters") or {}).get("clusters") or []
        if weighted:
            t.notes.append("weighted_clusters: " + ", ".join(
                f"{w.get('name')} ({w.get('weight')})" for w in weighted))
            return str(weighted[0].get("name"))
        _fail(t, "no route", f"route {t.route} picks its cluster from a header "
              "(cluster_header), which the evidence does not give")
        return None
    _fail(t, "no route", f"no route of virtual host {t.virtual_host} matches path {ds.path}")
    return None


def _path_matches(m: JSON, path: str) -> bool:
    if "prefix" in m:
        return path.startswith(str(m["prefix"]))
    if "path" in m:
        return path == str(m["path"])
    if "safe_regex" in m:
        return re.fullmatch(str(m["safe_regex"].get("regex", "")), path) is not None
    if "path_separated_prefix" in m:
        p = str(m["path_separated_prefix"])
        return path == p or path.startswith(p + "/")
    return False


def _cluster_step(cfg: EnvoyConfig, name: str, listener: JSON, ds: Downstream,
                  t: SidecarTrace, local: str, pod_ip: str | None,
                  prefer_endpoint: str | None, pod: str) -> SidecarTrace:
    t.cluster = name
    if name == "BlackHoleCluster":
        return _fail(t, "blackholed", f"chain {t.chain} sends the connection to "
                     "BlackHoleCluster (no endpoints): it is closed")
    cluster = cfg.clusters.get(name)
    if cluster is None:
        if not cfg.has_clusters:
            t.missing.append(Missing(
                f"cluster {name}", f"istioctl proxy-config cluster {pod} --fqdn '{name}' -o json"))
            return t
        return _fail(t, "no endpoint", f"cluster {name} is not in the config")
    ctype = str(cluster.get("type") or ("EDS" if "eds_cluster_config" in cluster else "STATIC"))
    t.cluster_type = ctype
    endpoint: Endpoint | None = None
    if ctype == "ORIGINAL_DST":
        ip, port = local.rsplit(":", 1)
        endpoint = Endpoint(ip.strip("[]"), int(port))
        t.notes.append(f"ORIGINAL_DST cluster: the endpoint is the original destination {local}")
    else:
        service = str((cluster.get("eds_cluster_config") or {}).get("service_name") or name)
        eps = cfg.endpoints.get(name) or cfg.endpoints.get(service)
        if eps is None:
            if ctype == "EDS" and not cfg.has_endpoints:
                t.missing.append(Missing(f"endpoints of {name}",
                                         f"istioctl proxy-config endpoint {pod} --cluster "
                                         f"'{name}' -o json"))
                return t
            eps = []
        healthy = [e for e in eps if e.healthy]
        if not healthy:
            return _fail(t, "no endpoint", f"cluster {name} has no healthy endpoint")
        endpoint = next((e for e in healthy if e.address == prefer_endpoint), healthy[0])
    t.endpoint = hostport(endpoint.address, endpoint.port)
    t.upstream_tls = _upstream_tls(cluster, endpoint, t)
    _upstream_source(cluster, listener, ds, t, pod_ip)
    return t


def _tls_of(socket: JSON) -> UpstreamTls:
    name = str(socket.get("name", ""))
    tc = _typed(socket)
    if "tls" in name or str(tc.get("@type", "")).endswith("UpstreamTlsContext"):
        alpn = tuple((tc.get("common_tls_context") or {}).get("alpn_protocols", []) or [])
        return UpstreamTls("TLS", str(tc.get("sni", "")), alpn)
    return UpstreamTls("plaintext")


def _upstream_tls(cluster: JSON, ep: Endpoint, t: SidecarTrace) -> UpstreamTls:
    if cluster.get("transport_socket"):
        tls = _tls_of(cluster["transport_socket"])
        return UpstreamTls(tls.mode, tls.sni, tls.alpn, "cluster transport_socket")
    for m in cluster.get("transport_socket_matches", []) or []:
        want = m.get("match") or {}
        mode = want.get("tlsMode")
        if mode and ep.tls_mode is None:
            t.notes.append(f"endpoint metadata tlsMode unknown; assumed {mode!r} "
                           "(the endpoint has a sidecar)")
        elif mode and ep.tls_mode != mode:
            continue
        tls = _tls_of(m.get("transport_socket") or {})
        return UpstreamTls(tls.mode, tls.sni, tls.alpn, f"transport_socket_matches {m.get('name')}")
    return UpstreamTls("plaintext", how="no transport_socket")


def _upstream_source(cluster: JSON, listener: JSON, ds: Downstream, t: SidecarTrace,
                     pod_ip: str | None) -> None:
    osrc = _has_filter(listener, "original_src", "OriginalSrc")
    bind = ((cluster.get("upstream_bind_config") or {}).get("source_address") or {})
    if osrc is not None:
        mark = _typed(osrc).get("mark")
        t.upstream_mark = int(mark) if mark is not None else None
        t.upstream_source = ds.src_ip
        t.upstream_source_why = (
            f"listener filter envoy.filters.listener.original_src on {t.listener} binds the "
            f"upstream socket to the downstream address {ds.src_ip} (mark {mark}), "
            + ("overriding the cluster's upstream_bind_config "
               f"{bind.get('address')}" if bind.get("address") else "") )
        if ds.capture != "TPROXY":
            t.notes.append("original_src without TPROXY capture: the app's replies to "
                           f"{ds.src_ip} are routed out of the pod, not back to the sidecar")
        return
    if bind.get("address"):
        t.upstream_source = str(bind["address"])
        t.upstream_source_why = (f"cluster {t.cluster} upstream_bind_config.source_address "
                                 f"{bind['address']}")
        return
    t.upstream_source = pod_ip or "(pod IP)"
    t.upstream_source_why = ("no upstream_bind_config and no original_src: the kernel picks "
                             "the pod's address on the route to the endpoint")
