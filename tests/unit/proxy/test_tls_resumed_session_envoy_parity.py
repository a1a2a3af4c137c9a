"""The downstream peer-certificate operators on a resumed TLS session, held to a real Envoy
1.40 on loopback.

A client with a certificate connects twice to a tcp_proxy TLS listener (TLS 1.2, then TLS
1.3), the second time with the first connection's session (a TLS 1.2 session ticket, a
TLS 1.3 PSK): both proxies resume it. BoringSSL keeps the peer's certificate and the chain
it came with in the session, so Envoy logs every %DOWNSTREAM_PEER_*% value of a resumed
connection as of the first, %DOWNSTREAM_PEER_CHAIN_*% included (observed); OpenSSL puts
only the leaf in its ticket, and remora logged no chain values on a resumed connection
before it remembered each certificate's chain (tls._downstream_chain).
One bootstrap, run once by `envoy` and once by `remora proxy`. Needs the envoy binary; no
root."""

from __future__ import annotations

import json
import re
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane.ca import CertificateAuthority
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy import tls_half_close as th
from tests.unit.proxy.proxy_helpers import FILE_LOG, TCP_PROXY, addr, free_port, static_cluster

pytestmark = pytest.mark.envoy

OPERATORS = (
    "DOWNSTREAM_TLS_VERSION", "DOWNSTREAM_PEER_URI_SAN", "DOWNSTREAM_PEER_DNS_SAN",
    "DOWNSTREAM_PEER_SUBJECT", "DOWNSTREAM_PEER_ISSUER", "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_FINGERPRINT_1", "DOWNSTREAM_PEER_SERIAL", "DOWNSTREAM_PEER_CERT",
    "DOWNSTREAM_PEER_CERT_V_START", "DOWNSTREAM_PEER_CERT_V_END",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256", "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1",
    "DOWNSTREAM_PEER_CHAIN_SERIALS", "DOWNSTREAM_LOCAL_URI_SAN", "DOWNSTREAM_TLS_SESSION_ID",
)
SEP = " | "
LOG = SEP.join(f"%{op}%" for op in OPERATORS) + "\n"
SESSION_ID = re.compile(r"[0-9a-f]{64}")


def _bootstrap(port: int, admin: int, backend: int, certs: Path, logs: Path) -> dict[str, Any]:
    common = {"tls_certificates": [{
        "certificate_chain": {"filename": str(certs / "cert-chain.pem")},
        "private_key": {"filename": str(certs / "key.pem")}}],
        "validation_context": {"trusted_ca": {"filename": str(certs / "root-cert.pem")}}}
    return {"admin": {"address": addr("127.0.0.1", admin)}, "static_resources": {
        "listeners": [{"name": "tls-in", "address": addr("127.0.0.1", port),
                       "filter_chains": [{"filters": [{
                           "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                               "@type": TCP_PROXY, "stat_prefix": "tls-in",
                               "cluster": "backend", "access_log": [{
                                   "name": "envoy.access_loggers.file", "typed_config": {
                                       "@type": FILE_LOG, "path": str(logs / "tcp.log"),
                                       "log_format": {"text_format_source": {
                                           "inline_string": LOG}}}}]}}],
                           "transport_socket": {
                               "name": "envoy.transport_sockets.tls", "typed_config": {
                                   "@type": th.PREFIX + "DownstreamTlsContext",
                                   "require_client_certificate": True,
                                   "common_tls_context": common}}}]}],
        "clusters": [static_cluster("backend", backend)]}}


def _exchange(port: int, ctx: ssl.SSLContext,
              session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
    """One request and its answer (a TLS 1.3 server sends its tickets with the answer:
    BoringSSL's go out with the first write); the session and whether it was resumed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, session=session) as sock:
        sock.sendall(b"ping")
        assert sock.recv(10) == b"pong"
        got = sock.session, sock.session_reused
        sock.sendall(b"again")  # after the TLS 1.3 tickets: read with the answer
        sock.recv(10)
        return sock.session or got[0], got[1]


def _story(kind: str, certs: Path, tmp: Path) -> dict[str, Any]:
    logs = tmp / kind
    logs.mkdir()

    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            while conn.recv(65536):
                conn.sendall(b"pong")
        except OSError:
            pass

    backend = lp.thread_server(handle, threaded=True)
    port, admin = free_port(), free_port()
    config = tmp / f"{kind}.json"
    config.write_text(json.dumps(_bootstrap(port, admin, backend.getsockname()[1], certs,
                                            logs)))
    out: dict[str, Any] = {}
    try:
        with lp.loopback_proxy(kind, config, port, admin):
            skip = len(lp.wait_lines(logs / "tcp.log", 1, timeout=3))  # the probe's
            for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.load_verify_locations(certs / "root-cert.pem")
                ctx.load_cert_chain(certs / "cert-chain.pem", certs / "key.pem")
                ctx.minimum_version = ctx.maximum_version = version
                session, first = _exchange(port, ctx, None)
                _, resumed = _exchange(port, ctx, session)
                lines = lp.wait_lines(logs / "tcp.log", skip + 2)[skip:]
                skip += 2
                out[version.name] = ((first, resumed), [_masked(line) for line in lines])
    finally:
        backend.close()
    return out


def _masked(line: str) -> list[str]:
    """LINE's values, the session id (random per session) as its shape."""
    values = line.split(SEP)
    session = OPERATORS.index("DOWNSTREAM_TLS_SESSION_ID")
    if SESSION_ID.fullmatch(values[session]):
        values[session] = "<session id>"
    return values


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("tls-resumed")
    certs = tmp / "certs"
    CertificateAuthority(tmp / "ca").ensure_workload(certs, "demo")
    return lp.each_kind(lambda kind: _story(kind, certs, tmp))


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_a_resumed_session_logs_the_peer_certificate_and_chain_as_on_envoy(
        outcomes: dict[str, dict[str, Any]], version: str) -> None:
    (first, resumed), (full, again) = outcomes["envoy"][version]
    assert (first, resumed) == (False, True)  # the second connection resumed
    chain = OPERATORS.index("DOWNSTREAM_PEER_CHAIN_SERIALS")
    assert full[chain].count(",") == 1, full  # the workload certificate and its CA's
    # every certificate value of the resumed connection as of the first; not the TLS 1.2
    # session id: none on the first (its client takes tickets), the resumed one's
    session = OPERATORS.index("DOWNSTREAM_TLS_SESSION_ID")
    assert again[:session] == full[:session], (full, again)
    assert outcomes["remora"][version] == outcomes["envoy"][version]
