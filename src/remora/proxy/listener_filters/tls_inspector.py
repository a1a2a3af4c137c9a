"""``envoy.filters.listener.tls_inspector``: SNI and ALPN from a peeked TLS ClientHello;
transport_protocol becomes "tls" (the bytes stay in the socket for the chain).
https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/tls_inspector
The parser is pure: bytes in, a verdict out (RFC 8446 4.1.2, RFC 6066 3, RFC 7301 3.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from remora.proxy.config.strict import Fields
from remora.proxy.listener_filters import PEEK_MAX, AcceptedSocket
from remora.proxy.registry import register

HANDSHAKE = 0x16
CLIENT_HELLO = 0x01
EXT_SERVER_NAME = 0
EXT_ALPN = 16


@dataclass(frozen=True)
class Hello:
    state: str  # "need_more" | "not_tls" | "tls"
    server_name: str | None = None
    alpn: tuple[str, ...] = ()


def parse_client_hello(data: bytes) -> Hello:
    if len(data) < 5:
        # Envoy hands the bytes to BoringSSL, which decides nothing before a whole
        # 5-byte record header (observed on Envoy 1.40: "GET" then FIN is a remote close,
        # "GET /" is tls_not_found).
        return Hello("need_more")
    if data[0] != HANDSHAKE:
        return Hello("not_tls")
    # Collect the handshake bytes from consecutive handshake records.
    body = bytearray()
    pos = 0
    while True:
        if len(data) > pos + 1 and (data[pos] != HANDSHAKE or data[pos + 1] != 3):
            return Hello("not_tls")
        if len(data) < pos + 5:
            return Hello("need_more")
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if len(data) < pos + 5 + length:
            if len(data) >= PEEK_MAX:
                return Hello("not_tls")
            return Hello("need_more")
        body += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if len(body) >= 4:
            if body[0] != CLIENT_HELLO:
                return Hello("not_tls")
            if len(body) >= 4 + int.from_bytes(body[1:4], "big"):
                break
    try:
        return _parse_hello_body(bytes(body[4:4 + int.from_bytes(body[1:4], "big")]))
    except (IndexError, ValueError):
        return Hello("not_tls")


def _parse_hello_body(b: bytes) -> Hello:
    p = 2 + 32  # client_version, random
    p += 1 + b[p]  # session id
    p += 2 + int.from_bytes(b[p:p + 2], "big")  # cipher suites
    p += 1 + b[p]  # compression methods
    if p >= len(b):
        return Hello("tls")
    end = p + 2 + int.from_bytes(b[p:p + 2], "big")
    p += 2
    sni: str | None = None
    alpn: list[str] = []
    while p + 4 <= end:
        etype = int.from_bytes(b[p:p + 2], "big")
        elen = int.from_bytes(b[p + 2:p + 4], "big")
        ext = b[p + 4:p + 4 + elen]
        p += 4 + elen
        if etype == EXT_SERVER_NAME and len(ext) >= 2:
            q = 2
            while q + 3 <= len(ext):
                ntype, nlen = ext[q], int.from_bytes(ext[q + 1:q + 3], "big")
                if ntype == 0:
                    sni = ext[q + 3:q + 3 + nlen].decode("ascii", "replace").lower()
                    break
                q += 3 + nlen
        elif etype == EXT_ALPN and len(ext) >= 2:
            q = 2
            while q < len(ext):
                n = ext[q]
                alpn.append(ext[q + 1:q + 1 + n].decode("ascii", "replace"))
                q += 1 + n
    return Hello("tls", sni, tuple(alpn))


class TlsInspector:
    async def on_accept(self, conn: AcceptedSocket) -> bool:
        data = b""
        while True:
            data = await conn.peek(len(data))
            hello = parse_client_hello(data)
            if hello.state != "need_more" or conn.eof:
                break
        if hello.state == "need_more":
            # The peer closed before a verdict: Envoy closes the connection
            # (downstream_listener_filter_remote_close) rather than guess.
            return False
        if hello.state == "tls":
            conn.facts.transport_protocol = "tls"
            conn.facts.server_name = hello.server_name
            if hello.alpn:
                conn.facts.application_protocols = hello.alpn
        return True


@register("listener", "envoy.filters.listener.tls_inspector",
          "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector")
def _factory(typed: Fields, _context: Any) -> TlsInspector:
    typed.boolean("enable_ja3_fingerprinting")
    typed.boolean("enable_ja4_fingerprinting")
    typed.integer("initial_read_buffer_size")
    typed.done()
    return TlsInspector()
