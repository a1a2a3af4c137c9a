"""virtualInbound (0.0.0.0:15006) and the inbound clusters, as istiod builds them.

Structure (pilot/pkg/networking/core/listener_inbound.go; names from
pilot/pkg/model/listener.go), in the order Istio emits the chains:

1. ``virtualInbound-blackhole``: destination port 15006 -> BlackHoleCluster. A connection
   sent to 15006 itself would otherwise loop back into the sidecar.
2. passthrough chains for ports no service declares: ``virtualInbound-catchall-http``
   (sniffed HTTP) and ``virtualInbound`` (TCP) -> InboundPassthroughCluster.
3. one chain set per service target port, named ``0.0.0.0_PORT``: HTTP ->
   http_connection_manager, TCP -> tcp_proxy, undeclared protocol -> both, told apart by
   http_inspector's ALPN (protocol sniffing) -> ``inbound|PORT||``.

Listener filters: original_dst; plus original_src (mark 1337) and ``transparent: true``
in TPROXY mode (listener_inbound.go populateListenerFilters / buildInboundListener);
http_inspector for sniffing.

mTLS seam: with PeerAuthentication, Istio adds tls_inspector and, per chain set, chains
with ``transport_protocol: tls`` (+ ALPN istio-http/1.1...) and a transport_socket; they
would be emitted by ``_port_chains`` next to the raw_buffer chains built here.
"""

from __future__ import annotations

from remora.controlplane import envoy_common as e
from remora.controlplane.envoy_common import JSON
from remora.controlplane.model import (
    AUTO,
    HTTP,
    TCP,
    InboundPort,
    inbound_cluster_name,
    service_refs,
)

INBOUND_LISTENER_PORT = 15006
ALL_V4 = [{"address_prefix": "0.0.0.0", "prefix_len": 0}]


def _inbound_route_config(name: str, vhost: str, cluster: str, operation: str | None) -> JSON:
    return {
        "name": name,
        "validate_clusters": False,
        "virtual_hosts": [{
            "name": vhost,
            "domains": ["*"],
            "routes": [e.route("default", cluster, operation, retries=False)],
        }],
    }


def _port_chains(p: InboundPort) -> list[JSON]:
    cluster = inbound_cluster_name(p.port)
    name = f"0.0.0.0_{p.port}"
    svc = p.services[0]
    hcm = e.http_connection_manager(
        f"inbound_0.0.0.0_{p.port}",
        _inbound_route_config(cluster, f"inbound|http|{p.port}", cluster,
                              f"{svc.fqdn}:{p.port}/*"),
        inbound=True)
    chains: list[JSON] = []
    if p.protocol in (HTTP, AUTO):
        match: JSON = {"destination_port": p.port, "transport_protocol": "raw_buffer"}
        if p.protocol == AUTO:
            match["application_protocols"] = list(e.PLAINTEXT_HTTP_ALPNS)
        chains.append({"name": name, "filter_chain_match": match, "filters": [hcm]})
    if p.protocol in (TCP, AUTO):
        chains.append({"name": name,
                       "filter_chain_match": {"destination_port": p.port,
                                              "transport_protocol": "raw_buffer"},
                       "filters": [e.tcp_proxy(cluster)]})
    return chains


def virtual_inbound(ports: list[InboundPort], tproxy: bool) -> JSON:
    filters = [e.listener_filter(e.ORIGINAL_DST)]
    if tproxy:
        filters.append(e.listener_filter(e.ORIGINAL_SRC, mark=e.TPROXY_MARK))
    filters.append(e.listener_filter(e.HTTP_INSPECTOR))
    passthrough_http = e.http_connection_manager(
        "inbound_0.0.0.0_0",  # no port: Istio's stat prefix for the passthrough HCM
        _inbound_route_config(e.INBOUND_PASSTHROUGH, "inbound|http|0", e.INBOUND_PASSTHROUGH,
                              None),
        inbound=True)
    chains: list[JSON] = [
        {"name": "virtualInbound-blackhole",
         "filter_chain_match": {"destination_port": INBOUND_LISTENER_PORT},
         "filters": [e.tcp_proxy(e.BLACKHOLE, log=False)]},
        {"name": "virtualInbound-catchall-http",
         "filter_chain_match": {"prefix_ranges": ALL_V4, "transport_protocol": "raw_buffer",
                                "application_protocols": list(e.PLAINTEXT_HTTP_ALPNS)},
         "filters": [passthrough_http]},
        {"name": "virtualInbound",
         "filter_chain_match": {"prefix_ranges": ALL_V4, "transport_protocol": "raw_buffer"},
         "filters": [e.tcp_proxy(e.INBOUND_PASSTHROUGH)]},
    ]
    for p in ports:
        chains += _port_chains(p)
    listener: JSON = {
        "name": "virtualInbound",
        "address": e.socket_address("0.0.0.0", INBOUND_LISTENER_PORT),
        "traffic_direction": "INBOUND",
        "listener_filters": filters,
        # Istio's protocolDetectionTimeout default is 0s (no timeout), and a connection
        # whose sniffing times out still proceeds.
        "listener_filters_timeout": "0s",
        "continue_on_listener_filters_timeout": True,
        "filter_chains": chains,
    }
    if tproxy:
        listener["transparent"] = True
    return listener


def _original_dst_cluster(name: str, bind: bool) -> JSON:
    cluster: JSON = {
        "name": name,
        "type": "ORIGINAL_DST",
        "connect_timeout": "10s",
        "lb_policy": "CLUSTER_PROVIDED",
        "cleanup_interval": "60s",
        "circuit_breakers": e.circuit_breakers(),
    }
    if bind:
        # cluster_builder.go: "We need to set a local bind address, which we will match in
        # iptables to avoid looping back to ourselves" (ISTIO_OUTPUT -s 127.0.0.6 RETURN).
        cluster["upstream_bind_config"] = {"source_address": {
            "address": e.INBOUND_PASSTHROUGH_BIND, "port_value": 0}}
    return cluster


def inbound_clusters(ports: list[InboundPort]) -> list[JSON]:
    """``inbound|PORT||`` per served port (ORIGINAL_DST: inboundTrafficPolicy PASSTHROUGH,
    the default since 1.10) and InboundPassthroughCluster."""
    out = []
    for p in ports:
        c = _original_dst_cluster(inbound_cluster_name(p.port), bind=True)
        c["metadata"] = e.istio_metadata(service_refs(p.services))
        out.append(c)
    out.append(_original_dst_cluster(e.INBOUND_PASSTHROUGH, bind=True))
    return out


def passthrough_clusters() -> list[JSON]:
    """PassthroughCluster (outbound ALLOW_ANY) and BlackHoleCluster (STATIC, no hosts)."""
    return [_original_dst_cluster(e.PASSTHROUGH, bind=False),
            {"name": e.BLACKHOLE, "type": "STATIC", "connect_timeout": "10s"}]
