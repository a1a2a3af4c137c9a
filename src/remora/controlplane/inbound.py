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

mTLS (with a ``MeshSecurity``, controlplane/mtls.py): tls_inspector joins the listener
filters and each chain set gets, by the port's PeerAuthentication mode
(listener_inbound.go inboundPermissive/StrictFilterChainMatchOptions), in Istio's order:
HTTP  ``tls`` + ALPN istio-http/1.0,1.1,h2 (terminates mTLS) | ``raw_buffer``;
TCP   ``tls`` + ALPN istio-peer-exchange,istio (terminates) | ``raw_buffer`` | ``tls``
without ALPN (an app's own TLS, passed through). PERMISSIVE keeps all of them, STRICT
only the terminating ones (its TCP ``tls`` chain terminates whatever the ALPN), DISABLE
only raw_buffer. AuthorizationPolicy RBAC filters go first in every HCM and before
every tcp_proxy.

HTTP/2: the HTTP chains match ALPN ``istio-h2`` over mTLS (the DownstreamTlsContext offers
h2, http/1.1) and any plain text, h2c included; the HCM's codec is AUTO (Envoy chooses
HTTP/2 by ALPN or the h2c preface). A port whose protocol IsHTTP2 (grpc, http2, ...)
also gets ``http2_protocol_options`` on its HCM (listener_inbound.go
buildSidecarInboundHTTPOpts) and an HTTP/2 ``inbound|PORT||`` cluster, so the app is
called over h2c.
"""

from __future__ import annotations

from remora.controlplane import envoy_common as e
from remora.controlplane.authn import DISABLE, PERMISSIVE, STRICT
from remora.controlplane.envoy_common import JSON
from remora.controlplane.ipfamily import IpFamilies, additional_addresses, bind_config
from remora.controlplane.model import (
    InboundPort,
    inbound_cluster_name,
    service_refs,
)
from remora.controlplane.mtls import MTLS_HTTP_ALPNS, MTLS_TCP_ALPNS, MeshSecurity
from remora.controlplane.protocol import GRPC_WEB, is_http, is_http2, is_sniffed, is_tcp

INBOUND_LISTENER_PORT = 15006
IPV4_ONLY = IpFamilies()


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


def _with_rbac(hcm: JSON, sec: MeshSecurity | None) -> JSON:
    if sec is not None and sec.http_rbac:
        typed = hcm["typed_config"]
        typed["http_filters"] = [*sec.http_rbac, *typed["http_filters"]]
    return hcm


def _tcp(cluster: str, sec: MeshSecurity | None, log: bool = True) -> list[JSON]:
    rbac = list(sec.network_rbac) if sec is not None else []
    return [*rbac, e.tcp_proxy(cluster, log=log)]


def _chain_set(name: str, port_match: JSON, mode: str, sec: MeshSecurity | None,
               http: JSON | None, http_alpn: list[str] | None, tcp: list[JSON] | None
               ) -> list[JSON]:
    """The chains of one port (or of the passthrough) in Istio's order for MODE."""
    def chain(match: JSON, filters: list[JSON], tls: JSON | None = None) -> JSON:
        out: JSON = {"name": name, "filter_chain_match": {**port_match, **match},
                     "filters": filters}
        if tls is not None:
            out["transport_socket"] = tls
        return out

    chains: list[JSON] = []
    terminate = sec is not None and mode in (PERMISSIVE, STRICT)
    plaintext = sec is None or mode in (PERMISSIVE, DISABLE)
    if http is not None:
        if terminate:
            assert sec is not None
            chains.append(chain({"transport_protocol": "tls",
                                 "application_protocols": list(MTLS_HTTP_ALPNS)},
                                [http], sec.downstream(http=True)))
        if plaintext:
            match: JSON = {"transport_protocol": "raw_buffer"}
            if http_alpn:
                match["application_protocols"] = list(http_alpn)
            chains.append(chain(match, [http]))
    if tcp is not None:
        if terminate and mode == PERMISSIVE:
            assert sec is not None
            chains.append(chain({"transport_protocol": "tls",
                                 "application_protocols": list(MTLS_TCP_ALPNS)},
                                tcp, sec.downstream(http=False)))
        if plaintext:
            chains.append(chain({"transport_protocol": "raw_buffer"}, tcp))
        if terminate and mode == STRICT:
            assert sec is not None
            chains.append(chain({"transport_protocol": "tls"}, tcp, sec.downstream(http=False)))
        elif terminate:  # PERMISSIVE: TLS the app itself speaks passes through
            chains.append(chain({"transport_protocol": "tls"}, tcp))
    return chains


def _port_chains(p: InboundPort, sec: MeshSecurity | None = None,
                 fam: IpFamilies = IPV4_ONLY) -> list[JSON]:
    cluster = inbound_cluster_name(p.port)
    svc = p.services[0]
    bind = fam.wildcards[0]  # chain names follow the primary bind (getListenerName)
    hcm = _with_rbac(e.http_connection_manager(
        f"inbound_{bind}_{p.port}",
        _inbound_route_config(cluster, f"inbound|http|{p.port}", cluster,
                              f"{svc.fqdn}:{p.port}/*"),
        inbound=True, http2=is_http2(p.protocol), grpc_web=p.protocol == GRPC_WEB), sec)
    mode = sec.authn.port(p.port).mode if sec is not None else DISABLE
    sniffed = is_sniffed(p.protocol)
    return _chain_set(
        f"{bind}_{p.port}", {"destination_port": p.port}, mode, sec,
        hcm if is_http(p.protocol) or sniffed else None,
        list(e.PLAINTEXT_HTTP_ALPNS) if sniffed else None,
        _tcp(cluster, sec) if is_tcp(p.protocol) or sniffed else None)


def virtual_inbound(ports: list[InboundPort], tproxy: bool,
                    sec: MeshSecurity | None = None, fam: IpFamilies = IPV4_ONLY) -> JSON:
    """virtualInbound on the first wildcard of the proxy's families (0.0.0.0, or :: for
    an IPv6-only pod), the other as ``additional_addresses`` in dual stack; the
    passthrough chains match every destination of those families."""
    filters = [e.listener_filter(e.ORIGINAL_DST)]
    if tproxy:
        filters.append(e.listener_filter(e.ORIGINAL_SRC, mark=e.TPROXY_MARK))
    if sec is not None:
        filters.append(e.listener_filter(e.TLS_INSPECTOR))
    filters.append(e.listener_filter(e.HTTP_INSPECTOR))
    passthrough_http = _with_rbac(e.http_connection_manager(
        f"inbound_{fam.wildcards[0]}_0",  # no port: Istio's stat prefix for the passthrough HCM
        _inbound_route_config(e.INBOUND_PASSTHROUGH, "inbound|http|0", e.INBOUND_PASSTHROUGH,
                              None),
        inbound=True), sec)
    chains: list[JSON] = [
        {"name": "virtualInbound-blackhole",
         "filter_chain_match": {"destination_port": INBOUND_LISTENER_PORT},
         "filters": [e.tcp_proxy(e.BLACKHOLE, log=False)]},
    ]
    mode = sec.authn.mode if sec is not None else DISABLE
    all_dst: JSON = {"prefix_ranges": fam.all_ranges}
    http_chains = _chain_set("virtualInbound-catchall-http", all_dst, mode, sec,
                             passthrough_http, list(e.PLAINTEXT_HTTP_ALPNS), None)
    tcp_chains = _chain_set("virtualInbound", all_dst, mode, sec, None, None,
                            _tcp(e.INBOUND_PASSTHROUGH, sec))
    # Istio's order: HTTP tls, HTTP raw, TCP tls (ALPN), TCP raw, TCP tls
    chains += http_chains + tcp_chains
    for p in ports:
        chains += _port_chains(p, sec, fam)
    listener: JSON = {
        "name": "virtualInbound",
        "address": e.socket_address(fam.wildcards[0], INBOUND_LISTENER_PORT),
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
    if fam.dual:
        listener["additional_addresses"] = additional_addresses(fam.wildcards,
                                                                INBOUND_LISTENER_PORT)
    return listener


def _original_dst_cluster(name: str, bind: bool, fam: IpFamilies = IPV4_ONLY) -> JSON:
    cluster: JSON = {
        "name": name,
        "type": "ORIGINAL_DST",
        "connect_timeout": "10s",
        "lb_policy": "CLUSTER_PROVIDED",
        "cleanup_interval": "60s",
        "circuit_breakers": e.circuit_breakers(),
        # Istio's passthroughHttpProtocolOptions / setUseDownstreamProtocol: the upstream
        # speaks what the downstream spoke (h2c in, h2c out); an HTTP/2 port replaces it
        "typed_extension_protocol_options": e.downstream_protocol_options(),
    }
    if bind:
        # cluster_builder.go: "We need to set a local bind address, which we will match in
        # iptables to avoid looping back to ourselves" (ISTIO_OUTPUT -s 127.0.0.6 RETURN).
        # Dual stack: 127.0.0.6 plus ::6 as extra_source_addresses, "since we cannot bind
        # to IPv4 and send to IPv6 (or the inverse)" (buildInboundPassthroughCluster).
        cluster["upstream_bind_config"] = bind_config(fam.passthrough_binds)
    return cluster


def inbound_clusters(ports: list[InboundPort], fam: IpFamilies = IPV4_ONLY) -> list[JSON]:
    """``inbound|PORT||`` per served port (ORIGINAL_DST: inboundTrafficPolicy PASSTHROUGH,
    the default since 1.10) and InboundPassthroughCluster -- one cluster for both
    families, binding 127.0.0.6 and/or ::6 by the proxy's families."""
    out = []
    for p in ports:
        c = _original_dst_cluster(inbound_cluster_name(p.port), bind=True, fam=fam)
        c["metadata"] = e.istio_metadata(service_refs(p.services))
        # buildInboundCluster -> buildCluster -> setUpstreamProtocol: explicit HTTP/2 for an
        # HTTP/2 port, the downstream's protocol for a sniffed one, none otherwise
        options = e.upstream_protocol_options(p.protocol)
        if options is None:
            del c["typed_extension_protocol_options"]
        else:
            c["typed_extension_protocol_options"] = options
        out.append(c)
    out.append(_original_dst_cluster(e.INBOUND_PASSTHROUGH, bind=True, fam=fam))
    return out


def passthrough_clusters() -> list[JSON]:
    """PassthroughCluster (outbound ALLOW_ANY) and BlackHoleCluster (STATIC, no hosts)."""
    return [_original_dst_cluster(e.PASSTHROUGH, bind=False),
            {"name": e.BLACKHOLE, "type": "STATIC", "connect_timeout": "10s"}]
