"""Which codec a downstream connection gets (Envoy's HCM codec_type; AUTO decides by ALPN,
then by the client's first bytes). Kept apart from proxy/http2/downstream.py so that a
sidecar that never sees HTTP/2 does not import the HTTP/2 stack (ngh2 and libnghttp2,
20-30 ms of every sidecar's start-up): the connection manager imports that on the first
HTTP/2 connection."""

from __future__ import annotations

import asyncio
from typing import Any

from remora.proxy.interfaces import Downstream

PREFACE_PREFIX = b"PRI * HTTP/2"  # Envoy's Http2::CLIENT_MAGIC_PREFIX


async def choose_http2(downstream: Downstream, codec_type: str, wait: float) -> bool | None:
    """Whether this connection speaks HTTP/2 (codec_type AUTO decides by ALPN, then by
    the first bytes, which stay in the reader for whichever codec takes over); None when
    nothing came for WAIT seconds (the idle_timeout: the connection is closed as idle)."""
    if codec_type == "HTTP2":
        return True
    if codec_type == "HTTP1":
        return False
    alpn = downstream.info.downstream_alpn if downstream.writer.get_extra_info(
        "ssl_object") is not None else None
    if alpn:
        return alpn == "h2"
    reader = downstream.reader
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait if wait > 0 else None
    while True:
        # the bytes the core's StreamReader holds (connection.py's _take_over reads the
        # same buffer); waiting for more uses its own wait (CPython's and uvloop's class)
        buffered = bytes(getattr(reader, "_buffer", b""))
        if len(buffered) >= len(PREFACE_PREFIX) or not PREFACE_PREFIX.startswith(buffered):
            return buffered.startswith(PREFACE_PREFIX)
        if reader.at_eof() or reader.exception() is not None:
            return False
        waiter: Any = getattr(reader, "_wait_for_data", None)
        if waiter is None:
            return False
        timeout = None if deadline is None else deadline - loop.time()
        if timeout is not None and timeout <= 0:
            return None
        try:
            # awaited in this task (not wrapped in one by wait_for: bytes arriving before
            # a wrapping task first ran would find no waiter to wake)
            async with asyncio.timeout(timeout):
                await waiter("choose_http2")
        except TimeoutError:
            return None
