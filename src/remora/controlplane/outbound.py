"""virtualOutbound (0.0.0.0:15001), the per-service outbound listeners, clusters and EDS.

istiod's sidecar outbound structure (pilot/pkg/networking/core/listener.go,
listener_builder.go; names from pilot/pkg/model/listener.go):

- ``virtualOutbound`` on 15001 with ``use_original_dst``: a captured connection is handed
  to the listener bound (``bind_to_port: false``) to its original destination, most
  specific address first; chains ``virtualOutbound-blackhole`` (destination port 15001)
  and ``virtualOutbound-catchall-tcp`` (no match, outboundTrafficPolicy ALLOW_ANY ->
  PassthroughCluster).
- HTTP service ports share one wildcard listener ``0.0.0.0_PORT`` whose routes (route
  config named ``PORT``) hold one virtual host per service; http_inspector tells HTTP
  (ALPN http/1.0, http/1.1, h2c) from other bytes, which pass through.
- TCP service ports get ``<ClusterIP>_PORT`` with tcp_proxy to the service's cluster.
- Ports with no declared protocol also get ``<ClusterIP>_PORT``, with http_inspector and
  two chains: HTTP (ALPN http/1.0, http/1.1, h2c) -> routes named ``FQDN:PORT``, and
  everything else -> tcp_proxy (protocol sniffing).

Clusters are ``outbound|PORT||FQDN`` of type EDS; their endpoints are written to one file
per cluster (Envoy's EDS accepts exactly one ClusterLoadAssignment per update).

The port's protocol is Istio's (controlplane/protocol.py): HTTP, HTTP2, GRPC, GRPC-Web
share the HTTP listener; an HTTP/2 one (http2, grpc, grpc-web, appProtocol
kubernetes.io/h2c) also gets an HTTP/2 cluster (``typed_extension_protocol_options``
explicit http2, cluster_builder.go setUpstreamProtocol) whose mTLS ALPN starts with
``istio-h2``; TCP, HTTPS, TLS, Mongo, Redis, MySQL get tcp_proxy (Istio's mongo_proxy
filter in front of a Mongo port is not generated); UDP ports get nothing.
"""

from __future__ import annotations

from remora.controlplane import envoy_common as e
from remora.controlplane.authn import DISABLE, workload_authn
from remora.controlplane.envoy_common import JSON
from remora.controlplane.ipfamily import IpFamilies, additional_addresses
from remora.controlplane.model import (
    Endpoint,
    Snapshot,
    endpoints,
    mesh_ports,
    outbound_cluster_name,
    port_protocol,
    service_refs,
)
from remora.controlplane.mtls import MeshSecurity, has_sidecar, sni, workload_identity
from remora.controlplane.protocol import is_http, is_http2, is_sniffed, is_tcp
from remora.resources.objects import Service, ServicePort

OUTBOUND_LISTENER_PORT = 15001
IPV4_ONLY = IpFamilies()


def virtual_outbound(tproxy: bool, fam: IpFamilies = IPV4_ONLY) -> JSON:
    listener: JSON = {
        "name": "virtualOutbound",
        "address": e.socket_address(fam.wildcards[0], OUTBOUND_LISTENER_PORT),
        "use_original_dst": True,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [
            {"name": "virtualOutbound-blackhole",
             "filter_chain_match": {"destination_port": OUTBOUND_LISTENER_PORT},
             "filters": [e.tcp_proxy(e.BLACKHOLE, log=False)]},
            {"name": "virtualOutbound-catchall-tcp",
             "filters": [e.tcp_proxy(e.PASSTHROUGH)]},
        ],
    }
    if tproxy:
        listener["transparent"] = True
    if fam.dual:  # buildVirtualOutboundListener: the other wildcard as additional address
        listener["additional_addresses"] = additional_addresses(fam.wildcards,
                                                                OUTBOUND_LISTENER_PORT)
    return listener


def domains(svc: Service, port: int, client_namespace: str,
            cluster_ips: tuple[str, ...] | None = None) -> list[str]:
    """Host names a request for the service may carry (route.go generateVirtualHostDomains):
    FQDN, svc.ns.svc, svc.ns, the short name from the same namespace, each ClusterIP
    (an IPv6 one in brackets, as a Host header carries it); each with and without
    :port."""
    name, ns = svc.metadata.name, svc.metadata.namespace
    hosts = [svc.fqdn, f"{name}.{ns}.svc", f"{name}.{ns}"]
    if ns == client_namespace:
        hosts.append(name)
    for ip in cluster_ips if cluster_ips is not None else (
            (svc.clusterIP,) if svc.clusterIP else ()):
        hosts.append(f"[{ip}]" if ":" in ip else ip)
    out = []
    for h in hosts:
        out += [h, f"{h}:{port}"]
    return out


def _vhost(svc: Service, sp: ServicePort, client_namespace: str,
           cluster_ips: tuple[str, ...] | None = None) -> JSON:
    cluster = outbound_cluster_name(sp.port, svc.fqdn)
    return {"name": f"{svc.fqdn}:{sp.port}",
            "domains": domains(svc, sp.port, client_namespace, cluster_ips),
            "routes": [e.route("default", cluster, f"{svc.fqdn}:{sp.port}/*", retries=True)]}


def _allow_any() -> JSON:
    return {"name": "allow_any", "domains": ["*"],
            "routes": [e.route("allow_any", e.PASSTHROUGH, None, retries=False)]}


def _listener(name: str, addresses: list[str], port: int, chains: list[JSON],
              sniff: bool = False) -> JSON:
    out: JSON = {"name": name, "address": e.socket_address(addresses[0], port),
                 "bind_to_port": False, "traffic_direction": "OUTBOUND"}
    if len(addresses) > 1:  # buildListenerFromEntry: le.bind.Extra()
        out["additional_addresses"] = additional_addresses(addresses, port)
    if sniff:
        out["listener_filters"] = [e.listener_filter(e.HTTP_INSPECTOR)]
        out["listener_filters_timeout"] = "0s"
        out["continue_on_listener_filters_timeout"] = True
    out["filter_chains"] = chains
    return out


def outbound_listeners(snapshot: Snapshot, client_namespace: str,
                       fam: IpFamilies = IPV4_ONLY) -> list[JSON]:
    """Per-service listeners. A TCP/sniffed port listens on the service's cluster IPs of
    the proxy's families (the first names it, the others are additional_addresses); the
    shared HTTP listener on the proxy's wildcards."""
    http_vhosts: dict[int, list[JSON]] = {}
    listeners: list[JSON] = []
    for svc in snapshot.services:
        all_ips = snapshot.service_addresses(svc)
        ips = fam.keep(all_ips)
        for sp in mesh_ports(svc):
            proto = port_protocol(sp)
            cluster = outbound_cluster_name(sp.port, svc.fqdn)
            if is_http(proto):  # HTTP, HTTP2, GRPC, GRPC-Web, HTTP_PROXY
                http_vhosts.setdefault(sp.port, []).append(
                    _vhost(svc, sp, client_namespace, all_ips))
            elif (is_tcp(proto) or is_sniffed(proto)) and ips:
                name = f"{ips[0]}_{sp.port}"
                tcp_chain: JSON = {"filters": [e.tcp_proxy(cluster)]}
                if is_tcp(proto):
                    listeners.append(_listener(name, ips, sp.port, [tcp_chain]))
                    continue
                routes = {"name": f"{svc.fqdn}:{sp.port}", "validate_clusters": False,
                          "virtual_hosts": [_vhost(svc, sp, client_namespace, all_ips),
                                            _allow_any()]}
                listeners.append(_listener(name, ips, sp.port,
                                           [_http_chain(name, routes), tcp_chain], sniff=True))
    for port, vhosts in sorted(http_vhosts.items()):
        name = f"{fam.wildcards[0]}_{port}"
        routes = {"name": str(port), "validate_clusters": False,
                  "virtual_hosts": [*vhosts, _allow_any()]}
        # Non-HTTP bytes to this port of an address no service has: pass them through.
        passthrough = {"filters": [e.tcp_proxy(e.PASSTHROUGH)]}
        listeners.append(_listener(name, fam.wildcards, port, [_http_chain(name, routes),
                                                               passthrough], sniff=True))
    return listeners


def _http_chain(listener_name: str, routes: JSON) -> JSON:
    return {"filter_chain_match": {"transport_protocol": "raw_buffer",
                                   "application_protocols": list(e.PLAINTEXT_HTTP_ALPNS)},
            "filters": [e.http_connection_manager(f"outbound_{listener_name}", routes,
                                                  inbound=False)]}


def eds_file_name(cluster: str) -> str:
    """A file name for a cluster's EDS resource ('|' is awkward in paths)."""
    return "eds/" + cluster.replace("|", "_") + ".json"


def _eds_cluster(name: str, config_dir: str, svc: Service) -> JSON:
    return {
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {
            "service_name": name,
            "eds_config": {
                "path_config_source": {"path": f"{config_dir}/{eds_file_name(name)}"},
                "resource_api_version": "V3",
            },
        },
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": e.circuit_breakers(),
        "metadata": e.istio_metadata(service_refs([svc])),
    }


def _upstream_tls(snapshot: Snapshot, svc: Service, sp: ServicePort,
                  sec: MeshSecurity) -> JSON | None:
    """Auto mTLS: TLS when every endpoint has a sidecar whose port is not DISABLE."""
    eps = endpoints(snapshot, svc, sp)
    pods = {(w.pod.metadata.namespace, w.pod.metadata.name): w.pod for w in snapshot.workloads}
    identities: set[str] = set()
    for ep in eps:
        pod = pods.get((svc.metadata.namespace, ep.pod))
        if pod is None or not has_sidecar(pod):
            return None
        if workload_authn(snapshot.peer_authentications, pod).port(ep.port).mode == DISABLE:
            return None
        identities.add(workload_identity(pod))
    if not identities:
        return None
    # A sniffed port (AUTO) gets HTTP ALPNs: Istio's istio.alpn HTTP filter (not in
    # upstream Envoy) sets them per request; this way the seed's sniffed HTTP lands on the
    # server's istio-http chain, at the cost of raw TCP over mTLS on such a port. Without
    # a plain http/1.1 or h2 (mtls.CLIENT_SNIFFED_ALPNS) the server negotiates no codec and
    # tells HTTP/1.1 from HTTP/2 by the preface, so either pool of the cluster's
    # use_downstream_protocol_config works.
    proto = port_protocol(sp)
    return sec.upstream(sni(sp.port, svc.fqdn), is_http(proto) or is_sniffed(proto),
                        sorted(identities), h2=is_http2(proto), sniffed=is_sniffed(proto))


def outbound_clusters(snapshot: Snapshot, config_dir: str,
                      sec: MeshSecurity | None = None) -> list[JSON]:
    out = []
    for svc in snapshot.services:
        for sp in mesh_ports(svc):
            proto = port_protocol(sp)
            name = outbound_cluster_name(sp.port, svc.fqdn)
            cluster = _eds_cluster(name, config_dir, svc)
            options = e.upstream_protocol_options(proto)  # setUpstreamProtocol
            if options is not None:
                cluster["typed_extension_protocol_options"] = options
            tls = _upstream_tls(snapshot, svc, sp, sec) if sec is not None else None
            if tls is not None:
                cluster["transport_socket"] = tls
            out.append(cluster)
    return out


def load_assignment(name: str, eps: list[Endpoint]) -> JSON:
    """The ClusterLoadAssignment of one cluster."""
    lb = [{"endpoint": _endpoint(ep)} for ep in eps]
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": lb}] if lb else []}


def _endpoint(ep: Endpoint) -> JSON:
    """Envoy's Endpoint; a dual-stack pod's other addresses as ``additional_addresses``
    (Endpoint.AdditionalAddress), as istiod's buildEnvoyLbEndpoint writes them."""
    out: JSON = {"address": e.socket_address(ep.ip, ep.port)}
    if ep.additional:
        out["additional_addresses"] = [{"address": e.socket_address(ip, ep.port)}
                                       for ip in ep.additional]
    return out


def outbound_endpoints(snapshot: Snapshot) -> dict[str, JSON]:
    """cluster name -> ClusterLoadAssignment for every outbound cluster."""
    out = {}
    for svc in snapshot.services:
        for sp in mesh_ports(svc):
            name = outbound_cluster_name(sp.port, svc.fqdn)
            out[name] = load_assignment(name, endpoints(snapshot, svc, sp))
    return out
