"""Cluster, endpoint, upstream TLS and the source address of the upstream connection.

The source address is the point of `explain source-ip`: ``upstream_bind_config`` (Istio
binds inbound clusters to 127.0.0.6) unless the ``original_src`` listener filter already
bound the socket to the downstream client's address (envoy
source/extensions/filters/listener/original_src/original_src_socket_option.cc sets it at
STATE_PREBIND; source/common/network/connection_impl.cc then prefers it over the
cluster's bind address).
"""

from __future__ import annotations

from remora.diagnose.envoy.config import JSON, Endpoint, EnvoyConfig
from remora.diagnose.envoy.trace import (
    Downstream,
    SidecarTrace,
    UpstreamTls,
    fail,
    has_filter,
    typed,
)
from remora.diagnose.facts import Missing, hostport


def cluster_step(cfg: EnvoyConfig, name: str, listener: JSON, ds: Downstream,
                  t: SidecarTrace, local: str, pod_ip: str | None,
                  prefer_endpoint: str | None, pod: str) -> SidecarTrace:
    t.cluster = name
    if name == "BlackHoleCluster":
        return fail(t, "blackholed", f"chain {t.chain} sends the connection to "
                     "BlackHoleCluster (no endpoints): it is closed")
    cluster = cfg.clusters.get(name)
    if cluster is None:
        if not cfg.has_clusters:
            t.missing.append(Missing(
                f"cluster {name}", f"istioctl proxy-config cluster {pod} --fqdn '{name}' -o json"))
            return t
        return fail(t, "no endpoint", f"cluster {name} is not in the config")
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
            return fail(t, "no endpoint", f"cluster {name} has no healthy endpoint")
        endpoint = next((e for e in healthy if e.address == prefer_endpoint), healthy[0])
    t.endpoint = hostport(endpoint.address, endpoint.port)
    t.upstream_tls = _upstream_tls(cluster, endpoint, t)
    _upstream_source(cluster, listener, ds, t, pod_ip)
    return t


def _tls_of(socket: JSON) -> UpstreamTls:
    name = str(socket.get("name", ""))
    tc = typed(socket)
    if "tls" in name or str(tc.get("@type", "")).endswith("UpstreamTlsContext"):
        alpn = tuple((tc.get("common_tls_context") or {}).get("alpn_protocols", []) or [])
        return UpstreamTls("TLS", str(tc.get("sni", "")), alpn)
    return UpstreamTls("plaintext")


def _upstream_tls(cluster: JSON, ep: Endpoint, t: SidecarTrace) -> UpstreamTls:
    tls = _cluster_tls(cluster, ep, t)
    if tls.mode == "TLS" and t.alpn_override:
        return UpstreamTls(tls.mode, tls.sni, t.alpn_override, tls.how + ", ALPN from istio.alpn")
    return tls


def _cluster_tls(cluster: JSON, ep: Endpoint, t: SidecarTrace) -> UpstreamTls:
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


def bind_address(cluster: JSON, endpoint: str) -> tuple[str, str]:
    """The bind address of the upstream's family: ``source_address``, or the first of
    ``extra_source_addresses`` of the endpoint's family (Envoy's
    upstream_bind_config: "the one whose IP family matches the upstream's"; Istio puts
    127.0.0.6 in source_address and ::6 in extra_source_addresses in dual stack, "since
    we cannot bind to IPv4 and send to IPv6")."""
    bind = cluster.get("upstream_bind_config") or {}
    main = str((bind.get("source_address") or {}).get("address") or "")
    want_v6 = endpoint.startswith("[") or endpoint.count(":") > 1
    if (":" in main) == want_v6 or not endpoint:
        return main, "source_address"
    for extra in bind.get("extra_source_addresses", []) or []:
        addr = str(((extra or {}).get("address") or {}).get("address") or "")
        if addr and (":" in addr) == want_v6:
            return addr, "extra_source_addresses"
    return main, "source_address"


def _upstream_source(cluster: JSON, listener: JSON, ds: Downstream, t: SidecarTrace,
                     pod_ip: str | None) -> None:
    osrc = has_filter(listener, "original_src", "OriginalSrc")
    bind = ((cluster.get("upstream_bind_config") or {}).get("source_address") or {})
    if osrc is not None:
        mark = typed(osrc).get("mark")
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
        address, why = bind_address(cluster, t.endpoint or "")
        t.upstream_source = address
        t.upstream_source_why = f"cluster {t.cluster} upstream_bind_config.{why} {address}"
        return
    if t.endpoint and t.endpoint.startswith("127."):
        # Istio before 1.10: inbound clusters dialled 127.0.0.1:PORT with no bind config;
        # the kernel's source for a loopback destination is 127.0.0.1
        t.upstream_source = "127.0.0.1"
        t.upstream_source_why = (f"cluster {t.cluster} dials the app at {t.endpoint} with no "
                                 "upstream_bind_config and no original_src: the kernel picks "
                                 "127.0.0.1 for a loopback destination")
        return
    t.upstream_source = pod_ip or "(pod IP)"
    t.upstream_source_why = ("no upstream_bind_config and no original_src: the kernel picks "
                             "the pod's address on the route to the endpoint")
