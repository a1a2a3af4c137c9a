"""Envoy v3 building blocks that istiod puts on every sidecar: filters, access log, limits.

Everything here is JSON-shaped dicts with Envoy's proto field names (snake_case), as
Envoy reads them from files. The set of fields is the one the reference sidecar configs
use (tests/data/reference/envoy-sidecar/*.json), which ``remora proxy`` implements.
"""

from __future__ import annotations

from typing import Any

from remora.controlplane.protocol import is_http2, is_sniffed

JSON = dict[str, Any]

TYPE = "type.googleapis.com/"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
HCM = "envoy.filters.network.http_connection_manager"
ORIGINAL_DST = "envoy.filters.listener.original_dst"
ORIGINAL_SRC = "envoy.filters.listener.original_src"
HTTP_INSPECTOR = "envoy.filters.listener.http_inspector"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"

BLACKHOLE = "BlackHoleCluster"
PASSTHROUGH = "PassthroughCluster"
INBOUND_PASSTHROUGH = "InboundPassthroughCluster"
INBOUND_PASSTHROUGH_BIND = "127.0.0.6"  # listener_address.go InboundPassthroughBindIpv4
TPROXY_MARK = 1337

# The ALPN values http_inspector reports for plaintext HTTP; istioctl prints exactly this
# list as "App: HTTP" (istioctl/pkg/writer/envoy/configdump/listener.go plaintextHTTPALPNs).
PLAINTEXT_HTTP_ALPNS = ["http/1.0", "http/1.1", "h2c"]

# Istio's default text access log, 1.24+ (pilot/pkg/model/telemetry_logging.go
# EnvoyTextLogFormat); see tests/data/reference/istio-internals.md section 5. Its one definition:
# the proxy compiles it from the config like any format, remora.diagnose.access_log parses
# its lines, and the tests render the seed's line with it.
ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)


def access_log(path: str = "/dev/stdout") -> list[JSON]:
    """meshConfig.accessLogFile=/dev/stdout with the default TEXT encoding."""
    return [{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
        },
    }]


def socket_address(address: str, port: int) -> JSON:
    return {"socket_address": {"address": address, "port_value": port}}


def tcp_proxy(cluster: str, stat_prefix: str | None = None, log: bool = True) -> JSON:
    """tcp_proxy to ``cluster``; the blackhole chains log nothing, as in Istio."""
    return {
        "name": TCP_PROXY,
        "typed_config": {
            "@type": TYPE + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": stat_prefix or cluster,
            "cluster": cluster,
            "access_log": access_log() if log else [],
        },
    }


def listener_filter(name: str, **config: Any) -> JSON:
    types = {
        ORIGINAL_DST: "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
        ORIGINAL_SRC: "envoy.extensions.filters.listener.original_src.v3.OriginalSrc",
        HTTP_INSPECTOR: "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
        TLS_INSPECTOR: "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    }
    return {"name": name, "typed_config": {"@type": TYPE + types[name], **config}}


def route_action(cluster: str, retries: bool) -> JSON:
    action: JSON = {"cluster": cluster, "timeout": "0s"}
    if retries:
        # Istio's default retry policy for outbound HTTP routes
        # (pilot/pkg/networking/core/route/retry/retry.go DefaultPolicy).
        action["retry_policy"] = {
            "retry_on": "connect-failure,refused-stream,unavailable,cancelled,"
                        "retriable-status-codes",
            "num_retries": 2,
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": TYPE + "envoy.extensions.retry.host.previous_hosts"
                                                 ".v3.PreviousHostsPredicate"},
            }],
            "host_selection_retry_max_attempts": "5",
            "retriable_status_codes": [503],
        }
    action["max_stream_duration"] = {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}
    return action


def route(name: str, cluster: str, operation: str | None, retries: bool) -> JSON:
    out: JSON = {"name": name, "match": {"prefix": "/"}, "route": route_action(cluster, retries)}
    if operation:
        out["decorator"] = {"operation": operation}
    return out


HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def h2_protocol_options() -> JSON:
    """A cluster's typed_extension_protocol_options for an HTTP/2 upstream: Istio's
    setH2Options (pilot/pkg/networking/core/cluster_builder.go), for ports whose protocol
    IsHTTP2 (http2, grpc, grpc-web, appProtocol kubernetes.io/h2c), inbound and outbound;
    ``http2ProtocolOptions()`` is an empty message in current Istio (1.11 set
    max_concurrent_streams 1073741824)."""
    return {HTTP_PROTOCOL_OPTIONS: {
        "@type": TYPE + HTTP_PROTOCOL_OPTIONS,
        "explicit_http_config": {"http2_protocol_options": {}},
    }}


def downstream_protocol_options() -> JSON:
    """A cluster's typed_extension_protocol_options that follow the downstream: HTTP/1.1
    upstream for an HTTP/1.1 request, HTTP/2 for an HTTP/2 one. Istio's
    setUseDownstreamProtocol (cluster_builder.go setUpstreamProtocol: a sidecar's cluster of
    a port whose protocol IsUnsupported, i.e. sniffed, inbound and outbound) and its
    passthroughHttpProtocolOptions (PassthroughCluster, InboundPassthroughCluster), in
    1.11 (the seed's clusters show it) as now. The HTTP/2 options are empty as in current
    Istio, like h2_protocol_options (1.11: max_concurrent_streams 1073741824); current
    Istio's 5-minute idle_timeout on the passthrough clusters, absent from the seed's 1.11
    ones, is left out."""
    return {HTTP_PROTOCOL_OPTIONS: {
        "@type": TYPE + HTTP_PROTOCOL_OPTIONS,
        "use_downstream_protocol_config": {"http_protocol_options": {},
                                           "http2_protocol_options": {}},
    }}


def upstream_protocol_options(protocol: str) -> JSON | None:
    """Istio's setUpstreamProtocol for a sidecar's cluster of a port with PROTOCOL:
    explicit HTTP/2 when it IsHTTP2, the downstream's protocol when it is sniffed
    (IsUnsupported), else no options (HTTP/1.1, Envoy's default; TCP never uses them)."""
    if is_http2(protocol):
        return h2_protocol_options()
    if is_sniffed(protocol):
        return downstream_protocol_options()
    return None


GRPC_WEB_FILTER: JSON = {
    "name": "envoy.filters.http.grpc_web",
    "typed_config": {"@type": TYPE + "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"},
}


def http_connection_manager(stat_prefix: str, route_config: JSON, inbound: bool,
                            http2: bool = False, grpc_web: bool = False) -> JSON:
    """The sidecar HCM: inline routes (remora's stand-in for RDS), Istio's defaults.

    ``use_remote_address: false`` on sidecars is why the seed's server sees an empty
    X-Forwarded-For (listener_inbound.go); ``forward_client_cert_details`` and
    ``set_current_client_cert_details`` are Istio's inbound values and matter once mTLS
    exists. ``codec_type`` is left at its default, AUTO (Istio sets AUTO): Envoy picks
    HTTP/2 by the ALPN ``h2`` or the h2c preface, else HTTP/1.1. ``http2`` adds an empty
    ``http2_protocol_options``, as Istio does on the inbound HCM of an HTTP/2 port
    (listener_inbound.go buildSidecarInboundHTTPOpts: ``if cc.port.Protocol.IsHTTP2()``).
    ``grpc_web`` puts Envoy's grpc_web filter first, as Istio does for a GRPC-Web port
    (listener_builder.go buildHTTPConnectionManager; remora does it on the inbound HCM,
    whose port is one, not on the outbound HTTP listener several services share).
    """
    typed: JSON = {
        "@type": TYPE + "envoy.extensions.filters.network.http_connection_manager.v3"
                        ".HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "route_config": route_config,
        "http_filters": [
            *([GRPC_WEB_FILTER] if grpc_web else []),
            {"name": "envoy.filters.http.fault",
             "typed_config": {"@type": TYPE + "envoy.extensions.filters.http.fault.v3.HTTPFault"}},
            {"name": "envoy.filters.http.cors",
             "typed_config": {"@type": TYPE + "envoy.extensions.filters.http.cors.v3.Cors"}},
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": TYPE + "envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    if http2:
        typed["http2_protocol_options"] = {}
    typed.update({
        "server_name": "istio-envoy",
        "use_remote_address": False,
    })
    if inbound:
        typed["forward_client_cert_details"] = "APPEND_FORWARD"
        typed["set_current_client_cert_details"] = {"subject": True, "dns": True, "uri": True}
    typed.update({
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "stream_idle_timeout": "0s",
        "normalize_path": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "request_id_extension": {"typed_config": {
            "@type": TYPE + "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
            "use_request_id_for_trace_sampling": True}},
        "access_log": access_log(),
    })
    return {"name": HCM, "typed_config": typed}


def circuit_breakers() -> JSON:
    """Istio's defaults, effectively unlimited (getDefaultCircuitBreakerThresholds)."""
    big = 4294967295
    return {"thresholds": [{"max_connections": big, "max_pending_requests": big,
                            "max_requests": big, "max_retries": big, "track_remaining": True}]}


def istio_metadata(services: list[dict[str, str]]) -> JSON:
    return {"filter_metadata": {"istio": {"services": services}}}


# Field declaration order of the messages istioctl prints (protojson writes fields in
# .proto declaration order), so `proxy-config ... -o json` reads like the seed's listings.
# envoy/config/listener/v3/listener.proto, listener_components.proto, cluster.proto.
LISTENER_FIELDS = ("name", "address", "filter_chains", "use_original_dst", "listener_filters",
                   "listener_filters_timeout", "continue_on_listener_filters_timeout",
                   "transparent", "traffic_direction", "bind_to_port",
                   "additional_addresses")
FILTER_CHAIN_FIELDS = ("filter_chain_match", "filters", "transport_socket", "name")
CLUSTER_FIELDS = ("name", "type", "eds_cluster_config", "connect_timeout", "lb_policy",
                  "load_assignment", "circuit_breakers", "typed_extension_protocol_options",
                  "cleanup_interval",
                  "upstream_bind_config", "transport_socket", "metadata")


def proto_order(message: JSON, fields: tuple[str, ...]) -> JSON:
    """The same message with its keys in declaration order (unknown keys last)."""
    rank = {name: i for i, name in enumerate(fields)}
    return dict(sorted(message.items(), key=lambda kv: rank.get(kv[0], len(fields))))


def ordered_listener(listener: JSON) -> JSON:
    out = proto_order(listener, LISTENER_FIELDS)
    if "filter_chains" in out:
        out["filter_chains"] = [proto_order(c, FILTER_CHAIN_FIELDS) for c in out["filter_chains"]]
    return out
