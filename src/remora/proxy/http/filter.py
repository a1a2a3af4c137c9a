"""The HTTP filter contract inside remora's connection manager, and the typed callbacks a
filter (and the router) may use from a stream and its connection.

Envoy's HTTP filters see a request's headers on the way in (decode) and the response's
headers on the way out (encode). remora keeps that shape, reduced to what a sidecar's
filters need: ``decode_headers`` may answer the request itself (``stream.local_reply``) and
return False to stop the chain; ``encode_headers`` may add response headers. The terminal
filter (the router) has ``terminal = True`` and produces the response.
Registered with ``registry.register("http", name, type_url)``; factories get the filter's
typed_config as a ``Fields`` reader and the factory context.

``HttpStream`` and ``StreamCallbacks`` name exactly what a filter may touch, as Envoy's
``envoy/http/filter.h`` StreamDecoderFilterCallbacks does: the decoded request, the
stream's StreamInfo and route, the encode_* calls that write the response, and from the
connection (``stream.conn``) its loop, config, downstream facts, flow control and the
cancellation the connection uses to interrupt a stream. Nothing in it is HTTP/1-specific:
an HTTP/1.1 stream (stream.ActiveStream on connection.Http1Connection) and an HTTP/2
stream implement the same two Protocols, and the router serves both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from remora.proxy.http.codec import Request
    from remora.proxy.http.hcm_config import HcmConfig
    from remora.proxy.http.header_mutation import HeaderMutations
    from remora.proxy.http.route_config import Route
    from remora.proxy.interfaces import Downstream
    from remora.proxy.stream_info import StreamInfo


class StreamCallbacks(Protocol):
    """What a stream's connection offers to the filters and the router."""

    loop: asyncio.AbstractEventLoop
    cfg: HcmConfig
    downstream: Downstream  # its ``facts`` pick the upstream pool key
    # loop time of the last byte moved for the active stream (stream_idle_timeout)
    last_activity: float

    @property
    def write_paused(self) -> bool:
        """The downstream is above its high-water mark (read-only: an HTTP/2 stream's
        StreamConn computes it)."""
        ...

    def cancel_active(self, reason: str) -> None:
        """Interrupt the stream being served: its task is cancelled with REASON ("timeout",
        "per_try", "stream_idle", "dc", "codec"); a stream whose response is complete is
        no longer interrupted."""
        ...

    def take_cancel(self) -> str | None:
        """After a CancelledError: the reason if the connection caused it (and the
        cancellation undone), None for a real cancellation from outside."""
        ...

    def body_error(self) -> bool:
        """The request's body turned out malformed (the codec refused it)."""
        ...

    def resume_reading(self) -> None:
        """Read the request body again (after the router attached its sink)."""
        ...

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call CALLBACK once the downstream is below its low-water mark again (or gone);
        used while ``write_paused`` to stop reading the upstream meanwhile."""
        ...

    async def drain(self) -> None:
        """Wait while the downstream is above its high-water mark."""
        ...


class HttpStream(Protocol):
    """One request/response exchange as the filters and the router see it."""

    @property
    def conn(self) -> StreamCallbacks:
        """The stream's connection (read-only, so each codec's own connection class fits)."""
        ...

    req: Request
    info: StreamInfo
    route: Route | None
    method: str
    path: str
    head: bool  # a HEAD request: the response has no body
    authority: str  # the request's host (Host / :authority), as it goes upstream
    upstream_headers: list[tuple[str, str]]
    upstream_chunked: bool  # the forwarded head says transfer-encoding: chunked
    # the framing header the HTTP/1.1 upstream codec writes last (transfer-encoding:
    # chunked, content-length: 0 for a bodiless request whose method may have a body)
    upstream_framing: tuple[str, str] | None
    response_started: bool
    response_complete: bool
    closing: bool  # the connection closes after this exchange

    def prepare(self) -> bool: ...

    def encode_headers(self, status: int, headers: list[tuple[str, str]], *, chunked: bool,
                       service_time_ms: int | None = None,
                       tail: tuple[tuple[str, str], ...] = (),
                       mutations: HeaderMutations | None = None) -> None: ...

    def encode_data(self, data: bytes) -> None: ...

    def encode_end(self) -> None: ...

    def encode_trailers(self, trailers: list[tuple[str, str]]) -> None:
        """End the response with TRAILERS (an HTTP/1.1 downstream drops them)."""
        ...

    def flush(self) -> None: ...

    def local_reply(self, status: int, body: bytes, details: str, flag: str | None = None,
                    close: bool = False,
                    headers: list[tuple[str, str]] | None = None,
                    grpc_status: int | None = None) -> bool: ...

    def interrupted(self, reason: str) -> None: ...


class HttpFilter(Protocol):
    terminal: bool

    async def decode_headers(self, stream: HttpStream) -> bool:
        """Return True to continue with the next filter, False once the filter answered."""
        ...


class EncoderFilter(Protocol):
    def encode_headers(self, stream: HttpStream, status: int,
                       headers: list[tuple[str, str]]) -> None:
        """May append to HEADERS (lower-case names) before they are written downstream."""
        ...
