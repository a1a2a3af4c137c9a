"""Cluster options on the upstream side held to a real Envoy 1.40 on loopback: one
bootstrap, run by `envoy` and by `remora proxy` (concurrency 1 both).

- ``auto_sni`` + ``auto_san_validation`` (HttpProtocolOptions.upstream_http_protocol_options)
  against a TLS upstream whose certificate names backend.local, *.wild.local and
  127.0.0.1: the request's host (port dropped) is the SNI the upstream sees, and a host
  the certificate does not name is 503 UF with Envoy's "verify SAN list" reason (an IP
  host: no SNI, still checked; ``*.`` DNS SANs one label deep; the cluster's SAN
  matchers still apply, their reason's SANs joined by ", ");
  ``override_auto_sni_header`` takes the name from that header when it is not empty.
- endpoint ``load_balancing_weight`` 9/1 under ROUND_ROBIN: Envoy's EDF schedule, so 20
  requests go 18/2 give or take one (each proxy starts its schedule at a random point,
  and the doubles' deadlines drift: a window of 20 picks holds the light host 1 to 3
  times; the exact sequence is in test_upstream_options.py).
- ``upstream_connection_options.tcp_keepalive``: the proxy's upstream socket has the
  keepalive timer at keepalive_time (``ss -o``), not the kernel's 2 h.
Needs the envoy binary (marker `envoy`); no root."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import FILE_LOG, TCP_PROXY, addr, free_port

pytestmark = pytest.mark.envoy

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backend.local")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("backend.local"), x509.DNSName("*.wild.local"),
                x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _http_answer(conn: socket.socket, body: bytes) -> None:
    for _ in lp.request_heads(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)


def _tls_server(cert: Path, key: Path) -> socket.socket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    seen: dict[int, str | None] = {}

    def on_sni(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        seen[id(sslobj)] = name

    ctx.sni_callback = on_sni  # type: ignore[assignment]

    def handle(conn: socket.socket) -> None:
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                _http_answer(tls, json.dumps({"sni": seen.get(id(tls))}).encode())
        except (OSError, ssl.SSLError):
            pass

    return _threaded(handle)


def _threaded(handle: Any) -> socket.socket:
    """lp.thread_server, each connection on its own thread (pooled connections stay
    open) and closed after HANDLE."""
    return lp.thread_server(handle, threaded=True)


def _named(name: bytes) -> socket.socket:
    """Answers NAME once per connection and closes it: every request then takes the
    load balancer's pick (remora reuses an idle pooled connection without asking the
    load balancer, whatever its host; Envoy picks the host first)."""
    def once(conn: socket.socket) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
                     % len(name) + name)

    return _threaded(once)


def _hold(conn: socket.socket) -> None:
    while conn.recv(65536):
        pass


def _bootstrap(ports: dict[str, int], cert: Path, log: Path) -> dict[str, Any]:
    fmt = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_TRANSPORT_FAILURE_REASON%\n"
    routes = [{"match": {"prefix": "/w"}, "route": {"cluster": "weighted"}},
              {"match": {"prefix": "/ov"}, "route": {"cluster": "override"}},
              {"match": {"prefix": "/m"}, "route": {"cluster": "matcher"}},
              {"match": {"prefix": "/"}, "route": {"cluster": "auto"}}]
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": "in",
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER}}],
        "route_config": {"virtual_hosts": [{"name": "vh", "domains": ["*"],
                                            "routes": routes}]},
        "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": str(log),
            "log_format": {"text_format_source": {"inline_string": fmt}}}}]}}
    tcp = {"name": "envoy.filters.network.tcp_proxy",
           "typed_config": {"@type": TCP_PROXY, "stat_prefix": "ka", "cluster": "ka"}}

    def endpoints(name: str, *eps: tuple[int, int]) -> dict[str, Any]:
        return {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": addr("127.0.0.1", port)}, "load_balancing_weight": w}
            for port, w in eps]}]}

    def auto(name: str, *matchers: str, **extra: Any) -> dict[str, Any]:
        validation: dict[str, Any] = {"trusted_ca": {"filename": str(cert)}}
        if matchers:
            validation["match_typed_subject_alt_names"] = [
                {"san_type": "DNS", "matcher": {"exact": m}} for m in matchers]
        return {"name": name, "type": "STATIC", "connect_timeout": "2s",
                "load_assignment": endpoints(name, (ports["tls"], 1)),
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": UPSTREAM_TLS,
                    "common_tls_context": {"validation_context": validation}}},
                "typed_extension_protocol_options": {HTTP_OPTIONS: {
                    "@type": "type.googleapis.com/" + HTTP_OPTIONS,
                    "upstream_http_protocol_options": {
                        "auto_sni": True, "auto_san_validation": True, **extra},
                    "explicit_http_config": {"http_protocol_options": {}}}}}

    clusters = [
        auto("auto"), auto("override", override_auto_sni_header="x-sni"),
        auto("matcher", "nope.local"),
        {"name": "weighted", "type": "STATIC", "connect_timeout": "2s",
         "load_assignment": endpoints("weighted", (ports["heavy"], 9), (ports["light"], 1))},
        {"name": "ka", "type": "STATIC", "connect_timeout": "2s",
         "upstream_connection_options": {"tcp_keepalive": {
             "keepalive_time": 17, "keepalive_interval": 3, "keepalive_probes": 2}},
         "load_assignment": endpoints("ka", (ports["hold"], 1))}]
    return {"admin": {"address": addr("127.0.0.1", ports["admin"])},
            "static_resources": {
                "listeners": [
                    {"name": "http", "address": addr("127.0.0.1", ports["http"]),
                     "filter_chains": [{"filters": [hcm]}]},
                    {"name": "ka", "address": addr("127.0.0.1", ports["ka"]),
                     "filter_chains": [{"filters": [tcp]}]}],
                "clusters": clusters}}


def _get(port: int, path: str, host: str, extra: str = "") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, body = buf.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += s.recv(65536)
        return int(head.split()[1]), body


AUTO_CASES = [("/a", "backend.local:8443", ""), ("/b", "evil.example", ""),
              ("/c", "127.0.0.1:9", ""), ("/d", "[::1]:80", ""),
              ("/x1", "a.wild.local", ""), ("/x2", "a.b.wild.local", ""),
              ("/m", "backend.local", ""),
              ("/ov1", "evil.example", "x-sni: backend.local\r\n"),
              ("/ov2", "backend.local", "x-sni: evil.example\r\n"),
              ("/ov3", "backend.local", "x-sni: \r\n")]


def _keepalive_timer(hold_port: int) -> str:
    """The keepalive timer of the proxy's connection to the holding upstream (ss -o)."""
    out = subprocess.run(["ss", "-tnoH", "state", "established", "dst",
                          f"127.0.0.1:{hold_port}"], capture_output=True, text=True,
                         check=True).stdout
    found = re.search(r"timer:\(keepalive,([^,]+),", out)
    return found.group(1) if found else out


def _seconds(timer: str) -> float:
    m = re.fullmatch(r"(?:(\d+)min)?(?:([\d.]+)sec)?(?:(\d+)ms)?", timer)
    assert m is not None and timer, timer
    return int(m.group(1) or 0) * 60 + float(m.group(2) or 0) + int(m.group(3) or 0) / 1000


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("upstream-options")
    cert, key = _certificate(tmp)
    servers = {"tls": _tls_server(cert, key), "heavy": _named(b"heavy"),
               "light": _named(b"light"), "hold": _threaded(_hold)}
    found: dict[str, Any] = {}
    try:
        for kind in ph.KINDS:
            ports = {n: int(s.getsockname()[1]) for n, s in servers.items()}
            ports.update({n: free_port() for n in ("http", "ka", "admin")})
            log, cfg = tmp / f"{kind}.log", tmp / f"{kind}.json"
            cfg.write_text(json.dumps(_bootstrap(ports, cert, log)))
            with lp.loopback_proxy(kind, cfg, ports["http"]):
                auto = [_get(ports["http"], *case) for case in AUTO_CASES]
                weighted = [_get(ports["http"], "/w", "x")[1] for _ in range(20)]
                with socket.create_connection(("127.0.0.1", ports["ka"]), timeout=5):
                    time.sleep(0.5)
                    timer = _keepalive_timer(ports["hold"])
                lines = lp.wait_lines(log, len(AUTO_CASES) + 20)
            found[kind] = {"auto": auto, "weighted": weighted, "timer": timer,
                           "log": [ln for ln in lines if not ln.startswith("/w ")]}
        yield found
    finally:
        for s in servers.values():
            s.close()


def test_auto_sni_and_san_validation_as_envoy(outcomes: dict[str, Any]) -> None:
    envoy = outcomes["envoy"]
    statuses = [(case[0], status)
                for case, (status, _) in zip(AUTO_CASES, envoy["auto"], strict=True)]
    assert statuses == [("/a", 200), ("/b", 503), ("/c", 200), ("/d", 503), ("/x1", 200),
                        ("/x2", 503), ("/m", 503), ("/ov1", 200), ("/ov2", 503),
                        ("/ov3", 200)]
    assert json.loads(envoy["auto"][0][1]) == {"sni": "backend.local"}
    # (the access log writes the reason's spaces as underscores)
    assert ("verify_SAN_list,_expected_SANs:_[evil.example],_certificate_SANs:_"
            "[backend.local,_*.wild.local,_127.0.0.1]") in envoy["log"][1]
    # the SAN list passed, the cluster's match_typed_subject_alt_names still apply
    assert "SAN_matcher,_certificate_SANs_are_[backend.local,_*.wild.local,_127.0.0.1]" \
        in envoy["log"][6]
    assert outcomes["remora"]["auto"] == envoy["auto"]
    assert outcomes["remora"]["log"] == envoy["log"]


def test_weighted_round_robin_as_envoy(outcomes: dict[str, Any]) -> None:
    for kind in ph.KINDS:
        light = outcomes[kind]["weighted"].count(b"light")
        assert 1 <= light <= 3, (kind, outcomes[kind]["weighted"])


def test_tcp_keepalive_options_as_envoy(outcomes: dict[str, Any]) -> None:
    for kind in ph.KINDS:
        assert 10 < _seconds(outcomes[kind]["timer"]) <= 17, (kind, outcomes[kind]["timer"])
