"""HttpConnectionManager typed_config, read strictly.

Envoy reference: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto
Every field here either changes what remora does or is listed with the reason it has no
effect on an HTTP/1.1 plaintext sidecar; anything else is rejected with its path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from remora.proxy import registry
from remora.proxy.config.strict import ConfigError, Fields, type_url_of
from remora.proxy.http.cached import cached_attribute
from remora.proxy.http.headers import RequestPolicy
from remora.proxy.http.route_config import RouteTable, parse_route_configuration
from remora.proxy.http.xfcc import MODES as _FCC
from remora.proxy.http.xfcc import XfccConfig, parse_xfcc
from remora.proxy.http2.options import Http2Options, parse_http2_options
from remora.proxy.interfaces import FactoryContext, JsonValue

HCM_NAME = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
UUID_REQUEST_ID = "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig"



@dataclass
class HcmConfig:
    stat_prefix: str
    route_table: RouteTable
    http_filters: list[Any] = field(default_factory=list)  # runtime filter objects, in order
    access_log: list[JsonValue] = field(default_factory=list)  # for ctx.access_loggers
    use_remote_address: bool = False
    xff_num_trusted_hops: int = 0
    skip_xff_append: bool = False
    generate_request_id: bool = True
    preserve_external_request_id: bool = False
    server_name: str = "envoy"
    server_header_transformation: str = "OVERWRITE"
    normalize_path: bool = False
    merge_slashes: bool = False
    escaped_slashes: str = "KEEP_UNCHANGED"
    idle_timeout: float = 3600.0  # common_http_protocol_options.idle_timeout default 1h
    max_headers_count: int = 100
    max_request_headers_kb: int = 60
    stream_idle_timeout: float = 300.0
    request_timeout: float = 0.0
    request_headers_timeout: float = 0.0  # 0: disabled (Envoy's default)
    # HTTP/2: from the drain's first GOAWAY to the final one (Envoy's default 5 s)
    drain_timeout: float = 5.0
    websocket: bool = False
    forward_client_cert_details: str = "SANITIZE"
    # what an mTLS downstream's requests get (http/xfcc.py); None: as on plain text
    xfcc: XfccConfig | None = None
    codec_type: str = "AUTO"  # AUTO (ALPN h2 or the h2 preface), HTTP1 or HTTP2
    http2: Http2Options = field(default_factory=lambda: Http2Options())

    # What every request of this connection manager needs that the config alone decides,
    # computed on first use (the config does not change once parse_hcm returns it).
    @cached_attribute
    def sanitize_xfcc(self) -> bool:
        """x-forwarded-client-cert from a connection without a client certificate is
        removed unless ALWAYS_FORWARD_ONLY (Envoy's mutateXfccRequestHeader); on mutual
        TLS, ActiveStream.prepare's xfcc hook keeps, appends to or sets it (xfcc.py)."""
        return self.forward_client_cert_details != "ALWAYS_FORWARD_ONLY"

    @cached_attribute
    def request_policy(self) -> RequestPolicy:
        return RequestPolicy(
            use_remote_address=self.use_remote_address,
            xff_num_trusted_hops=self.xff_num_trusted_hops,
            skip_xff_append=self.skip_xff_append, generate_request_id=self.generate_request_id,
            preserve_external_request_id=self.preserve_external_request_id,
            sanitize_xfcc=self.sanitize_xfcc)

    @cached_attribute
    def rewrites_path(self) -> bool:
        """normalize_path, merge_slashes or an escaped-slashes action: the path is checked."""
        return (self.normalize_path or self.merge_slashes
                or self.escaped_slashes != "KEEP_UNCHANGED")


def parse_hcm(f: Fields, ctx: FactoryContext) -> HcmConfig:
    rc = f.fields("route_config", "RouteConfiguration")
    if rc is None:
        raise ConfigError(f.at("route_config"), "required field is missing",
                          "remora needs an inline route_config (rds is not implemented)")
    cfg = HcmConfig(stat_prefix=f.string("stat_prefix", required=True),
                    route_table=parse_route_configuration(rc, ctx.cluster_manager.get))
    cfg.codec_type = f.enum("codec_type", ("AUTO", "HTTP1", "HTTP2"), "AUTO")
    cfg.use_remote_address = bool(f.boolean("use_remote_address", False))
    cfg.xff_num_trusted_hops = f.integer("xff_num_trusted_hops", 0)
    cfg.skip_xff_append = bool(f.boolean("skip_xff_append", False))
    cfg.generate_request_id = bool(f.boolean("generate_request_id", True))
    cfg.preserve_external_request_id = bool(f.boolean("preserve_external_request_id", False))
    cfg.server_name = f.string("server_name", "envoy")
    cfg.server_header_transformation = f.enum(
        "server_header_transformation", ("OVERWRITE", "APPEND_IF_ABSENT", "PASS_THROUGH"),
        "OVERWRITE")
    cfg.normalize_path = bool(f.boolean("normalize_path", False))
    cfg.merge_slashes = bool(f.boolean("merge_slashes", False))
    cfg.escaped_slashes = f.enum(
        "path_with_escaped_slashes_action",
        ("IMPLEMENTATION_SPECIFIC_DEFAULT", "KEEP_UNCHANGED", "REJECT_REQUEST",
         "UNESCAPE_AND_FORWARD"), "KEEP_UNCHANGED")
    if cfg.escaped_slashes == "IMPLEMENTATION_SPECIFIC_DEFAULT":
        cfg.escaped_slashes = "KEEP_UNCHANGED"  # Envoy's default action
    cfg.max_request_headers_kb = f.integer("max_request_headers_kb", 60)
    cfg.stream_idle_timeout = f.duration("stream_idle_timeout", 300.0)
    cfg.request_timeout = f.duration("request_timeout", 0.0)
    # from a request's first byte until its headers are complete; Envoy answers 408
    # "request header timeout" (request_header_timeout, no flag) and closes
    cfg.request_headers_timeout = f.duration("request_headers_timeout", 0.0)
    cfg.drain_timeout = f.duration("drain_timeout", 5.0)
    if cfg.request_timeout:
        raise ConfigError(f.at("request_timeout"), "a non-zero request_timeout is not "
                          "implemented by remora", "remove it or set \"0s\" (disabled, "
                          "Envoy's default); stream_idle_timeout and route timeouts apply")
    # x-forwarded-client-cert: without a client certificate on the downstream every mode
    # but ALWAYS_FORWARD_ONLY removes a client-supplied header (sanitize_xfcc); on mutual
    # TLS the mode and set_current_client_cert_details say what is sent (xfcc.py)
    cfg.forward_client_cert_details = f.enum("forward_client_cert_details", _FCC, "SANITIZE")
    cfg.xfcc = parse_xfcc(cfg.forward_client_cert_details, f.fields(
        "set_current_client_cert_details", "SetCurrentClientCertDetails"))
    _request_id_extension(f)
    _common_options(f, cfg)
    _http1_options(f)
    cfg.http2 = parse_http2_options(f.fields("http2_protocol_options", "Http2ProtocolOptions"))
    _upgrade_configs(f, cfg)
    tracing = f.fields("tracing", "Tracing")
    if tracing is not None and tracing.obj:
        raise ConfigError(tracing.path, "tracing is not implemented by remora",
                          "remove the tracing block (an empty one is accepted)")
    cfg.access_log = f.items("access_log")
    cfg.http_filters = _http_filters(f, ctx)
    f.done()
    return cfg


def _request_id_extension(f: Fields) -> None:
    ext = f.fields("request_id_extension", "RequestIDExtension")
    if ext is None:
        return
    tc = ext.fields("typed_config")
    if tc is not None:
        url = type_url_of(tc)
        if url != UUID_REQUEST_ID:
            raise ConfigError(tc.path, f"unsupported request id extension {url!r}",
                              f"use {UUID_REQUEST_ID}")
        # pack_trace_reason / use_request_id_for_trace_sampling only steer tracing
        tc.ignore("pack_trace_reason", "use_request_id_for_trace_sampling")
        tc.done()
    ext.done()


def _common_options(f: Fields, cfg: HcmConfig) -> None:
    c = f.fields("common_http_protocol_options", "HttpProtocolOptions")
    if c is None:
        return
    cfg.idle_timeout = c.duration("idle_timeout", 3600.0)
    cfg.max_headers_count = c.integer("max_headers_count", 100)
    c.done()


def _http1_options(f: Fields) -> None:
    h = f.fields("http_protocol_options", "Http1ProtocolOptions")
    if h is None:
        return
    if h.boolean("accept_http_10", False):
        raise ConfigError(h.at("accept_http_10"), "HTTP/1.0 is not implemented by remora",
                          "remove it (HTTP/1.0 requests get 426 as on Envoy's default)")
    if h.boolean("allow_chunked_length", False):
        # Envoy then accepts a request with both Content-Length and chunked framing by
        # dropping the Content-Length; remora's codec refuses such a request always (the
        # classic smuggling shape), so accepting the field would not do what it says
        raise ConfigError(h.at("allow_chunked_length"),
                          "allow_chunked_length: true is not implemented by remora",
                          "remove it (requests with both Content-Length and chunked framing "
                          "are refused with 400, Envoy's default)")
    h.done()


def _upgrade_configs(f: Fields, cfg: HcmConfig) -> None:
    for u in f.each("upgrade_configs", "UpgradeConfig"):
        kind = u.string("upgrade_type", required=True)
        if kind.lower() != "websocket":
            raise ConfigError(u.at("upgrade_type"), f"upgrade type {kind!r} is not implemented",
                              "remora implements websocket upgrades only")
        cfg.websocket = bool(u.boolean("enabled", True))
        u.done()


def _http_filters(f: Fields, ctx: FactoryContext) -> list[Any]:
    out: list[Any] = []
    entries = list(f.each("http_filters", "HttpFilter"))
    for i, hf in enumerate(entries):
        name = hf.string("name", required=True)
        tc = hf.fields("typed_config")
        if tc is None and not hf.has("config_discovery"):
            # Envoy finds an HTTP filter by its typed_config's type URL only (no lookup by
            # name): "Didn't find a registered implementation for NAME with type URL: ''"
            raise ConfigError(hf.at("typed_config"), f"required for HTTP filter {name!r} "
                              "(Envoy finds a filter by its typed_config @type, not its name)",
                              "add typed_config with its @type, e.g. \"@type\": type.googleapis"
                              ".com/envoy.extensions.filters.http.router.v3.Router")
        url = type_url_of(tc) if tc is not None else None
        ext = registry.lookup("http", name, url, hf.path)
        if hf.boolean("is_optional", False):
            pass  # we implement it, so optional or not makes no difference
        hf.ignore("disabled")
        if hf.raw("disabled"):
            raise ConfigError(hf.at("disabled"), "disabled filters are not implemented")
        obj = ext.factory(tc if tc is not None else Fields({}, hf.at("typed_config")), ctx)
        if tc is not None:
            tc.done()
        hf.done()
        out.append(obj)
        if getattr(obj, "terminal", False) and i != len(entries) - 1:
            raise ConfigError(hf.path, f"{name} must be the last HTTP filter")
    if not out or not getattr(out[-1], "terminal", False):
        raise ConfigError(f.at("http_filters"), "the last HTTP filter must be "
                          "envoy.filters.http.router", "add the router filter at the end")
    return out
