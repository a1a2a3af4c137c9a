"""``interfaces.Downstream``: one accepted connection after its filter chain is chosen."""

from __future__ import annotations

import asyncio
import contextlib

from remora.proxy.interfaces import ConnectionFacts, DrainDecision
from remora.proxy.stream_info import StreamInfo


class DownstreamConnection:
    __slots__ = ("buffer_limit", "closed", "drain", "facts", "info", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 facts: ConnectionFacts, info: StreamInfo, drain: DrainDecision,
                 buffer_limit: int) -> None:
        self.buffer_limit = buffer_limit
        self.drain = drain
        self.reader = reader
        self.writer = writer
        self.facts = facts
        self.info = info
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self.writer.close()
