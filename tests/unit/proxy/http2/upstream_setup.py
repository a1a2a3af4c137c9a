"""The bootstrap and the peers the upstream HTTP/2 tests share: an HTTP/1.1 listener
whose routes go to HTTP/2 clusters (explicit http2_protocol_options, the legacy cluster
field, and use_downstream_protocol_config), the h2 backend (upstream_backend.py) and
grpcio's server (remora.apps.grpc_server) as the peers behind them."""

from __future__ import annotations

import http.client
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.unit.proxy import loopback_proxies as lp

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
UPSTREAM_TLS = ("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                "UpstreamTlsContext")
BACKEND = Path(__file__).with_name("upstream_backend.py")
LOG_FORMAT = ("%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %PROTOCOL% "
              "%UPSTREAM_PROTOCOL% %GRPC_STATUS% %GRPC_STATUS(NUMBER)% %BYTES_RECEIVED% "
              "%BYTES_SENT% %UPSTREAM_CLUSTER% %GRPC_STATUS(SNAKE_STRING)%\n")


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def h2_options(**http2: Any) -> dict[str, Any]:
    return {HPO: {"@type": "type.googleapis.com/" + HPO,
                  "explicit_http_config": {"http2_protocol_options": http2}}}


def cluster(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", **extra,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _addr(port)}}]}]}}


def router_bootstrap(port: int, admin: int, routes: list[dict[str, Any]],
                     clusters: list[dict[str, Any]]) -> dict[str, Any]:
    """An admin address, one HTTP listener on PORT (connection manager stat_prefix `in`,
    one virtual host with ROUTES, the router alone) and CLUSTERS: the bootstrap the
    counter parity tests run on both proxies."""
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": "in",
        "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
    return {"admin": {"address": _addr(admin)},
            "static_resources": {
                "listeners": [{"name": "l", "address": _addr(port),
                               "filter_chains": [{"filters": [hcm]}]}],
                "clusters": clusters}}


def bootstrap(port: int, admin: int, log: Path, backend: int, grpc: int,
              refused: int, limited: int, tls: int = 0) -> dict[str, Any]:
    """LIMITED: a backend that advertises SETTINGS_MAX_CONCURRENT_STREAMS 2 (cluster
    h2-peer-limit); cluster h2-one allows itself one stream per connection; TLS: a TLS
    backend (cluster h2-tls, an UpstreamTlsContext without alpn_protocols)."""
    routes = [
        {"match": {"prefix": "/refuse-retry"}, "route": {
            "cluster": "h2", "retry_policy": {"retry_on": "refused-stream",
                                              "num_retries": 1}}},
        {"match": {"prefix": "/goaway-early-retry"}, "route": {
            "cluster": "h2", "retry_policy": {"retry_on": "refused-stream",
                                              "num_retries": 1}}},
        {"match": {"prefix": "/reset-retry"}, "route": {
            "cluster": "h2", "retry_policy": {"retry_on": "reset", "num_retries": 1}}},
        {"match": {"prefix": "/slow-timeout"}, "route": {"cluster": "h2", "timeout": "0.1s"}},
        # x-cluster: chooses the other HTTP/2 clusters for the same backend paths
        *({"match": {"prefix": "/", "headers": [{"name": "x-cluster",
                                                "string_match": {"exact": name}}]},
           "route": {"cluster": name, "timeout": "2s"}}
          for name in ("h2-legacy", "h2-downstream", "refused", "h2-peer-limit", "h2-one",
                       "h2-tls", "h2-short")),
        # request_headers_to_add go after the router's x-envoy-expected-rq-timeout-ms
        {"match": {"prefix": "/headers-added"}, "route": {"cluster": "h2", "timeout": "10s"},
         "request_headers_to_add": [{"header": {"key": "x-added", "value": "1"}},
                                    {"header": {"key": "user-agent", "value": "added"}}]},
        {"match": {"prefix": "/remora.demo.Simple/"}, "route": {"cluster": "grpc"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "h2", "timeout": "10s"}},
    ]
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": "in",
        "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                     "FileAccessLog",
            "path": str(log), "log_format": {"text_format_source": {
                "inline_string": LOG_FORMAT}}}}],
        "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"],
                                            "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
    downstream = {HPO: {"@type": "type.googleapis.com/" + HPO,
                        "use_downstream_protocol_config": {"http2_protocol_options": {}}}}
    return {
        "admin": {"address": _addr(admin)},
        "static_resources": {
            "listeners": [{"name": "l", "address": _addr(port),
                           "filter_chains": [{"filters": [hcm]}]}],
            "clusters": [
                cluster("h2", backend, typed_extension_protocol_options=h2_options()),
                cluster("h2-legacy", backend, http2_protocol_options={}),
                cluster("h2-downstream", backend, typed_extension_protocol_options=downstream),
                cluster("grpc", grpc, typed_extension_protocol_options=h2_options(
                    max_concurrent_streams=100)),
                cluster("refused", refused, typed_extension_protocol_options=h2_options()),
                cluster("h2-peer-limit", limited,
                        typed_extension_protocol_options=h2_options()),
                cluster("h2-one", backend, typed_extension_protocol_options=h2_options(
                    max_concurrent_streams=1)),
                # two streams per connection, and an idle timeout of 0.3 s
                cluster("h2-short", backend, typed_extension_protocol_options={HPO: {
                    **h2_options()[HPO], "common_http_protocol_options": {
                        "idle_timeout": "0.3s", "max_requests_per_connection": 2}}}),
                cluster("h2-tls", tls, typed_extension_protocol_options=h2_options(),
                        transport_socket={"name": "envoy.transport_sockets.tls",
                                          "typed_config": {"@type": UPSTREAM_TLS,
                                                           "common_tls_context": {}}}),
            ]}}


@contextmanager
def backend(port: int, max_streams: int = 0,
            tls: tuple[Path, Path] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """The h2 backend on PORT; TLS: (certificate chain, key) to serve TLS with."""
    extra = [str(p) for p in tls] if tls is not None else []
    proc = subprocess.Popen([sys.executable, str(BACKEND), str(port), str(max_streams),
                             *extra])
    try:
        lp.wait_listening(port, proc, "h2 backend")
        yield proc
    finally:
        lp.stop(proc)


@contextmanager
def grpc_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "remora.apps.grpc_server", "--host",
                             "127.0.0.1", "--port", str(port), "--quiet"])
    try:
        lp.wait_listening(port, proc, "grpc server")
        yield proc
    finally:
        lp.stop(proc)


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None,
            timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on its own connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def server_certificate(directory: Path) -> tuple[Path, Path]:
    """A workload certificate from a throwaway mesh CA (remora.controlplane.ca), for the
    TLS backend: (certificate chain, key)."""
    from remora.controlplane import ca
    authority = ca.CertificateAuthority(directory / "ca")
    authority.ensure_workload(directory / "server", "demo")
    return directory / "server" / ca.CERT_CHAIN, directory / "server" / ca.KEY


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message
