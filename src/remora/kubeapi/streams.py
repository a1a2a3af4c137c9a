"""One port-forwarded stream's way to the pod: a bounded buffer and a writer of its own.

The port-forward tunnel (remora.kubeapi.server) reads the client's SPDY frames one after
the other. If it wrote each data frame to the pod's connection and waited for that write
to drain, a pod that does not read (its socket buffers full) would hold the frame loop,
and with it every other stream of the tunnel. kubelet hands each stream's data to a
copier of its own (pkg/kubelet/cri/streaming/portforward/httpstream.go: one goroutine
per stream pair, io.Copy into the pod's connection), so a stalled connection stalls only
its own copy; a PodStream is that copier. The frame loop only appends to the stream's
buffer, and the stream's own task writes it to the pod and waits for the drain.

The buffer is bounded (MAX_BUFFERED per stream). SPDY/3.1 has per-stream flow control
(WINDOW_UPDATE), but client-go's spdystream neither sends nor honours it, so no stream
can be told to slow down on its own; past the bound the frame loop waits for this
stream, which stalls the tunnel, as spdystream's own frame queues do once full (a
bounded memory is worth more than the other streams' progress at that point).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

MAX_BUFFERED = 16 * 1024 * 1024  # bytes a stream may hold for a pod that does not read


class PodStream:
    """The client's bytes for one data stream, written to the pod's connection once it
    is there (frames that come before it are kept, in order), with end of input as
    write_eof. Only the event loop's thread uses it."""

    def __init__(self, limit: int = MAX_BUFFERED) -> None:
        self.limit = limit
        self.buffered = 0  # bytes put and not yet handed to the pod's transport
        self._chunks: collections.deque[bytes | None] = collections.deque()  # None: EOF
        self._ready = asyncio.Event()  # something to write
        self._room = asyncio.Event()  # below the limit
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def put(self, data: bytes) -> None:
        """Queue DATA for the pod; waits only while this stream holds LIMIT bytes."""
        if self._closed or not data:
            return
        while self.buffered >= self.limit and not self._closed:
            self._room.clear()
            await self._room.wait()
        if self._closed:
            return
        self._chunks.append(data)
        self.buffered += len(data)
        self._ready.set()

    def end(self) -> None:
        """The client's FIN: the pod's connection gets write_eof after what came before."""
        if not self._closed:
            self._chunks.append(None)
            self._ready.set()

    def attach(self, writer: asyncio.StreamWriter) -> None:
        """Start writing to the pod's connection WRITER."""
        self._task = asyncio.ensure_future(self._run(writer))

    async def _run(self, writer: asyncio.StreamWriter) -> None:
        try:
            while not self._closed:
                await self._ready.wait()
                while self._chunks:
                    chunk = self._chunks.popleft()
                    if chunk is None:
                        if writer.can_write_eof():
                            writer.write_eof()
                        continue
                    writer.write(chunk)
                    self.buffered -= len(chunk)
                    await writer.drain()  # this stream's backpressure, and no other's
                    if self.buffered < self.limit:
                        self._room.set()
                self._ready.clear()
        except (ConnectionError, RuntimeError):
            # the pod closed its side (or the transport is closing): what is left is
            # dropped, as kubelet's copy ends on a write error
            self.close()

    def close(self) -> None:
        """Drop what is left and stop writing (the stream was reset, or the pod's
        connection is gone); a put waiting for room returns."""
        self._closed = True
        self._chunks.clear()
        self.buffered = 0
        self._room.set()
        self._ready.set()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
