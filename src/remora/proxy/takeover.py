"""Handing a connection from the core's StreamReader to a codec's own asyncio.Protocol.

The core accepts and connects with asyncio streams (the listener filters peek through the
StreamReader); HTTP/1.1, HTTP/2 and tcp_proxy's plain relay then read the socket themselves. The
bytes the StreamReader already buffered, and whether it saw EOF, must go with it: it keeps
them in ``_buffer``/``_eof`` (CPython's asyncio; uvloop uses the same class), which is the
only way to hand a connection over without losing a byte.
"""

from __future__ import annotations

import asyncio
import contextlib


def take_buffered(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """What READER already holds (now removed from it) and whether it saw EOF."""
    buffered = bytes(getattr(reader, "_buffer", b""))
    with contextlib.suppress(AttributeError):
        reader._buffer.clear()  # type: ignore[attr-defined]
    return buffered, bool(getattr(reader, "_eof", False))


def take_over(reader: asyncio.StreamReader, transport: asyncio.BaseTransport,
              protocol: asyncio.BaseProtocol) -> tuple[bytes, bool]:
    """Make PROTOCOL the reader of TRANSPORT (reading resumed if it was paused); returns
    what READER had buffered and whether it saw EOF, for PROTOCOL to process first."""
    buffered, at_eof = take_buffered(reader)
    transport.set_protocol(protocol)
    with contextlib.suppress(Exception):
        if not transport.is_reading():  # type: ignore[attr-defined]
            transport.resume_reading()  # type: ignore[attr-defined]
    return buffered, at_eof
