"""The HTTP filter contract inside remora's connection manager.

Envoy's HTTP filters see a request's headers on the way in (decode) and the response's
headers on the way out (encode). remora keeps that shape, reduced to what a sidecar's
filters need: ``decode_headers`` may answer the request itself (``stream.local_reply``) and
return False to stop the chain; ``encode_headers`` may add response headers. The terminal
filter (the router) has ``terminal = True`` and produces the response.
Registered with ``registry.register("http", name, type_url)``; factories get the filter's
typed_config as a ``Fields`` reader and the factory context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from remora.proxy.http.stream import ActiveStream


class HttpFilter(Protocol):
    terminal: bool

    async def decode_headers(self, stream: ActiveStream) -> bool:
        """Return True to continue with the next filter, False once the filter answered."""
        ...


class EncoderFilter(Protocol):
    def encode_headers(self, stream: ActiveStream, status: int,
                       headers: list[tuple[str, str]]) -> None:
        """May append to HEADERS (lower-case names) before they are written downstream."""
        ...
