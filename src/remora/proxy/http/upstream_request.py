"""Encoding the request that goes upstream (HTTP/1.1), free of I/O decisions."""

from __future__ import annotations

import contextlib

from remora.proxy.http.codec_state import CLIENT, END_OF_MESSAGE, SEND_BODY
from remora.proxy.http.connection import BUFFER_LIMIT
from remora.proxy.http.pool import PooledConnection


def encode_request_head(method: str, path: str, headers: list[tuple[str, str]],
                        extra: tuple[str, str] | None,
                        framing: tuple[str, str] | None = None) -> bytes:
    """The request line and HEADERS, then the router's EXTRA header, then the codec's
    FRAMING (ActiveStream.upstream_framing), in the order Envoy writes them."""
    # one C-level join over the (name, value) pairs instead of an f-string per header
    lines = "\r\n".join(map(": ".join, headers))
    if extra is not None:
        lines = f"{lines}\r\n{extra[0]}: {extra[1]}" if lines else f"{extra[0]}: {extra[1]}"
    if framing is not None:
        lines = (f"{lines}\r\n{framing[0]}: {framing[1]}" if lines
                 else f"{framing[0]}: {framing[1]}")
    if lines:
        return f"{method} {path} HTTP/1.1\r\n{lines}\r\n\r\n".encode("latin-1")
    return f"{method} {path} HTTP/1.1\r\n\r\n".encode("latin-1")


class BodySink:
    """Forwards a request body to the upstream connection, re-framed as chunks when the
    downstream sent it chunked (Envoy re-encodes; trailers are dropped)."""

    __slots__ = ("chunked", "conn")

    def __init__(self, conn: PooledConnection, chunked: bool) -> None:
        self.conn = conn
        self.chunked = chunked

    def data(self, chunk: bytes) -> None:
        if self.chunked:
            self.conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self.conn.write(chunk)

    def end(self) -> None:
        if self.chunked:
            self.conn.write(b"0\r\n\r\n")
        state = self.conn.state
        if state.client == SEND_BODY:  # not after the exchange failed or switched
            state.process_event(CLIENT, END_OF_MESSAGE)

    def congested(self) -> bool:
        return self.conn.congested(BUFFER_LIMIT)

    async def wait(self) -> None:
        """Until the upstream took the body written so far (its drain)."""
        with contextlib.suppress(ConnectionError, OSError):
            await self.conn.drain()


def expected_timeout_ms(route_timeout: float, per_try_timeout: float, elapsed_ms: int) -> int:
    """The x-envoy-expected-rq-timeout-ms value, 0 for none: Envoy's
    FilterUtility::setTimeoutHeaders. The per-try timeout, else the route's; capped by what
    is left of the route's timeout (ELAPSED_MS is 0 on the first attempt, the time since
    the request started on a retry; 1 once it is all spent). 10000 for a 10 s route on
    its first attempt, checked side by side with Envoy 1.40."""
    global_ms = round(route_timeout * 1000)
    expected = round(per_try_timeout * 1000) or global_ms
    if expected > 0 and global_ms > 0:
        expected = 1 if elapsed_ms >= global_ms else min(expected, global_ms - elapsed_ms)
    return max(expected, 0)
