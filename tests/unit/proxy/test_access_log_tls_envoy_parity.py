"""The access log's downstream TLS command operators held to a real Envoy 1.40 on loopback.

One bootstrap has an HTTP listener (http_connection_manager) and a TCP listener
(tcp_proxy) per server certificate (an Istio workload certificate: empty subject, one URI
SAN; and one whose subject RFC 2253 escapes, with two URI and two DNS SANs), TLS asking
for a client certificate without requiring one, and one plain-text listener of each kind.
Every listener writes a text and a json_format access log holding every TLS operator
remora implements. It runs once by `envoy` and once by `remora proxy`; the same clients
go through every listener (mutual TLS with the rich and the Istio-like certificate, mutual
TLS 1.2, TLS without a client certificate; plain text on the plain listeners; two HTTP/1.1
requests per connection, one the HTTP/1.1 codec refuses, and one HTTP/2 request), and the
log lines must be the same, byte for byte, but for the TLS session id (random per
connection: its shape is checked).
Needs the envoy binary; no root."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from remora.controlplane.ca import CertificateAuthority
from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import free_port, h2_tls_request
from tests.unit.proxy.xfcc_certs import RICH_DNS, RICH_URIS, rich_client

pytestmark = pytest.mark.envoy

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
      "HttpConnectionManager"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"

OPERATORS = (
    "DOWNSTREAM_PEER_URI_SAN", "DOWNSTREAM_PEER_DNS_SAN", "DOWNSTREAM_LOCAL_URI_SAN",
    "DOWNSTREAM_LOCAL_DNS_SAN", "DOWNSTREAM_PEER_SUBJECT", "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_PEER_ISSUER", "DOWNSTREAM_TLS_VERSION", "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_PEER_FINGERPRINT_256", "DOWNSTREAM_PEER_FINGERPRINT_1",
    "DOWNSTREAM_PEER_SERIAL", "DOWNSTREAM_PEER_CERT_V_START", "DOWNSTREAM_PEER_CERT_V_END",
    "DOWNSTREAM_PEER_CERT_V_START(%b %e %H:%M:%S %Y %Z)", "DOWNSTREAM_PEER_CERT_V_END(%s)",
    "DOWNSTREAM_PEER_CERT", "DOWNSTREAM_TLS_SESSION_ID",
)
SESSION = OPERATORS.index("DOWNSTREAM_TLS_SESSION_ID")
SEP = " | "
TEXT = "%PROTOCOL%" + "".join(f"{SEP}%{op}%" for op in OPERATORS) + "\n"
JSON = {**{f"k{i:02d}": f"%{op}%" for i, op in enumerate(OPERATORS)},
        "mixed": "v=%DOWNSTREAM_TLS_VERSION% uri=%DOWNSTREAM_PEER_URI_SAN%"}
# listener: (kind, server certificate or None for plain text)
LISTENERS: dict[str, tuple[str, str | None]] = {
    "http-istio": ("http", "istio-server"), "http-rich": ("http", "rich-server"),
    "http-plain": ("http", None),
    "tcp-istio": ("tcp", "istio-server"), "tcp-rich": ("tcp", "rich-server"),
    "tcp-plain": ("tcp", None),
}
# client: (certificate or None, highest TLS version, session tickets)
CLIENTS: dict[str, tuple[str | None, ssl.TLSVersion, bool]] = {
    "rich": ("rich", ssl.TLSVersion.TLSv1_3, True),
    "istio": ("istio", ssl.TLSVersion.TLSv1_3, True),
    "rich-tls12": ("rich", ssl.TLSVersion.TLSv1_2, True),
    "none": (None, ssl.TLSVersion.TLSv1_3, True),
    # TLS 1.2 without session tickets: the server gives the session an ID
    "none-tls12-no-ticket": (None, ssl.TLSVersion.TLSv1_2, False),
}


def _file_log(path: Path, log_format: dict[str, Any]) -> dict[str, Any]:
    return {"name": "envoy.access_loggers.file",
            "typed_config": {"@type": FILE_LOG, "path": str(path), "log_format": log_format}}


def _listener(name: str, port: int, certs: dict[str, Path], logs: Path) -> dict[str, Any]:
    kind, server = LISTENERS[name]
    access_log = [_file_log(logs / f"{name}.log", {"text_format_source": {"inline_string": TEXT}}),
                  _file_log(logs / f"{name}.json", {"json_format": JSON})]
    if kind == "http":
        flt = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": name, "access_log": access_log,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router",
                              "typed_config": {"@type": ROUTER}}]}}
    else:
        flt = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": TCP_PROXY, "stat_prefix": name, "cluster": "echo",
            "access_log": access_log}}
    chain: dict[str, Any] = {"filters": [flt]}
    if server is not None:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": TLS, "require_client_certificate": False,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"] if kind == "http" else [],
                "tls_certificates": [{
                    "certificate_chain": {"filename": str(certs[server] / "cert-chain.pem")},
                    "private_key": {"filename": str(certs[server] / "key.pem")}}],
                "validation_context": {"trusted_ca": {
                    "filename": str(certs["istio-server"] / "root-cert.pem")}}}}}
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}},
            "filter_chains": [chain]}


def _bootstrap(ports: dict[str, int], admin: int, echo: int, certs: dict[str, Path],
               logs: Path) -> dict[str, Any]:
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": admin}}},
            "static_resources": {
                "listeners": [_listener(name, port, certs, logs)
                              for name, port in ports.items()],
                "clusters": [{"name": "echo", "type": "STATIC", "connect_timeout": "1s",
                              "load_assignment": {"cluster_name": "echo", "endpoints": [
                                  {"lb_endpoints": [{"endpoint": {"address": {
                                      "socket_address": {"address": "127.0.0.1",
                                                         "port_value": echo}}}}]}]}}]}}


# a real Envoy as the TLS client (an Istio sidecar's upstream side: BoringSSL, the Istio
# certificate): its listener (plain text) -> tcp_proxy -> the listener under test, over
# TLS with this highest version. BoringSSL offers TLS_AES_128_GCM_SHA256 first, ``ssl``
# TLS_AES_256_GCM_SHA384: which one the server takes is the server's rule.
VIA_ENVOY: dict[str, tuple[str, str]] = {
    "e13-http": ("http-istio", "TLSv1_3"), "e13-tcp": ("tcp-istio", "TLSv1_3"),
    "e12-tcp": ("tcp-rich", "TLSv1_2"),
}
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3." \
               "UpstreamTlsContext"


def _client_envoy(via: dict[str, int], ports: dict[str, int], admin: int,
                  certs: dict[str, Path]) -> dict[str, Any]:
    listeners, clusters = [], []
    for name, (target, top) in VIA_ENVOY.items():
        listeners.append({"name": name, "address": {"socket_address": {
            "address": "127.0.0.1", "port_value": via[name]}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                            "typed_config": {"@type": TCP_PROXY,
                                                             "stat_prefix": name,
                                                             "cluster": name}}]}]})
        clusters.append({
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": ports[target]}}}}]}]},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": UPSTREAM_TLS, "common_tls_context": {
                    "tls_params": {"tls_maximum_protocol_version": top},
                    "tls_certificates": [{
                        "certificate_chain": {"filename": str(certs["istio"] / "cert-chain.pem")},
                        "private_key": {"filename": str(certs["istio"] / "key.pem")}}],
                    "validation_context": {"trusted_ca": {
                        "filename": str(certs["istio"] / "root-cert.pem")}}}}}})
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": admin}}},
            "static_resources": {"listeners": listeners, "clusters": clusters}}


def _context(root: Path, client: Path | None, top: ssl.TLSVersion, alpn: str,
             tickets: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.maximum_version = top
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    ctx.load_verify_locations(root)
    if client is not None:
        ctx.load_cert_chain(client / "cert-chain.pem", client / "key.pem")
    ctx.set_alpn_protocols([alpn])
    return ctx


def _read_head(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
    """A response head from SOCK (BUF: bytes read before) and what was read beyond it."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _read_response(sock: socket.socket, buf: bytes) -> bytes:
    """One HTTP/1.1 response with a Content-Length from SOCK (BUF: bytes read before);
    what was read beyond it."""
    head, rest = _read_head(sock, buf)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return rest[length:]


def _http1_twice(port: int, ctx: ssl.SSLContext | None) -> None:
    """Two requests on one connection: the second reads what the first's connection
    cached."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock = ctx.wrap_socket(raw) if ctx is not None else raw
    try:
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        left = _read_response(sock, b"")
        sock.sendall(b"GET /two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        _read_response(sock, left)
    finally:
        sock.close()


def _http1_refused(port: int, ctx: ssl.SSLContext | None) -> None:
    """A request the codec refuses (a header line without a colon): 400, flag DPE, logged
    with the connection's TLS facts as any other request on it."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock = ctx.wrap_socket(raw) if ctx is not None else raw
    try:
        sock.sendall(b"GET /bad HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n")
        head, _ = _read_head(sock, b"")
        assert head.startswith(b"HTTP/1.1 400 "), head
    finally:
        sock.close()


def _http2(port: int, ctx: ssl.SSLContext) -> None:
    h2_tls_request(port, ctx, [(":method", "GET"), (":path", "/h2"), (":scheme", "https"),
                               (":authority", "a")])


def _tcp(port: int, ctx: ssl.SSLContext | None) -> None:
    """An HTTP request through tcp_proxy to the echo backend, read to its end."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock = ctx.wrap_socket(raw) if ctx is not None else raw
    try:
        sock.sendall(b"GET /tcp HTTP/1.1\r\nHost: a\r\n\r\n")
        _read_response(sock, b"")
    finally:
        sock.close()


Lines = dict[str, list[str]]  # log file name: its lines


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tls-log-certs")
    ca = CertificateAuthority(tmp / "ca")
    ca.ensure_workload(tmp / "istio-server", "demo-to")
    ca.ensure_workload(tmp / "istio", "demo-from")
    return {"istio-server": tmp / "istio-server", "istio": tmp / "istio",
            "rich": rich_client(ca, tmp / "rich"),
            "rich-server": rich_client(ca, tmp / "rich-server")}


@pytest.fixture(scope="module")
def outcomes(certs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[dict[str, Lines]]:
    tmp = tmp_path_factory.mktemp("tls-log")
    root = certs["istio-server"] / "root-cert.pem"
    with lp.echo_backend() as echo:
        found: dict[str, Lines] = {}
        for kind in ph.KINDS:
            logs = tmp / kind
            logs.mkdir()
            ports = {name: free_port() for name in LISTENERS}
            cfg = tmp / f"{kind}.json"
            cfg.write_text(json.dumps(_bootstrap(ports, free_port(), echo, certs, logs)))
            got: Lines = {}
            via = {name: free_port() for name in VIA_ENVOY}
            client_cfg = tmp / f"client-envoy-for-{kind}.json"
            client_cfg.write_text(json.dumps(_client_envoy(via, ports, free_port(), certs)))
            with lp.loopback_proxy(kind, cfg, ports["http-plain"]), \
                    lp.loopback_proxy("envoy", client_cfg, via["e13-http"]):
                for name, port in ports.items():
                    listener_kind, server = LISTENERS[name]
                    contexts = [None] if server is None else [
                        _context(root, certs[c] if c else None, top, "http/1.1", tickets)
                        for c, top, tickets in CLIENTS.values()]
                    count = 0
                    for ctx in contexts:
                        # one connection at a time, its lines written before the next
                        if listener_kind == "http":
                            _http1_twice(port, ctx)
                            count += 2
                            lp.wait_lines(logs / f"{name}.log", count)
                            _http1_refused(port, ctx)
                            count += 1
                        else:
                            _tcp(port, ctx)
                            count += 1
                        lp.wait_lines(logs / f"{name}.log", count)
                    if listener_kind == "http" and server is not None:
                        _http2(port, _context(root, certs["rich"], ssl.TLSVersion.TLSv1_3,
                                              "h2"))
                        count += 1
                    for via_name, (target, _) in VIA_ENVOY.items():
                        if target == name:  # plain text to the client Envoy, TLS beyond
                            lp.wait_lines(logs / f"{name}.log", count)
                            if listener_kind == "http":
                                _http1_twice(via[via_name], None)
                                count += 2
                            else:
                                _tcp(via[via_name], None)
                                count += 1
                    for suffix in ("log", "json"):
                        got[f"{name}.{suffix}"] = lp.wait_lines(logs / f"{name}.{suffix}",
                                                                count)
                        assert len(got[f"{name}.{suffix}"]) == count, (kind, name, got)
            found[kind] = got
        yield found


SESSION_ID = re.compile(r"[0-9a-f]{64}")


def _masked(name: str, line: str) -> Any:
    """LINE with its session id masked when it has one (random per connection: 32 bytes
    in lower-case hex)."""
    if name.endswith(".json"):
        doc = json.loads(line)
        key = f"k{SESSION:02d}"
        if doc[key] is not None:
            assert SESSION_ID.fullmatch(doc[key]), doc[key]
            doc[key] = "SID"
        return doc
    fields = line.split(SEP)
    if fields[1 + SESSION] != "-":
        assert SESSION_ID.fullmatch(fields[1 + SESSION]), fields[1 + SESSION]
        fields[1 + SESSION] = "SID"
    return fields


def test_every_line_same_as_envoy(outcomes: dict[str, Lines]) -> None:
    envoy, remora = outcomes["envoy"], outcomes["remora"]
    assert envoy.keys() == remora.keys()
    differ = {}
    for name in envoy:
        for i, (e, r) in enumerate(zip(envoy[name], remora[name], strict=True)):
            if _masked(name, e) != _masked(name, r):
                differ[f"{name}:{i}"] = {"envoy": e, "remora": r}
    assert not differ, json.dumps(differ, indent=1)


def _der(directory: Path) -> bytes:
    return x509.load_pem_x509_certificate(
        (directory / "cert-chain.pem").read_bytes()).public_bytes(serialization.Encoding.DER)


def test_envoys_values_are_what_the_cases_mean(outcomes: dict[str, Lines],
                                               certs: dict[str, Path]) -> None:
    """Envoy's own lines, so that the comparison is not between two empty results."""
    envoy = outcomes["envoy"]
    rich = _der(certs["rich"])
    cert = x509.load_der_x509_certificate(rich)
    # the HTTP/1.1 lines of the rich client on the rich server: two, the same, and the
    # request the codec refused on a connection of its own (DPE) with the same TLS facts
    first, second, refused = envoy["http-rich.log"][0:3]
    assert first == second == refused
    f = dict(zip(["PROTOCOL", *OPERATORS], first.split(SEP), strict=True))
    assert f["DOWNSTREAM_PEER_URI_SAN"] == ",".join(RICH_URIS)
    assert f["DOWNSTREAM_PEER_DNS_SAN"] == ",".join(RICH_DNS)
    assert f["DOWNSTREAM_LOCAL_DNS_SAN"] == ",".join(RICH_DNS)
    assert f["DOWNSTREAM_TLS_VERSION"] == "TLSv1.3"
    assert f["DOWNSTREAM_TLS_CIPHER"].startswith("TLS_")
    assert f["DOWNSTREAM_PEER_FINGERPRINT_256"] == hashlib.sha256(rich).hexdigest()
    assert f["DOWNSTREAM_PEER_FINGERPRINT_1"] == hashlib.sha1(rich).hexdigest()
    assert int(f["DOWNSTREAM_PEER_SERIAL"], 16) == cert.serial_number
    assert f["DOWNSTREAM_PEER_CERT_V_START"] == \
        cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert f["DOWNSTREAM_PEER_CERT_V_END(%s)"] == str(int(cert.not_valid_after_utc.timestamp()))
    assert f["DOWNSTREAM_PEER_CERT"].startswith("-----BEGIN%20CERTIFICATE-----%0A")
    assert "CN=caf\\C3\\A9" in f["DOWNSTREAM_PEER_SUBJECT"]
    tls12 = dict(zip(["PROTOCOL", *OPERATORS], envoy["http-rich.log"][6].split(SEP),
                     strict=True))
    assert tls12["DOWNSTREAM_TLS_VERSION"] == "TLSv1.2"
    assert "-" in tls12["DOWNSTREAM_TLS_CIPHER"]  # the OpenSSL-style name in TLS 1.2
    # no client certificate: the local side's facts only
    none = dict(zip(["PROTOCOL", *OPERATORS], envoy["tcp-istio.log"][3].split(SEP),
                    strict=True))
    assert none["DOWNSTREAM_PEER_URI_SAN"] == "-" and none["DOWNSTREAM_PEER_CERT"] == "-"
    assert none["DOWNSTREAM_LOCAL_URI_SAN"] == "spiffe://cluster.local/ns/demo-to/sa/default"
    assert none["DOWNSTREAM_LOCAL_SUBJECT"] == "-"  # Istio's certificates: empty subject
    assert envoy["tcp-plain.log"] == ["-" + f"{SEP}-" * len(OPERATORS)]
    # a session ID only for TLS 1.2 without tickets; the same one on both requests of a
    # connection (the refused request's connection has its own)
    sessions = [line.split(SEP)[1 + SESSION] for line in envoy["http-istio.log"]]
    assert sessions[:12] == ["-"] * 12 and sessions[15] == "-"
    assert SESSION_ID.fullmatch(sessions[12]) and sessions[12] == sessions[13]
    assert SESSION_ID.fullmatch(sessions[14]) and sessions[14] != sessions[12]
    assert SESSION_ID.fullmatch(envoy["tcp-istio.log"][4].split(SEP)[1 + SESSION])
    plain = json.loads(envoy["http-plain.json"][0])
    assert plain["mixed"] == "v=- uri=-" and plain["k00"] is None
    assert envoy["http-rich.log"][-1].startswith("HTTP/2" + SEP + ",".join(RICH_URIS))
    # through the client Envoy (BoringSSL offers AES128-GCM first): the client's order
    # in TLS 1.3, the server's list in TLS 1.2
    via13 = dict(zip(["PROTOCOL", *OPERATORS], envoy["tcp-istio.log"][-1].split(SEP),
                     strict=True))
    assert via13["DOWNSTREAM_TLS_CIPHER"] == "TLS_AES_128_GCM_SHA256"
    assert via13["DOWNSTREAM_PEER_URI_SAN"] == "spiffe://cluster.local/ns/demo-from/sa/default"
    via12 = dict(zip(["PROTOCOL", *OPERATORS], envoy["tcp-rich.log"][-1].split(SEP),
                     strict=True))
    assert via12["DOWNSTREAM_TLS_VERSION"] == "TLSv1.2"
    assert via12["DOWNSTREAM_TLS_CIPHER"] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert envoy["http-istio.log"][-2] == envoy["http-istio.log"][-1]
    assert envoy["http-istio.log"][-1].split(SEP)[9] == "TLS_AES_128_GCM_SHA256"
