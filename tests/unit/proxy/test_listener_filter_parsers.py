"""tls_inspector and http_inspector decide from peeked bytes: pure parsers, tested on a
real ClientHello produced by Python's ssl module and on request lines."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct

from remora.proxy.listener_filters.http_inspector import detect
from remora.proxy.listener_filters.original_dst import decode_sockaddr
from remora.proxy.listener_filters.tls_inspector import parse_client_hello


def client_hello(sni: str | None, alpn: list[str] | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the ServerHello
        tls.do_handshake()
    return outgoing.read()


def test_client_hello_sni_and_alpn() -> None:
    hello = client_hello("outbound_.18080_._.srv.default.svc.cluster.local",
                         ["istio-http/1.1", "istio", "http/1.1"])
    got = parse_client_hello(hello)
    assert got.state == "tls"
    assert got.server_name == "outbound_.18080_._.srv.default.svc.cluster.local"
    assert got.alpn == ("istio-http/1.1", "istio", "http/1.1")


def test_client_hello_without_sni_or_alpn_and_partial_data() -> None:
    hello = client_hello(None, None)
    assert parse_client_hello(hello) == parse_client_hello(hello[:])
    got = parse_client_hello(hello)
    assert (got.state, got.server_name, got.alpn) == ("tls", None, ())
    for cut in (1, 4, 5, 40, len(hello) - 1):
        assert parse_client_hello(hello[:cut]).state == "need_more"


def test_not_tls() -> None:
    assert parse_client_hello(b"GET / HTTP/1.1\r\n").state == "not_tls"
    assert parse_client_hello(b"\x16\x09\x00\x00\x00").state == "not_tls"
    assert parse_client_hello(b"").state == "need_more"


def test_http_inspector_detection() -> None:
    assert detect(b"GET /common/sauth HTTP/1.1\r\nHost: x\r\n\r\n") == "http/1.1"
    assert detect(b"POST / HTTP/1.0\r\n") == "http/1.0"
    assert detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == "h2c"
    assert detect(b"PRI * HT") == "need_more"
    assert detect(b"GET /partial") == "need_more"
    assert detect(b"\x16\x03\x01\x02\x00") is None
    assert detect(b"SSH-2.0-OpenSSH_9.6\r\n") is None
    assert detect(b"GET / HTTP/2.0\r\n") is None


def test_decode_sockaddr_v4_and_v6() -> None:
    v4 = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 18080) + \
        socket.inet_aton("10.20.0.77") + b"\0" * 8
    assert decode_sockaddr(v4) == ("10.20.0.77", 18080)
    v6 = struct.pack("=H", socket.AF_INET6) + struct.pack("!H", 443) + b"\0" * 4 + \
        socket.inet_pton(socket.AF_INET6, "fd00::77") + b"\0" * 4
    assert decode_sockaddr(v6) == ("fd00::77", 443)
