"""``envoy.config.cluster.v3.Cluster`` and ``ClusterLoadAssignment``, parsed strictly.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/endpoint/v3/endpoint.proto
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from remora.proxy.config.address import Address, parse_address, parse_socket_address
from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http2.options import DEFAULT_H2 as DEFAULT_H2  # re-exported: the
from remora.proxy.http2.options import (
    INITIAL_CONNECTION_WINDOW,
    INITIAL_STREAM_WINDOW,
    MAX_CONCURRENT_STREAMS,
    UPSTREAM_FIELDS,
    parse_http2_options,
)
from remora.proxy.http2.options import Http2Options as Http2Options  # upstream pool's
from remora.proxy.transport.tls import TlsTransport, parse_transport_socket

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CLA_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
UNLIMITED = 4294967295

# Envoy's circuit breaker defaults (cluster.proto CircuitBreakers.Thresholds).
DEFAULT_THRESHOLDS = {"max_connections": 1024, "max_pending_requests": 1024,
                      "max_requests": 1024, "max_retries": 3}


@dataclass(frozen=True)
class Host:
    address: Address
    weight: int = 1
    priority: int = 0
    healthy: bool = True
    hostname: str = ""  # Endpoint.hostname, shown by /clusters
    locality: tuple[str, str, str] = ("", "", "")  # region, zone, sub_zone (for /clusters)
    # Endpoint.additional_addresses: the same host's other addresses (a dual-stack pod's
    # address of the other family, as istiod sends with ISTIO_DUAL_STACK); connecting to
    # such a host races them by Happy Eyeballs (remora.proxy.upstream.happy_eyeballs)
    additional: tuple[Address, ...] = ()

    @property
    def key(self) -> str:
        return str(self.address)


@dataclass
class ClusterConfig:
    name: str
    type: str
    raw: dict[str, Any]
    connect_timeout: float = 5.0
    lb_policy: str = "ROUND_ROBIN"
    buffer_limit: int = 1 << 20  # per_connection_buffer_limit_bytes
    hosts: list[Host] = field(default_factory=list)
    eds_path: str | None = None
    eds_service_name: str | None = None
    source_address: Address | None = None  # upstream_bind_config.source_address
    # upstream_bind_config.extra_source_addresses (or the deprecated
    # additional_source_addresses): at most one, of the other IP family (Istio's dual
    # stack: 127.0.0.6 plus ::6)
    extra_source_addresses: tuple[Address, ...] = ()
    thresholds: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    # the HIGH priority thresholds: remora routes at default priority, /clusters shows both
    high_thresholds: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    track_remaining: bool = False
    # upstream_connection_options.tcp_keepalive: (keepalive_time, keepalive_interval,
    # keepalive_probes), each None when unset (the kernel's default then); None: no
    # SO_KEEPALIVE (connect.py sets them as Envoy's buildTcpKeepaliveOptions does)
    keepalive: tuple[int | None, int | None, int | None] | None = None
    # envoy.extensions.upstreams.http.v3.HttpProtocolOptions, parsed for the HTTP side
    # (raw map kept too).
    typed_extension_protocol_options: dict[str, Any] = field(default_factory=dict)
    http_protocol_options: HttpProtocolOptions = field(
        default_factory=lambda: HttpProtocolOptions())
    metadata: dict[str, Any] = field(default_factory=dict)
    transport: TlsTransport | None = None  # transport_socket tls (proxy/transport/tls.py)


HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# Http2ProtocolOptions (config/core/v3/protocol.proto) on a cluster: Envoy 1.40's defaults
# are the same on its upstream connections as downstream (SETTINGS MAX_CONCURRENT_STREAMS
# 1024, INITIAL_WINDOW_SIZE 16 MiB, a WINDOW_UPDATE to a 24 MiB connection window); one
# definition of them, their ranges and the parser, in proxy/http2/options.py. A cluster
# accepts UPSTREAM_FIELDS only (what the upstream HTTP/2 pool implements).
H2_MAX_CONCURRENT_STREAMS = MAX_CONCURRENT_STREAMS
H2_INITIAL_WINDOW = INITIAL_STREAM_WINDOW
H2_INITIAL_CONNECTION_WINDOW = INITIAL_CONNECTION_WINDOW


@dataclass(frozen=True)
class HttpProtocolOptions:
    """``envoy.extensions.upstreams.http.v3.HttpProtocolOptions`` on a cluster, for the
    HTTP upstream pool. https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/upstreams/http/v3/http_protocol_options.proto
    """

    idle_timeout: float | None = None  # common_http_protocol_options.idle_timeout (Envoy: 1h)
    max_requests_per_connection: int | None = None
    max_connection_duration: float | None = None
    # explicit_http_config: "http1" | "http2"; use_downstream_protocol_config: "downstream"
    protocol: str = "http1"
    # the HTTP/2 options an HTTP/2 upstream uses (explicit http2, or the downstream's
    # protocol when that is HTTP/2: Envoy then applies the config's http2_protocol_options,
    # its defaults when absent)
    http2: Http2Options = DEFAULT_H2
    # upstream_http_protocol_options (UpstreamHttpProtocolOptions): Envoy's router takes
    # the request's host (override_auto_sni_header's value when that header is present and
    # not empty, else Host/:authority) without its port, and sends it as the upstream SNI
    # (auto_sni; not for an IP address) and/or requires the upstream certificate to carry
    # it as a SAN (auto_san_validation, IP addresses too): upstream/auto_host.py
    auto_sni: bool = False
    auto_san_validation: bool = False
    override_auto_sni_header: str = ""

    def upstream_http2(self, downstream_protocol: str | None) -> bool:
        """Whether a request that came as DOWNSTREAM_PROTOCOL goes upstream as HTTP/2
        (Envoy's ClusterInfoImpl::upstreamHttpProtocol: USE_DOWNSTREAM_PROTOCOL follows
        the downstream, else HTTP2 when http2_protocol_options is set)."""
        if self.protocol == "downstream":
            return downstream_protocol == "HTTP/2"
        return self.protocol == "http2"


def parse_http_protocol_options(f: Fields) -> HttpProtocolOptions:
    f.ignore("@type")
    common = f.fields("common_http_protocol_options", "HttpProtocolOptions")
    idle = max_requests = duration = None
    if common is not None:
        idle = common.duration("idle_timeout")
        max_requests = common.integer("max_requests_per_connection")
        duration = common.duration("max_connection_duration")
        common.done()
    protocol = "http1"
    h2_options = DEFAULT_H2
    explicit = f.fields("explicit_http_config", "ExplicitHttpConfig")
    downstream = f.fields("use_downstream_protocol_config", "UseDownstreamHttpConfig")
    upstream_opts = f.fields("upstream_http_protocol_options", "UpstreamHttpProtocolOptions")
    f.done()
    for sub in (explicit, downstream):
        if sub is None:
            continue
        h1 = sub.fields("http_protocol_options", "Http1ProtocolOptions")
        h2 = sub.fields("http2_protocol_options", "Http2ProtocolOptions")
        sub.done()
        if h1 is not None:
            h1.done()  # an empty Http1ProtocolOptions: its fields are refused by path
        if h2 is not None:
            h2_options = parse_http2_options(h2, UPSTREAM_FIELDS)
        protocol = "downstream" if sub is downstream else ("http2" if h2 is not None else "http1")
    auto_sni = auto_san = False
    override = ""
    if upstream_opts is not None:
        auto_sni = bool(upstream_opts.boolean("auto_sni", False))
        auto_san = bool(upstream_opts.boolean("auto_san_validation", False))
        override = (upstream_opts.string("override_auto_sni_header", "") or "").lower()
        upstream_opts.done()
    return HttpProtocolOptions(idle, max_requests, duration, protocol, h2_options,
                               auto_sni, auto_san, override)


def config_source_path(f: Fields) -> str:
    """A ConfigSource that names a file: ``path_config_source`` or the legacy ``path``.
    https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/config_source.proto"""
    pcs = f.fields("path_config_source", "PathConfigSource")
    legacy = f.string("path")
    f.enum("resource_api_version", ("V3",), "V3")
    f.duration("initial_fetch_timeout")
    f.done()
    if pcs is not None:
        path = pcs.string("path", required=True)
        watched = pcs.fields("watched_directory", "WatchedDirectory")
        if watched is not None:  # remora polls the file itself, which covers this
            watched.string("path")
            watched.done()
        pcs.done()
        return str(path)
    if legacy:
        return str(legacy)
    raise ConfigError(f.path, "remora reads config sources from files only",
                      "use path_config_source (ads/api_config_source need an xDS server)")


def parse_load_assignment(raw: Any, path: str) -> tuple[str, list[Host]]:
    f = Fields(raw, path, "ClusterLoadAssignment")
    f.ignore("@type")
    name = f.string("cluster_name", "")
    policy = f.fields("policy", "Policy")
    if policy is not None:
        policy.integer("overprovisioning_factor")
        policy.done()
    hosts: list[Host] = []
    for loc in f.each("endpoints", "LocalityLbEndpoints"):
        loc.ignore("metadata")
        where = loc.fields("locality", "Locality")  # no locality-aware LB: /clusters shows it
        locality = ("", "", "")
        if where is not None:
            locality = (where.string("region", ""), where.string("zone", ""),
                        where.string("sub_zone", ""))
            where.done()
        loc.integer("load_balancing_weight")
        priority = loc.integer("priority", 0)
        for lb in loc.each("lb_endpoints", "LbEndpoint"):
            ep = lb.fields("endpoint", "Endpoint")
            status = lb.enum("health_status", ("UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING",
                                               "TIMEOUT", "DEGRADED"), "UNKNOWN")
            weight = lb.integer("load_balancing_weight", 1)
            lb.ignore("metadata")
            lb.done()
            if ep is None:
                raise ConfigError(lb.at("endpoint"), "required field is missing")
            addr = parse_address(ep.fields("address", "Address"), ep.at("address"))
            hostname = ep.string("hostname", "")
            extra: list[Address] = []
            for item in ep.each("additional_addresses", "AdditionalAddress"):
                extra.append(parse_address(item.fields("address", "Address"),
                                           item.at("address")))
                item.done()
            ep.done()
            if any(a.pipe is not None for a in (addr, *extra)) and extra:
                raise ConfigError(ep.at("additional_addresses"),
                                  "additional_addresses need IP socket addresses",
                                  "give socket_address entries, as Envoy requires")
            hosts.append(Host(addr, weight or 1, priority or 0,
                              status in ("UNKNOWN", "HEALTHY", "DEGRADED"), hostname, locality,
                              tuple(extra)))
        loc.done()
    f.done()
    return name, hosts


def _bind_config(bind: Fields, cfg: ClusterConfig) -> None:
    """``upstream_bind_config``: the source address, and one extra address of the other
    family, checked as Envoy's DefaultUpstreamLocalAddressSelectorFactory::validate does."""
    src = bind.fields("source_address", "SocketAddress")
    extras: list[Address] = []
    for item in bind.each("extra_source_addresses", "ExtraSourceAddress"):
        addr = item.fields("address", "SocketAddress")
        item.done()  # socket_options (per-address overrides) is not implemented
        if addr is None:
            raise ConfigError(item.at("address"), "required field is missing")
        extras.append(parse_socket_address(addr))
    legacy = list(bind.each("additional_source_addresses", "SocketAddress"))
    if legacy and extras:
        raise ConfigError(bind.at("additional_source_addresses"),
                          "both extra_source_addresses and additional_source_addresses",
                          "use extra_source_addresses only (the other is deprecated)")
    extras += [parse_socket_address(a) for a in legacy]
    bind.boolean("freebind")
    bind.done()
    if src is None:
        if extras:
            raise ConfigError(bind.at("source_address"), "extra source addresses need a "
                              "source_address")
        return
    cfg.source_address = parse_socket_address(src)
    if len(extras) > 1:
        raise ConfigError(bind.at("extra_source_addresses"),
                          f"Cluster {cfg.name}'s upstream binding config has more than one "
                          "extra/additional source addresses",
                          "give at most one, of the other IP family")
    if extras and extras[0].family_v6 == cfg.source_address.family_v6:
        raise ConfigError(bind.at("extra_source_addresses"),
                          f"Cluster {cfg.name}'s upstream binding config has two same IP "
                          "version source addresses",
                          "the extra source address must be of the other IP family")
    cfg.extra_source_addresses = tuple(extras)


def parse_cluster(raw: Any, path: str) -> ClusterConfig:
    f = Fields(raw, path, "Cluster")
    f.ignore("@type")
    name = f.string("name", required=True)
    ctype = f.enum("type", ("STATIC", "ORIGINAL_DST", "EDS"), "STATIC")
    cfg = ClusterConfig(name=name, type=ctype, raw=copy.deepcopy(raw))
    cfg.connect_timeout = f.duration("connect_timeout", 5.0)
    cfg.lb_policy = f.enum("lb_policy", ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM",
                                         "CLUSTER_PROVIDED"), "ROUND_ROBIN")
    f.string("alt_stat_name")
    f.duration("cleanup_interval")  # ORIGINAL_DST host cleanup: remora keeps no host set
    # bounds one read of tcp_proxy's plain relay from this cluster's connections
    # (network_filters/plain_relay.py); 0 or unset is Envoy's default, 1 MiB
    cfg.buffer_limit = f.integer("per_connection_buffer_limit_bytes", 1 << 20) or (1 << 20)
    cfg.metadata = f.raw("metadata", {}) or {}
    legacy_h2 = f.fields("http2_protocol_options", "Http2ProtocolOptions")
    opts = f.raw("typed_extension_protocol_options", {}) or {}
    if not isinstance(opts, dict):
        raise ConfigError(f.at("typed_extension_protocol_options"), "expected a map")
    for key, value in opts.items():
        where = f"{f.at('typed_extension_protocol_options')}.{key}"
        if key != HTTP_OPTIONS:
            raise ConfigError(where, "unsupported protocol options extension",
                              f"remora reads {HTTP_OPTIONS} only")
        cfg.http_protocol_options = parse_http_protocol_options(Fields(value, where))
    cfg.typed_extension_protocol_options = opts
    if legacy_h2 is not None:
        # the deprecated cluster-level field: HTTP/2 upstream with these options, unless
        # the typed extension is there too: then Envoy's createOptions uses the typed one
        # and ignores the legacy field (observed on Envoy 1.40: explicit HTTP/1.1 wins)
        legacy = parse_http2_options(legacy_h2, UPSTREAM_FIELDS)
        if HTTP_OPTIONS not in opts:
            cfg.http_protocol_options = HttpProtocolOptions(protocol="http2", http2=legacy)

    cla = f.raw("load_assignment")
    eds = f.fields("eds_cluster_config", "EdsClusterConfig")
    bind = f.fields("upstream_bind_config", "BindConfig")
    breakers = f.fields("circuit_breakers", "CircuitBreakers")
    odc = f.fields("original_dst_lb_config", "OriginalDstLbConfig")
    conn_opts = f.fields("upstream_connection_options", "UpstreamConnectionOptions")
    transport = f.fields("transport_socket", "TransportSocket")
    f.done()

    if cla is not None:
        _, cfg.hosts = parse_load_assignment(cla, f.at("load_assignment"))
    if ctype == "EDS":
        if eds is None:
            raise ConfigError(f.at("eds_cluster_config"), "an EDS cluster needs eds_cluster_config")
        source = eds.fields("eds_config", "ConfigSource")
        cfg.eds_service_name = eds.string("service_name")
        eds.done()
        if source is None:
            raise ConfigError(eds.at("eds_config"), "required field is missing")
        cfg.eds_path = config_source_path(source)
    elif eds is not None:
        raise ConfigError(eds.path, f"eds_cluster_config on a {ctype} cluster")
    if ctype == "ORIGINAL_DST" and cfg.lb_policy != "CLUSTER_PROVIDED":
        raise ConfigError(f.at("lb_policy"), "an ORIGINAL_DST cluster needs lb_policy "
                                             "CLUSTER_PROVIDED", "set lb_policy: CLUSTER_PROVIDED")
    if bind is not None:
        _bind_config(bind, cfg)
    if breakers is not None:
        for th in breakers.each("thresholds", "Thresholds"):
            prio = th.enum("priority", ("DEFAULT", "HIGH"), "DEFAULT")
            values = {k: th.integer(k) for k in DEFAULT_THRESHOLDS}
            track = th.boolean("track_remaining", False)
            th.integer("max_connection_pools")
            th.done()
            if prio == "DEFAULT":  # remora routes everything at default priority
                cfg.thresholds.update({k: v for k, v in values.items() if v is not None})
                cfg.track_remaining = bool(track)
            else:
                cfg.high_thresholds.update({k: v for k, v in values.items() if v is not None})
        breakers.done()
    if odc is not None:
        if odc.boolean("use_http_header", False):
            # Envoy would take the upstream address from the request's
            # x-envoy-original-dst-host (or http_header_name); remora always connects to
            # the downstream connection's original destination, so the option is refused
            # rather than silently ignored (the header would have routed elsewhere)
            raise ConfigError(odc.at("use_http_header"),
                              "use_http_header is not implemented by remora (an ORIGINAL_DST "
                              "cluster connects to the connection's original destination)",
                              "remove original_dst_lb_config.use_http_header, or run this "
                              "cluster on Envoy")
        odc.string("http_header_name")  # read only with use_http_header
        odc.done()
    if conn_opts is not None:
        ka = conn_opts.fields("tcp_keepalive", "TcpKeepalive")
        conn_opts.done()
        if ka is not None:
            probes = ka.integer("keepalive_probes")
            idle = ka.integer("keepalive_time")
            interval = ka.integer("keepalive_interval")
            ka.done()
            cfg.keepalive = (idle, interval, probes)
    cfg.transport = parse_transport_socket(transport, server=False)
    protocol = cfg.http_protocol_options.protocol
    if cfg.transport is not None and not cfg.transport.alpn and protocol != "downstream":
        # an UpstreamTlsContext without alpn_protocols: Envoy's connection pool offers its
        # own protocol, "h2" or "http/1.1" (the ALPN fallback; observed on Envoy 1.40
        # against a server that logs the negotiated protocol). gRPC servers refuse TLS
        # without h2. (use_downstream_protocol_config picks the pool per request; one TLS
        # context per cluster here, so nothing is offered then.)
        cfg.transport.alpn = ("h2",) if protocol == "http2" else ("http/1.1",)
    return cfg


def protocol_options(cluster: object) -> HttpProtocolOptions | None:
    """CLUSTER's typed HttpProtocolOptions (its upstream HTTP protocol), if it has them."""
    opts = getattr(getattr(cluster, "config", None), "http_protocol_options", None)
    return opts if isinstance(opts, HttpProtocolOptions) else None
