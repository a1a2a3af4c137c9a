"""``envoy.filters.listener.http_inspector``: is this plaintext connection HTTP/1.x or
HTTP/2 prior knowledge? Sets application_protocols to "http/1.1", "http/1.0" or "h2c".
Skipped on TLS connections, as Envoy does.
https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/http_inspector
"""

from __future__ import annotations

import re
from typing import Any

from remora.proxy.config.strict import Fields
from remora.proxy.listener_filters import PEEK_MAX, AcceptedSocket
from remora.proxy.registry import register

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_REQUEST_LINE = re.compile(rb"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP/1\.([01])$")


def detect(data: bytes) -> str | None:
    """"need_more", a protocol name, or None (not HTTP)."""
    if H2_PREFACE.startswith(data[: len(H2_PREFACE)]):
        return "h2c" if len(data) >= len(H2_PREFACE) else "need_more"
    end = data.find(b"\r\n")
    if end < 0:
        space = data.find(b" ")
        head = data if space < 0 else data[:space]
        if head and not _TOKEN.match(head):
            return None  # the method can already not be a token
        return "need_more" if len(data) < PEEK_MAX else None
    match = _REQUEST_LINE.match(data[:end])
    if match is None:
        return None
    return "http/1.1" if match.group(3) == b"1" else "http/1.0"


class HttpInspector:
    async def on_accept(self, conn: AcceptedSocket) -> bool:
        if conn.facts.transport_protocol not in ("", "raw_buffer"):
            return True
        data = b""
        while True:
            data = await conn.peek(len(data))
            verdict = detect(data)
            if verdict != "need_more" or conn.eof:
                break
        if verdict == "need_more":
            return False  # the peer closed undecided: closed, as Envoy does (remote_close)
        if verdict is not None:
            conn.facts.application_protocols = (str(verdict),)
        return True


@register("listener", "envoy.filters.listener.http_inspector",
          "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector")
def _factory(typed: Fields, _context: Any) -> HttpInspector:
    typed.done()
    return HttpInspector()
