"""A tcp_proxy listener with a DownstreamTlsContext whose clients fail the handshake, held
to a real Envoy 1.40 on loopback.

Envoy runs a connection's network filters (onNewConnection) when the connection is
created, before its TLS handshake ends: tcp_proxy counts it and connects upstream at once.
A client whose handshake fails (plain text, no certificate where one is required, a
certificate of another CA, no shared cipher) still makes an upstream connection, which is
closed, and a tcp_proxy access-log line with the upstream cluster and host, nothing
relayed, no response flag, and the handshake's failure reason in
%DOWNSTREAM_TRANSPORT_FAILURE_REASON%; the listener's ssl.* counters tell the failures
apart (ssl.connection_error, ssl.fail_verify_no_cert, ssl.fail_verify_error), and a client
that goes before sending a byte is no TLS error at all. Before, remora handshook first:
no tcp_proxy line, no upstream connection, no tcp.* count, and every failure an
ssl.connection_error.
One bootstrap, run once by `envoy` and once by `remora proxy`. Needs the envoy binary; no
root."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane.ca import CertificateAuthority
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy import tls_half_close as th
from tests.unit.proxy.proxy_helpers import FILE_LOG, TCP_PROXY, addr, free_port, static_cluster

pytestmark = pytest.mark.envoy

LOG = ("%BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %UPSTREAM_HOST% "
       "%FILTER_CHAIN_NAME% %CONNECTION_TERMINATION_DETAILS% "
       "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%\n")
COUNTERS = ("ssl.handshake", "ssl.connection_error", "ssl.fail_verify_no_cert",
            "ssl.fail_verify_error", "ssl.fail_verify_san", "ssl.no_certificate")


def _bootstrap(port: int, admin: int, backend: int, certs: Path, logs: Path) -> dict[str, Any]:
    common = {"tls_certificates": [{
        "certificate_chain": {"filename": str(certs / "cert-chain.pem")},
        "private_key": {"filename": str(certs / "key.pem")}}],
        "validation_context": {"trusted_ca": {"filename": str(certs / "root-cert.pem")}}}

    def log(name: str) -> list[dict[str, Any]]:
        return [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": str(logs / f"{name}.log"),
            "log_format": {"text_format_source": {"inline_string": LOG}}}}]
    return {"admin": {"address": addr("127.0.0.1", admin)}, "static_resources": {
        "listeners": [{"name": "tls-in", "address": addr("127.0.0.1", port),
                       "access_log": log("listener"),
                       "filter_chains": [{"name": "mtls", "filters": [{
                           "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                               "@type": TCP_PROXY, "stat_prefix": "tls-in",
                               "cluster": "backend", "access_log": log("tcp")}}],
                           "transport_socket": {
                               "name": "envoy.transport_sockets.tls", "typed_config": {
                                   "@type": th.PREFIX + "DownstreamTlsContext",
                                   "require_client_certificate": True,
                                   "common_tls_context": common}}}]}],
        "clusters": [static_cluster("backend", backend)]}}


def _context(cert: Path | None, ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert / "cert-chain.pem", cert / "key.pem")
    if ciphers is not None:  # TLS 1.2 suites only, so TLS 1.2 at most
        ctx.set_ciphers(ciphers)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _connected(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    time.sleep(0.1)  # the proxy's upstream connection is made meanwhile
    return sock


def _plain(port: int, data: bytes) -> str:
    """DATA in plain text (nothing: the client waits a little and closes); how the
    connection ended."""
    with _connected(port) as sock:
        if not data:
            time.sleep(0.3)
            return "closed"
        sock.sendall(data)
        try:
            return "fin" if sock.recv(65536) == b"" else "data"
        except ConnectionResetError:
            return "reset"


def _tls(port: int, ctx: ssl.SSLContext) -> str:
    """A TLS client with CTX: "refused" when the handshake or the first read fails (in TLS
    1.3 the server checks the client's certificate after the client's side of the
    handshake completed)."""
    with _connected(port) as sock:
        try:
            with ctx.wrap_socket(sock) as tls:
                tls.sendall(b"x")
                tls.recv(10)
        except (ssl.SSLError, OSError):
            return "refused"
    return "answered"


CASES: dict[str, Callable[[int, dict[str, Path]], str]] = {
    "plain-http": lambda port, certs: _plain(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    "plain-silent": lambda port, certs: _plain(port, b""),
    "no-certificate": lambda port, certs: _tls(port, _context(None)),
    "other-ca": lambda port, certs: _tls(port, _context(certs["other"])),
    # Envoy's default server ciphers hold AES128-SHA, an RSA one: the ECDSA certificate
    # cannot serve it
    "no-shared-cipher": lambda port, certs: _tls(port, _context(certs["server"],
                                                                "AES128-SHA")),
}


def _story(kind: str, certs: dict[str, Path], tmp: Path) -> dict[str, Any]:
    logs = tmp / kind
    logs.mkdir()
    accepted: list[int] = []
    lock = threading.Lock()

    def handle(conn: socket.socket) -> None:
        with lock:
            accepted.append(1)
        conn.settimeout(3)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    backend = lp.thread_server(handle, threaded=True)
    port, admin = free_port(), free_port()
    config = tmp / f"{kind}.json"
    config.write_text(json.dumps(_bootstrap(port, admin, backend.getsockname()[1],
                                            certs["server"], logs)))
    out: dict[str, Any] = {}
    try:
        with lp.loopback_proxy(kind, config, port, admin):
            # loopback_proxy's probe of the listener is a connection too: counted from
            # here, its line skipped
            skip = len(lp.wait_lines(logs / "tcp.log", 1, timeout=3))
            # the backend counts a connection in its handler thread, which a loaded
            # machine may run after the proxy logged the line: wait for the probe's
            # upstream connections to be counted before the cases (else the first case
            # counted two), and for each case's own
            _wait_count(accepted, lock, skip)
            before = _counters(admin)
            for name, client in CASES.items():
                with lock:
                    accepted.clear()
                ended = client(port, certs)
                lines = lp.wait_lines(logs / "tcp.log", skip + 1)
                host = f"127.0.0.1:{backend.getsockname()[1]}"
                out[name] = (ended, lines[skip].replace(host, "backend"),
                             _wait_count(accepted, lock, 1))
                skip += 1
            after = _counters(admin)
            out["counters"] = {k: after.get(k, 0) - before.get(k, 0)
                               for k in sorted({*before, *after})}
            out["listener-log"] = lp.wait_lines(logs / "listener.log", skip)[-len(CASES):]
            out["tcp-log"] = lp.wait_lines(logs / "tcp.log", skip)[-len(CASES):]
    finally:
        backend.close()
    return out


def _wait_count(accepted: list[int], lock: threading.Lock, least: int) -> int:
    """How many connections the backend counted, once at least LEAST (or after 2 s), and
    after a moment more for any other still on its way."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        with lock:
            if len(accepted) >= least:
                break
        time.sleep(0.01)
    time.sleep(0.05)
    with lock:
        return len(accepted)


def _counters(admin: int) -> dict[str, int]:
    """The listener's ssl.* counters (as listener.ssl.*), tcp_proxy's and the cluster's
    connection counts."""
    found: dict[str, int] = {}
    for line in lp.admin_text(admin, "/stats").splitlines():
        name, _, value = line.partition(": ")
        if not value.isdigit():
            continue
        if name.startswith("listener.127.0.0.1_"):  # listener.127.0.0.1_<port>.<rest>
            rest = ".".join(name.split(".")[5:])
            if rest in COUNTERS:
                found["listener." + rest] = int(value)
        elif name in ("tcp.tls-in.downstream_cx_total", "cluster.backend.upstream_cx_total"):
            found[name] = int(value)
    return found


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("tls-handshake-failure")
    ca = CertificateAuthority(tmp / "ca")
    ca.ensure_workload(tmp / "server", "demo")
    CertificateAuthority(tmp / "other-ca").ensure_workload(tmp / "other", "demo")
    certs = {"server": tmp / "server", "other": tmp / "other"}
    return lp.each_kind(lambda kind: _story(kind, certs, tmp))


# what Envoy 1.40 logs for each (observed): the upstream connection made and closed,
# nothing relayed, no flag; the failure reason
REASONS = {
    "plain-http": "TLS_error:|268435612:SSL_routines:OPENSSL_internal:HTTP_REQUEST:"
                  "TLS_error_end",
    "plain-silent": "-",
    "no-certificate": "TLS_error:|268435648:SSL_routines:OPENSSL_internal:PEER_DID_NOT_"
                      "RETURN_A_CERTIFICATE:peer_did_not_provide_required_client_"
                      "certificate:TLS_error_end",
    "other-ca": "TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_"
                "FAILED:verify_cert_failed:_X509_verify_cert:_certificate_verification_"
                "error_at_depth_1:_self_signed_certificate_in_certificate_chain:TLS_error_end",
    # BoringSSL checks the ECDSA certificate's curve against the client's groups before
    # it picks a cipher: this client sends none (test_tls_failed_handshake_details)
    "no-shared-cipher": "TLS_error:|268435699:SSL_routines:OPENSSL_internal:WRONG_CURVE:"
                        "TLS_error_end",
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_failed_handshake_is_a_tcp_proxy_connection_as_on_envoy(
        outcomes: dict[str, dict[str, Any]], case: str) -> None:
    envoy, remora = outcomes["envoy"][case], outcomes["remora"][case]
    _, line, upstream_connections = envoy
    assert upstream_connections == 1, envoy
    assert line.startswith("0 0 - backend backend mtls - "), envoy
    assert line.endswith(" " + REASONS[case]), envoy
    assert remora == envoy


def test_the_listener_logs_the_same_line(outcomes: dict[str, dict[str, Any]]) -> None:
    for kind in ("envoy", "remora"):
        assert outcomes[kind]["listener-log"] == outcomes[kind]["tcp-log"], kind


def test_counters_as_on_envoy(outcomes: dict[str, dict[str, Any]]) -> None:
    envoy = outcomes["envoy"]["counters"]
    assert {k: v for k, v in envoy.items() if v} == {
        "listener.ssl.connection_error": 2,  # plain-http, no-shared-cipher
        "listener.ssl.fail_verify_no_cert": 1,
        "listener.ssl.fail_verify_error": 1,
        "tcp.tls-in.downstream_cx_total": len(CASES),
        "cluster.backend.upstream_cx_total": len(CASES)}, envoy
    assert {k: v for k, v in outcomes["remora"]["counters"].items() if v} == \
        {k: v for k, v in envoy.items() if v}
