"""Core behaviours held to a real Envoy 1.40 on loopback: one bootstrap, run once by
`envoy` and once by `remora proxy`, the same clients against both, and what the client
saw, the stats and the access-log lines compared.

- Listener filters when the peer closes before tls_inspector / http_inspector decided
  (listener_filters_timeout 0s): closed at once, downstream_listener_filter_remote_close
  (FIN) or _error (reset), nothing upstream, a listener access-log line.
- A route retrying connect failures with the previous_hosts predicate on a one-endpoint
  cluster: the host already tried is tried again (URX,UF and the transport failure in
  the details, 3 attempts), not no_healthy_upstream (UH).
Needs the envoy binary (marker `envoy`); no root."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import FILE_LOG, TCP_PROXY, addr, free_port

pytestmark = pytest.mark.envoy

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
PREVIOUS_HOSTS = [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
             "PreviousHostsPredicate"}}]
TLS = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3."
             "TlsInspector"}}
HTTP = {"name": "envoy.filters.listener.http_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3."
             "HttpInspector"}}
# (listener, bytes, how the client ends, pause before it does). The pause lets the proxy
# peek the bytes first: Envoy checks for the close before it looks at bytes that arrived
# with it, so without the pause its outcome is a race.
PROBES = [
    ("tls", b"\x16\x03", "shut", 0.15),
    ("tls", b"GET", "shut", 0.15),
    ("tls", b"GET /", "shut", 0.15),  # 5 bytes: not TLS, goes on to the chain
    ("tls", b"", "shut", 0.0),
    # A reset with nothing sent: downstream_listener_filter_error in both. (A reset after
    # partial bytes is not compared: Envoy 1.40 peeks the bytes still queued, waits for
    # more and never hears of the reset, so with timeout 0s the socket stays in
    # downstream_pre_cx_active for ever; remora closes it and counts _error.)
    ("tls", b"", "rst", 0.15),
    ("http", b"GE", "shut", 0.15),
    ("http", b"\x16\x03", "shut", 0.15),  # not HTTP: goes on to the chain
]


def _log(path: Path, fmt: str) -> list[dict[str, Any]]:
    return [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(path),
        "log_format": {"text_format_source": {"inline_string": fmt + "\n"}}}}]


def _tcp_chain(name: str) -> dict[str, Any]:
    return {"name": name, "filters": [{"name": "envoy.filters.network.tcp_proxy",
                                       "typed_config": {"@type": TCP_PROXY,
                                                        "stat_prefix": name, "cluster": "up"}}]}


def _bootstrap(ports: dict[str, int], log: Path, hlog: Path) -> dict[str, Any]:
    def inspecting(name: str, filt: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "address": addr("127.0.0.1", ports[name]),
                "listener_filters_timeout": "0s", "listener_filters": [filt],
                "filter_chains": [_tcp_chain(f"{name}-chain")],
                "access_log": _log(log, f"{name} %RESPONSE_FLAGS% %FILTER_CHAIN_NAME%")}

    retry = {"retry_on": "connect-failure", "num_retries": 2,
             "retry_host_predicate": PREVIOUS_HOSTS, "host_selection_retry_max_attempts": "3"}
    hcm = {"@type": HCM, "stat_prefix": "h",
           "route_config": {"name": "r", "virtual_hosts": [{
               "name": "v", "domains": ["*"], "routes": [{
                   "match": {"prefix": "/"},
                   "route": {"cluster": "dead", "retry_policy": retry}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": ROUTER}}],
           "access_log": _log(hlog, "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
                                    "%UPSTREAM_REQUEST_ATTEMPT_COUNT% %UPSTREAM_HOST% "
                                    "%UPSTREAM_TRANSPORT_FAILURE_REASON%")}

    def static(name: str, port: int) -> dict[str, Any]:
        return {"name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": addr("127.0.0.1", port)}}]}]}}

    return {
        "admin": {"address": addr("127.0.0.1", ports["admin"])},
        "static_resources": {
            "listeners": [
                inspecting("tls", TLS), inspecting("http", HTTP),
                {"name": "web", "address": addr("127.0.0.1", ports["web"]),
                 "filter_chains": [{"filters": [{
                     "name": "envoy.filters.network.http_connection_manager",
                     "typed_config": hcm}]}]}],
            "clusters": [static("up", ports["up"]), static("dead", ports["dead"])]}}


def _probe(port: int, data: bytes, how: str, pause: float) -> str:
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.sendall(data)
        time.sleep(pause)
        if how == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return "reset sent"
        s.shutdown(socket.SHUT_WR)
        s.settimeout(3)
        try:
            return "relayed" if s.recv(100) else "fin"
        except TimeoutError:
            return "hang"
        except ConnectionResetError:
            return "rst"
    finally:
        s.close()


def _get(port: int) -> bytes:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    try:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out.split(b"\r\n", 1)[0]
    finally:
        s.close()


def _stats(admin: int) -> dict[str, str]:
    text = lp.admin_text(admin, "/stats")
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def _echo_upstream() -> tuple[socket.socket, list[int]]:
    """Echoes what it reads (once the client half-closes); counts accepted connections."""
    accepted: list[int] = []

    def echo(conn: socket.socket) -> None:
        accepted.append(1)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.sendall(data)

    return lp.thread_server(echo), accepted


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("core-parity")
    srv, accepted = _echo_upstream()
    found: dict[str, dict[str, Any]] = {}
    try:
        for kind in ph.KINDS:
            ports = {n: free_port() for n in ("tls", "http", "web", "admin", "dead")}
            ports["up"] = int(srv.getsockname()[1])
            log, hlog, cfg = tmp / f"{kind}.log", tmp / f"{kind}-http.log", tmp / f"{kind}.json"
            cfg.write_text(json.dumps(_bootstrap(ports, log, hlog)))
            with lp.loopback_proxy(kind, cfg, ports["web"]):
                before = len(accepted)
                seen = [_probe(ports[lis], data, how, pause) for lis, data, how, pause in PROBES]
                status = _get(ports["web"])
                time.sleep(0.3)
                stats = _stats(ports["admin"])
                log_lines = lp.wait_lines(log, len(PROBES))
                http_lines = lp.wait_lines(hlog, 1)
                found[kind] = {
                    "seen": seen, "upstreams": len(accepted) - before, "status": status,
                    "stats": {f"{lis}.{k}": stats.get(
                        f"listener.127.0.0.1_{ports[lis]}.downstream_listener_filter_{k}")
                        for lis in ("tls", "http") for k in ("remote_close", "error")},
                    "cluster": {k: stats.get(f"cluster.dead.upstream_cx_{k}")
                                for k in ("connect_fail", "none_healthy")},
                    "log": sorted(log_lines),
                    "http_log": [line.replace(str(ports["dead"]), "DEAD")
                                 for line in http_lines]}
        yield found
    finally:
        srv.close()


def test_early_close_during_listener_filters_same_as_envoy(
        outcomes: dict[str, dict[str, Any]]) -> None:
    envoy, remora = outcomes["envoy"], outcomes["remora"]
    assert envoy["seen"] == ["rst", "rst", "relayed", "fin", "reset sent", "rst", "relayed"]
    for key in ("seen", "upstreams", "stats", "log"):
        assert remora[key] == envoy[key], key


def test_previous_hosts_retry_on_one_endpoint_same_as_envoy(
        outcomes: dict[str, dict[str, Any]]) -> None:
    envoy, remora = outcomes["envoy"], outcomes["remora"]
    assert envoy["status"] == b"HTTP/1.1 503 Service Unavailable"
    assert envoy["http_log"] == [
        "503 URX,UF upstream_reset_before_response_started{remote_connection_failure|"
        "delayed_connect_error:_Connection_refused} 3 127.0.0.1:DEAD "
        "delayed_connect_error:_Connection_refused"]
    assert envoy["cluster"] == {"connect_fail": "3", "none_healthy": "0"}
    for key in ("status", "http_log", "cluster"):
        assert remora[key] == envoy[key], key
