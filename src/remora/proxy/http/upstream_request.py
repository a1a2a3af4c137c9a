"""Encoding the request that goes upstream (HTTP/1.1), free of I/O decisions."""

from __future__ import annotations

import asyncio
import contextlib

from remora.proxy.http.connection import BUFFER_LIMIT


def encode_request_head(method: str, path: str, headers: list[tuple[str, str]],
                        extra: tuple[str, str] | None) -> bytes:
    parts = [f"{method} {path} HTTP/1.1\r\n"]
    for n, v in headers:
        parts.append(f"{n}: {v}\r\n")
    if extra is not None:
        parts.append(f"{extra[0]}: {extra[1]}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


class BodySink:
    """Forwards a request body to the upstream writer, re-framed as chunks when the
    downstream sent it chunked (Envoy re-encodes; trailers are dropped)."""

    __slots__ = ("chunked", "writer")

    def __init__(self, writer: asyncio.StreamWriter, chunked: bool) -> None:
        self.writer = writer
        self.chunked = chunked

    def data(self, chunk: bytes) -> None:
        if self.chunked:
            self.writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self.writer.write(chunk)

    def end(self) -> None:
        if self.chunked:
            self.writer.write(b"0\r\n\r\n")

    def congested(self) -> bool:
        return self.writer.transport.get_write_buffer_size() > BUFFER_LIMIT

    async def wait(self) -> None:
        """Until the upstream took the body written so far (its drain)."""
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.drain()
