"""What a downstream whose TLS handshake failed reads, and what the access log says of it,
held to a real Envoy 1.40 on loopback: the access log's TLS operators, the failure reason
for each way a handshake fails, and the alert the client reads.

Envoy's ConnectionInfo reads the SSL object whatever became of its handshake, so the
tcp_proxy line of a failed handshake (tcp_proxy starts with the connection) prints what
the handshake got to (observed): %DOWNSTREAM_TLS_VERSION% (TLSv1.2, BoringSSL's
SSL_get_version, before any version was negotiated: plain text, a client gone before its
first byte), %DOWNSTREAM_TLS_CIPHER% once one was chosen (not when no cipher is shared),
the local certificate's operators always, a refused client certificate's and its chain's
operators (fingerprint, URI SAN, issuer, serials, validity; refused for its CA or by a SAN
matcher, the san-in listener), never a session ID. Before,
remora printed ``-`` for all of them. Envoy's key exchange groups are X25519 and P-256
(DEFAULT_CURVES): a TLS 1.3 client offering only P-384 fails with NO_SHARED_GROUP, where
remora completed the handshake; a TLS 1.2 client whose groups do not hold the ECDSA
certificate's curve (or that sends none, offering no ECDHE suite) fails with
WRONG_CURVE, where remora said NO_SHARED_CIPHER (in OpenSSL's own words, without
BoringSSL's error number); a client without a usable suite, NO_SHARED_CIPHER.
One bootstrap, run once by `envoy` and once by `remora proxy`; each line is found by the
client's port, which it prints. Needs the envoy binary; no
root."""

from __future__ import annotations

import json
import re
import socket
import ssl
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

OPERATORS = ("DOWNSTREAM_TLS_VERSION", "DOWNSTREAM_TLS_CIPHER", "DOWNSTREAM_TLS_SESSION_ID",
             "DOWNSTREAM_PEER_FINGERPRINT_256", "DOWNSTREAM_PEER_URI_SAN",
             "DOWNSTREAM_PEER_ISSUER", "DOWNSTREAM_PEER_CHAIN_SERIALS",
             "DOWNSTREAM_PEER_CERT_V_START", "DOWNSTREAM_LOCAL_URI_SAN",
             "DOWNSTREAM_TRANSPORT_FAILURE_REASON")
LOG = "%DOWNSTREAM_REMOTE_ADDRESS% " + " ".join(f"{op}=%{op}%" for op in OPERATORS) + "\n"
T12, T13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


def _bootstrap(ports: dict[str, int], admin: int, backend: int, certs: Path,
               logs: Path) -> dict[str, Any]:
    """Two listeners requiring a client certificate of the CA: tls-in, and san-in whose
    SAN matcher accepts none."""
    def listener(name: str, sans: list[dict[str, Any]]) -> dict[str, Any]:
        validation: dict[str, Any] = {"trusted_ca": {"filename": str(certs / "root-cert.pem")}}
        if sans:
            validation["match_typed_subject_alt_names"] = sans
        common = {"tls_certificates": [{
            "certificate_chain": {"filename": str(certs / "cert-chain.pem")},
            "private_key": {"filename": str(certs / "key.pem")}}],
            "validation_context": validation}
        return {"name": name, "address": addr("127.0.0.1", ports[name]),
                "filter_chains": [{"name": "mtls", "filters": [{
                    "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                        "@type": TCP_PROXY, "stat_prefix": name, "cluster": "backend",
                        "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                            "@type": FILE_LOG, "path": str(logs / f"{name}.log"),
                            "log_format": {"text_format_source": {"inline_string": LOG}}}}]}}],
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls", "typed_config": {
                            "@type": th.PREFIX + "DownstreamTlsContext",
                            "require_client_certificate": True,
                            "common_tls_context": common}}}]}
    nobody = [{"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/x/sa/nobody"}}]
    return {"admin": {"address": addr("127.0.0.1", admin)}, "static_resources": {
        "listeners": [listener("tls-in", []), listener("san-in", nobody)],
        "clusters": [static_cluster("backend", backend)]}}


def _context(cert: Path | None, *, ciphers: str | None = None, curve: str | None = None,
             version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert / "cert-chain.pem", cert / "key.pem")
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if curve is not None:  # the ClientHello's supported_groups: this one only
        ctx.set_ecdh_curve(curve)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def _connected(port: int) -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind(("127.0.0.1", 0))
    sock.connect(("127.0.0.1", port))
    time.sleep(0.1)  # the proxy's upstream connection is made meanwhile
    return sock, sock.getsockname()[1]


def _tls(port: int, ctx: ssl.SSLContext) -> tuple[int, str]:
    """A TLS client with CTX (its port): what it read, the alert's name when the handshake
    or the first read failed (in TLS 1.3 the server checks the client's certificate after
    the client's side of the handshake completed)."""
    sock, local = _connected(port)
    with sock:
        try:
            with ctx.wrap_socket(sock) as tls:
                # nothing sent: a byte the server did not read when it closed would
                # make its kernel reset the connection, and the client might read the
                # reset before the alert
                tls.settimeout(1)
                tls.recv(10)
        except TimeoutError:  # the backend sends nothing: the connection is up
            return local, "established"
        except ssl.SSLError as exc:
            return local, f"alert {exc.reason or type(exc).__name__}"
        except OSError as exc:
            return local, type(exc).__name__
    return local, "closed"


def _plain(port: int, data: bytes) -> tuple[int, str]:
    sock, local = _connected(port)
    with sock:
        if not data:
            time.sleep(0.3)
            return local, "closed"
        sock.sendall(data)
        try:
            return local, repr(sock.recv(100))
        except OSError as exc:
            return local, type(exc).__name__


Client = Callable[[int, dict[str, Path]], tuple[int, str]]
CASES: dict[str, Client] = {
    "plain-http": lambda port, c: _plain(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    "plain-silent": lambda port, c: _plain(port, b""),
    "no-certificate-tls13": lambda port, c: _tls(port, _context(None)),
    "no-certificate-tls12": lambda port, c: _tls(port, _context(None, version=T12)),
    "other-ca-tls13": lambda port, c: _tls(port, _context(c["other"])),
    "other-ca-tls12": lambda port, c: _tls(port, _context(c["other"], version=T12)),
    # the certificate is ECDSA P-256; AES128-SHA is an RSA suite and the client, offering
    # no ECDHE suite, sends no supported_groups
    "only-aes128-sha": lambda port, c: _tls(port, _context(c["server"], ciphers="AES128-SHA",
                                                           version=T12)),
    "only-rsa-suites": lambda port, c: _tls(port, _context(
        c["server"], ciphers="ECDHE-RSA-AES128-GCM-SHA256", version=T12)),
    "only-p384-tls13": lambda port, c: _tls(port, _context(c["server"], curve="secp384r1")),
    "only-p384-tls12": lambda port, c: _tls(port, _context(c["server"], curve="secp384r1",
                                                           version=T12)),
    "only-x25519-tls12": lambda port, c: _tls(port, _context(c["server"], curve="X25519",
                                                             version=T12)),
    "only-p256-tls13": lambda port, c: _tls(port, _context(c["server"], curve="prime256v1")),
    # a certificate of the CA no SAN matcher accepts (the san-in listener)
    "san-refused-tls13": lambda port, c: _tls(port, _context(c["server"])),
    "san-refused-tls12": lambda port, c: _tls(port, _context(c["server"], version=T12)),
}
LISTENER = {name: "san-in" if name.startswith("san-") else "tls-in" for name in CASES}


def _story(kind: str, certs: dict[str, Path], tmp: Path) -> dict[str, Any]:
    logs = tmp / kind
    logs.mkdir()

    def handle(conn: socket.socket) -> None:
        conn.settimeout(3)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    backend = lp.thread_server(handle, threaded=True)
    ports = {"tls-in": free_port(), "san-in": free_port()}
    admin = free_port()
    config = tmp / f"{kind}.json"
    config.write_text(json.dumps(_bootstrap(ports, admin, backend.getsockname()[1],
                                            certs["server"], logs)))
    out: dict[str, Any] = {}
    try:
        with lp.loopback_proxy(kind, config, *ports.values(), admin):
            clients = {name: client(ports[LISTENER[name]], certs)
                       for name, client in CASES.items()}
            deadline = time.monotonic() + 5
            by_port: dict[int, str] = {}
            while time.monotonic() < deadline:  # each line is written when its connection ends
                by_port = {int(line.split(" ", 1)[0].rsplit(":", 1)[1]): line.split(" ", 1)[1]
                           for name in ports for line in lp.wait_lines(logs / f"{name}.log", 1)}
                if all(local in by_port for local, _ in clients.values()):
                    break
                time.sleep(0.1)
            for name, (local, ended) in clients.items():
                out[name] = (ended, _fields(by_port[local]))
    finally:
        backend.close()
    return out


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split(" "))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("tls-failed-details")
    CertificateAuthority(tmp / "ca").ensure_workload(tmp / "server", "demo")
    CertificateAuthority(tmp / "other-ca").ensure_workload(tmp / "other", "demo")
    certs = {"server": tmp / "server", "other": tmp / "other"}
    return lp.each_kind(lambda kind: _story(kind, certs, tmp))


def _boringssl(number: int, name: str) -> str:
    return f"TLS_error:|{268435456 + number}:SSL_routines:OPENSSL_internal:{name}:TLS_error_end"


# what Envoy 1.40 says for each (observed): the failure reason, and which TLS operators
# print something
REASONS = {
    "plain-silent": "-",
    "only-aes128-sha": _boringssl(243, "WRONG_CURVE"),
    "only-rsa-suites": _boringssl(184, "NO_SHARED_CIPHER"),
    "only-p384-tls13": _boringssl(266, "NO_SHARED_GROUP"),
    "only-p384-tls12": _boringssl(243, "WRONG_CURVE"),
    "only-x25519-tls12": _boringssl(243, "WRONG_CURVE"),
    "only-p256-tls13": "-",
    "san-refused-tls13": "TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_"
                         "FAILED:verify_cert_failed:_SAN_matcher,_certificate_SANs_are_"
                         "[spiffe://cluster.local/ns/demo/sa/default]:TLS_error_end",
}
PEER = ("DOWNSTREAM_PEER_FINGERPRINT_256", "DOWNSTREAM_PEER_URI_SAN",
        "DOWNSTREAM_PEER_ISSUER", "DOWNSTREAM_PEER_CHAIN_SERIALS",
        "DOWNSTREAM_PEER_CERT_V_START")


@pytest.mark.parametrize("case", list(CASES))
def test_a_failed_handshake_is_logged_and_answered_as_on_envoy(
        outcomes: dict[str, dict[str, Any]], case: str) -> None:
    envoy, remora = outcomes["envoy"][case], outcomes["remora"][case]
    fields = envoy[1]
    if case in REASONS:
        assert fields["DOWNSTREAM_TRANSPORT_FAILURE_REASON"] == REASONS[case], envoy
    # the local certificate's operators on every connection; never a session ID in these
    assert fields["DOWNSTREAM_LOCAL_URI_SAN"].startswith("spiffe://"), envoy
    if case != "only-p256-tls13":
        assert fields["DOWNSTREAM_TLS_SESSION_ID"] == "-", envoy
        if case.startswith(("plain", "only-")) and not case.endswith("tls13"):
            assert fields["DOWNSTREAM_TLS_VERSION"] == "TLSv1.2", envoy
            assert fields["DOWNSTREAM_TLS_CIPHER"] == "-", envoy
        else:  # a version and a cipher were chosen
            assert re.fullmatch(r"TLSv1\.[23]", fields["DOWNSTREAM_TLS_VERSION"]), envoy
            assert fields["DOWNSTREAM_TLS_CIPHER"] != "-", envoy
        refused_certificate = case.startswith(("other-ca", "san-refused"))
        assert all((fields[op] != "-") is refused_certificate for op in PEER), envoy
    assert remora == envoy


def test_the_alerts_a_client_reads(outcomes: dict[str, dict[str, Any]]) -> None:
    """BoringSSL's alerts (observed), which OpenSSL sends for the same failures:
    certificate_required (116) for no certificate in TLS 1.3, handshake_failure (40) in
    TLS 1.2 and for nothing shared, unknown_ca (48) for a certificate of another CA."""
    alerts = {name: ended for name, (ended, _) in outcomes["envoy"].items()}
    assert alerts["no-certificate-tls13"] == "alert TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert alerts["no-certificate-tls12"] == "alert SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert alerts["other-ca-tls13"] == alerts["other-ca-tls12"] == "alert TLSV1_ALERT_UNKNOWN_CA"
    assert alerts["san-refused-tls13"] == alerts["san-refused-tls12"] == \
        "alert SSLV3_ALERT_CERTIFICATE_UNKNOWN"
    for case in ("only-aes128-sha", "only-rsa-suites", "only-p384-tls13", "only-p384-tls12",
                 "only-x25519-tls12"):
        assert alerts[case] == "alert SSLV3_ALERT_HANDSHAKE_FAILURE", case
    assert alerts == {name: ended for name, (ended, _) in outcomes["remora"].items()}
