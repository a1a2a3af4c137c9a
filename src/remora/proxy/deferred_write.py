"""Socket writes deferred to the end of the event loop's turn, as Envoy makes them.

Envoy's ``Network::ConnectionImpl::write()`` moves the bytes into the connection's write
buffer and *activates* the write event; the ``send`` happens when the dispatcher runs that
event, after the callbacks of the current turn (source/common/network/connection_impl.cc).
uvloop writes eagerly instead: ``transport.write()`` calls ``uv_try_write`` right away when
nothing is queued. For a proxy at 16 connections that interleaves every response's
``write(2)`` with the Python work of the next request, and each of those writes wakes the
peer (wrk, the app) that went back to sleep in between; on a VM each wake-up is an IPI.
Measured with ``scripts/bench_proxy.py`` (one sidecar, 16 connections): 146 -> 104 µs of
CPU per request, most of it in the kernel's ``sock_def_readable`` wake-up path
(docs/benchmarks.md, 2026-12-04).

A ``DeferredOutput`` holds one transport's bytes of the current turn; the loop's
``WriteBatch`` writes every output queued in the turn from one ``call_soon`` callback, which
runs after the I/O callbacks that queued them. Order on a transport is kept because every
write to it goes through its output; ``flush()`` before closing (or ending) the transport.
A large write (or a turn's bytes above ``DEFER_LIMIT``) goes out at once, so flow control
(``pause_writing``) still sees big bodies when they are written, not a turn later.
The HTTP/2 connections (proxy/http2) join the same batch with ``WriteBatch.defer``: their
codec serialises the frames of every stream that moved in the turn when the batch flushes
them, one write per connection, never eagerly.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol

from remora.proxy.stats import Counter

# what one output holds for the turn's end at most; beyond it the bytes are written at once
# (a small response is one or two hundred bytes; one uvloop read is at most 256 KiB)
DEFER_LIMIT = 64 * 1024


class Flushable(Protocol):
    """What the batch flushes at the turn's end: a ``DeferredOutput``, or a codec that
    serialises its frames then (the HTTP/2 connections, ``WriteBatch.defer``)."""

    def flush(self) -> None: ...


class WriteBatch:
    """The outputs with bytes queued in this loop turn, written by one callback.

    The turn's first write goes out at once: with one connection busy (one request per
    turn) an eager write lets the peer work while this process finishes the request, and
    nothing is gained by waiting; a second write in the same turn means several requests
    are being served, and from there on the turn's writes wait for its end."""

    __slots__ = ("__weakref__", "_call_soon", "_dirty", "_due", "_run_bound", "_wrote")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._call_soon = loop.call_soon
        self._run_bound = self._run  # bound once, not on every turn that writes
        self._dirty: list[Flushable] = []
        self._wrote = False  # a write went out in this turn
        self._due = False  # the end-of-turn call is due

    def eager(self) -> bool:
        """Whether this write may go out at once (the turn's first)."""
        if self._wrote:
            return False
        self._wrote = True
        if not self._due:
            self._due = True
            self._call_soon(self._run_bound)
        return True

    def add(self, out: Flushable) -> None:
        self._dirty.append(out)

    def defer(self, out: Flushable, *, hold: bool = False) -> None:
        """OUT flushed at the turn's end, never at once: an HTTP/2 connection whose
        frames of every stream that moved in the turn go out in one write (as Envoy's
        codec writes once per dispatch). HOLD (a downstream HTTP/2 connection: the turn
        serves a multiplexing client's streams) makes the turn's HTTP/1.1 writes wait
        for its end as well, as after a second write: the upstream requests of the
        streams a read brought go out together, after the streams' first steps. Without
        it (an HTTP/2 upstream, which defers a WINDOW_UPDATE in the turn its response
        arrives) the turn's first HTTP/1.1 write, the client's response, still goes out
        at once."""
        if hold:
            self._wrote = True
        if not self._due:
            self._due = True
            self._call_soon(self._run_bound)
        self._dirty.append(out)

    def _run(self) -> None:
        self._wrote = self._due = False
        dirty = self._dirty
        if dirty:
            self._dirty = []
            for out in dirty:
                out.flush()


_BATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WriteBatch] = (
    weakref.WeakKeyDictionary())


def batch_for(loop: asyncio.AbstractEventLoop) -> WriteBatch:
    """LOOP's batch (one per loop: a forked worker makes its own on first use)."""
    batch = _BATCHES.get(loop)
    if batch is None:
        batch = _BATCHES[loop] = WriteBatch(loop)
    return batch


_UNCOUNTED = Counter("")  # the bytes of an output given no counter: never folded, never read


class DeferredOutput:
    """One transport's writes of the current turn, in order."""

    __slots__ = ("_batch", "_chunks", "_size", "transport", "tx")

    def __init__(self, transport: asyncio.WriteTransport, batch: WriteBatch,
                 tx: Counter | None = None) -> None:
        self.transport = transport
        self._batch = batch
        self._chunks: list[bytes] | None = None
        self._size = 0
        # the connection's bytes-sent counter (Envoy's downstream_cx_tx_bytes_total /
        # upstream_cx_tx_bytes_total), counted as the bytes go to the transport, as Envoy
        # counts them: once per transport write, not per ``write`` (the queued ones by
        # their size at the flush); an output without one counts into a handle nobody reads
        self.tx = tx if tx is not None else _UNCOUNTED

    def write(self, data: bytes) -> None:
        chunks = self._chunks
        if chunks is None:
            if len(data) > DEFER_LIMIT or self._batch.eager():
                self.tx.pending += len(data)  # Counter.inc without the call
                self.transport.write(data)
                return
            self._chunks = [data]
            self._size = len(data)
            self._batch.add(self)
            return
        chunks.append(data)
        self._size += len(data)
        if self._size > DEFER_LIMIT:
            self.flush()

    @property
    def pending(self) -> int:
        """Bytes queued and not yet handed to the transport."""
        return self._size if self._chunks is not None else 0

    def flush(self) -> None:
        """Hand the queued bytes to the transport now (before close or write_eof, and at
        the turn's end). A transport already closing (the peer reset it) drops them, as
        Envoy's closed connection drops its write buffer."""
        chunks = self._chunks
        if chunks is None:
            return
        self._chunks = None
        t = self.transport
        if not t.is_closing():
            self.tx.pending += self._size
            t.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
