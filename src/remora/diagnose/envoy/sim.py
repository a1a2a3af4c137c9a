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

from remora.diagnose.envoy.config import JSON, EnvoyConfig
from remora.diagnose.envoy.match import ConnInfo, describe_match, select_filter_chain
from remora.diagnose.envoy.route import network_filters
from remora.diagnose.envoy.trace import (
    Downstream,
    SidecarTrace,
    TlsHello,
    UpstreamTls,
    fail,
    has_filter,
    sock,
    socks,
)
from remora.diagnose.envoy.upstream import cluster_step
from remora.diagnose.facts import Missing, hostport

__all__ = ["Downstream", "SidecarTrace", "TlsHello", "UpstreamTls", "simulate"]


def simulate(cfg: EnvoyConfig, ds: Downstream, role: str, pod_ip: str | None = None,
             prefer_endpoint: str | None = None, pod: str = "POD") -> SidecarTrace:
    """Pure: the path of ``ds`` through ``cfg``; a named failure when it stops."""
    t = SidecarTrace(role)
    if not cfg.has_listeners:
        t.missing.append(Missing(f"{role} sidecar listeners",
                                 f"istioctl proxy-config all {pod} -o json"))
        return t
    bound = [x for x in cfg.listeners if sock(x)[1] == ds.arrived_port
             and x.get("bind_to_port") is not False]
    if not bound and cfg.partial:
        # an excerpt pasted from a document holds some listeners, not all: missing, not a
        # failure of the data path
        t.missing.append(Missing(f"{role} sidecar listener on port {ds.arrived_port}",
                                 f"istioctl proxy-config listener {pod} --port "
                                 f"{ds.arrived_port} -o json"))
        return t
    if not bound:
        ports = ", ".join(f"{x.get('name')}:{sock(x)[1]}" for x in cfg.listeners)
        return fail(t, "no listener", f"no listener bound to port {ds.arrived_port} "
                     f"(listeners: {ports or 'none'})")
    listener = bound[0]
    t.listener = str(listener.get("name"))
    if ds.capture == "TPROXY" and not listener.get("transparent"):
        if "transparent" not in listener and cfg.partial:
            t.notes.append(f"`transparent` is not in the given excerpt of {t.listener}; "
                           "Istio sets it in TPROXY mode")
        else:
            return fail(t, "dropped", f"listener {t.listener} is not `transparent: true`: "
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
    elif has_filter(listener, "original_dst", "OriginalDst"):
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
            return fail(t, "no filter chain", f"no filter chain of {t.listener} matches "
                         f"{local} ({t.transport_protocol}{alpn})")
    assert chain is not None
    t.chain = str(chain.get("name") or f"filter_chains[{choice.index}] (unnamed)")
    t.chain_match = describe_match(chain)
    cluster_name = network_filters(cfg, chain, ds, t, pod)
    if t.failure or cluster_name is None:
        return t
    return cluster_step(cfg, cluster_name, listener, ds, t, local, pod_ip, prefer_endpoint,
                         pod)


def _handoff_target(cfg: EnvoyConfig, ds: Downstream, virtual: JSON) -> JSON | None:
    """The listener for the original destination: exact address, then the wildcard of its
    family, 0.0.0.0 or [::] (Envoy's ConnectionHandlerImpl::findActiveListenerByAddress),
    among each listener's address and additional_addresses."""
    exact = wildcard = None
    want = "::" if ":" in ds.orig_dst_ip else "0.0.0.0"
    for x in cfg.listeners:
        if x is virtual:
            continue
        for addr, port in socks(x):
            if port != ds.orig_dst_port:
                continue
            if addr == ds.orig_dst_ip:
                exact = exact or x
            elif addr == want:
                wildcard = wildcard or x
    return exact or wildcard


def _detect_protocols(t: SidecarTrace, cfg: EnvoyConfig, listener: JSON, ds: Downstream) -> None:
    # An excerpt without listener_filters: assume what Istio puts on its capture listeners
    # (tls_inspector and http_inspector; pilot listener_inbound.go populateListenerFilters).
    assumed = "listener_filters" not in listener and cfg.partial
    tls_inspector = assumed or has_filter(listener, "tls_inspector", "TlsInspector") is not None
    http_inspector = assumed or (
        has_filter(listener, "http_inspector", "HttpInspector") is not None)
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
