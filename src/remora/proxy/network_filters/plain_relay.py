"""tcp_proxy's data path between two plain-text sockets: each direction reads what its
source socket holds (up to that side's ``per_connection_buffer_limit_bytes``, 1 MiB by
default, as Envoy bounds a connection's read buffer) straight into a reusable buffer and
writes it to the other socket from the event loop's own callbacks: no asyncio streams, no
bytes object per read, one ``recv_into`` and usually one ``send`` per wake-up.

Why a copy through user space and not splice(2), which this module replaced: measured
with ``scripts/bench_proxy.py`` (bulk upload through the REDIRECT inbound chain,
alternated uploads, docs/benchmarks.md "Bulk TCP: copy beats splice"), splice ran even
with Envoy (x0.89-1.13 over seventeen rounds) while a 1 MiB ``recv_into``/``send`` relay
ran x1.2-1.4, at less sidecar CPU per GiB than Envoy still. The copy leaves the kernel
one contiguous buffer to segment into full-sized skbs and frees the sender's pages at
once; spliced pages stay referenced until the receiver has copied them, and the
receiving end paid more per GiB than the relay saved.

Semantics are those of tcp_proxy's stream relay and Envoy's tcp_proxy:
- half-close: a FIN read from one side becomes shutdown(SHUT_WR) on the other once every
  byte before it was written, and the other direction keeps flowing until it ends too;
- an error on either socket (reset, EPIPE) ends both directions;
- a side is read only while nothing read from it waits to be written, so a slow receiver
  stops the sender (backpressure) with at most one buffer held per direction;
- bytes are counted as they are read (Envoy's downstream_cx_rx/tx_bytes_total).

Buffers come from a per-process free list and are held by a direction only while its
bytes wait for the receiver: an idle connection, or one that moves small messages,
holds none. The asyncio transports keep owning their sockets (and close them
afterwards); the relay pauses their reading, takes what their StreamReaders already
buffered (written first), and works on dup(2)s of the file descriptors so the event
loop's own registration of the originals is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time
from collections.abc import Callable

from remora.proxy.takeover import take_buffered

DEFAULT_LIMIT = 1 << 20  # Envoy's per_connection_buffer_limit_bytes default (1 MiB)
# free buffers kept per size: enough for a few busy connections at once, without keeping
# megabytes after a burst of them (a buffer beyond this is left to the allocator)
POOL_KEEP = 4
_free: dict[int, list[bytearray]] = {}


def _take(size: int) -> bytearray:
    try:
        return _free[size].pop()
    except (KeyError, IndexError):
        return bytearray(size)


def _give(buf: bytearray) -> None:
    spare = _free.setdefault(len(buf), [])
    if len(spare) < POOL_KEEP:
        spare.append(buf)


def plain_socket_fd(writer: asyncio.StreamWriter) -> int | None:
    """The socket fd under WRITER's transport, or None when the transport is TLS (or has
    no socket): TLS bytes must pass through the transport to be decrypted/encrypted."""
    tr = writer.transport
    if tr.is_closing() or tr.get_extra_info("ssl_object") is not None \
            or tr.get_extra_info("sslcontext") is not None:
        return None
    sock = tr.get_extra_info("socket")
    if sock is None:
        return None
    try:
        fd = sock.fileno()
    except (OSError, ValueError):
        return None
    return fd if fd >= 0 else None


class _Direction:
    """src -> buffer -> dst. ``pending`` is what was read and not yet written; src is
    read again only once it is empty."""

    __slots__ = ("buf", "carry", "count", "done", "dst", "eof", "limit", "loop", "pending",
                 "reading", "relay", "src", "writing")

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket,
                 dst: socket.socket, limit: int, carry: bytes, eof: bool, relay: PlainRelay,
                 count: Callable[[int], None]) -> None:
        self.loop = loop
        self.src = src
        self.dst = dst
        self.limit = limit
        self.carry = carry
        self.eof = eof
        self.relay = relay
        self.count = count
        self.buf: bytearray | None = None
        self.pending: memoryview | None = None
        self.reading = False
        self.writing = False
        self.done = False

    def start(self) -> None:
        if self.carry:
            self.count(len(self.carry))
        self._flush()

    def _on_readable(self) -> None:
        buf = _take(self.limit)
        try:
            n = self.src.recv_into(buf)
        except BlockingIOError:
            _give(buf)
            return
        except OSError as exc:
            _give(buf)
            self.relay.fail(exc)
            return
        if n == 0:
            _give(buf)
            self.eof = True
        else:
            self.buf = buf
            self.pending = memoryview(buf)[:n]
            self.count(n)
            self.relay.last = time.monotonic()
        self._flush()

    def _flush(self) -> None:
        try:
            while self.carry:
                sent = self.dst.send(self.carry)
                self.carry = self.carry[sent:]
            while self.pending:
                sent = self.dst.send(self.pending)
                self.pending = self.pending[sent:]
        except BlockingIOError:
            self._set_reading(False)
            self._set_writing(True)
            return
        except OSError as exc:
            self.relay.fail(exc)
            return
        self._release()
        self._set_writing(False)
        if self.eof:
            self._set_reading(False)
            try:
                _shutdown_write(self.dst)
            except OSError as exc:
                self.relay.fail(exc)
                return
            self.done = True
            self.relay.direction_done()
            return
        self._set_reading(True)

    def _release(self) -> None:
        """The buffer back to the free list (its view released first: nothing may
        reach a buffer another direction is about to read into)."""
        if self.pending is not None:
            self.pending.release()
            self.pending = None
        if self.buf is not None:
            _give(self.buf)
            self.buf = None

    def _set_reading(self, on: bool) -> None:
        if on != self.reading:
            self.reading = on
            if on:
                self.loop.add_reader(self.src.fileno(), self._on_readable)
            else:
                self.loop.remove_reader(self.src.fileno())

    def _set_writing(self, on: bool) -> None:
        if on != self.writing:
            self.writing = on
            if on:
                self.loop.add_writer(self.dst.fileno(), self._flush)
            else:
                self.loop.remove_writer(self.dst.fileno())

    def stop(self) -> None:
        self._set_reading(False)
        self._set_writing(False)
        self._release()


def _shutdown_write(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise


class PlainRelay:
    """Both directions of one tcp_proxy connection between plain-text sockets. ``run``
    returns once both directions ended (FIN passed on) or one of them failed; ``stop``
    ends it early (idle timeout, cancellation). DOWN_LIMIT and UP_LIMIT bound one read
    from the downstream and from the upstream socket (the listener's and the cluster's
    per_connection_buffer_limit_bytes)."""

    def __init__(self, down_fd: int, up_fd: int, down_limit: int = DEFAULT_LIMIT,
                 up_limit: int = DEFAULT_LIMIT) -> None:
        self._down = socket.socket(fileno=os.dup(down_fd))
        self._up = socket.socket(fileno=os.dup(up_fd))
        self._down_limit = down_limit
        self._up_limit = up_limit
        self.rx = 0  # downstream -> upstream
        self.tx = 0  # upstream -> downstream
        self.last = time.monotonic()
        self.error: OSError | None = None
        self.timed_out = False
        self._dirs: list[_Direction] = []
        self._finished: asyncio.Future[None] | None = None

    def _add_rx(self, n: int) -> None:
        self.rx += n

    def _add_tx(self, n: int) -> None:
        self.tx += n

    async def run(self, down_reader: asyncio.StreamReader, down_writer: asyncio.StreamWriter,
                  up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        for w in (down_writer, up_writer):
            with contextlib.suppress(Exception):
                w.transport.pause_reading()  # type: ignore[attr-defined]
        down_carry, down_eof = take_buffered(down_reader)
        up_carry, up_eof = take_buffered(up_reader)
        self._finished = loop.create_future()
        try:
            self._dirs = [
                _Direction(loop, self._down, self._up, self._down_limit, down_carry,
                           down_eof, self, self._add_rx),
                _Direction(loop, self._up, self._down, self._up_limit, up_carry, up_eof,
                           self, self._add_tx),
            ]
            for d in self._dirs:
                if not self._finished.done():
                    d.start()
            await self._finished
        finally:
            self._close()

    def direction_done(self) -> None:
        if all(d.done for d in self._dirs) and len(self._dirs) == 2:
            self._finish()

    def fail(self, exc: OSError) -> None:
        self.error = exc
        self._finish()

    def stop(self) -> None:
        self._finish()

    def _finish(self) -> None:
        for d in self._dirs:
            d.stop()
        fut = self._finished
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _close(self) -> None:
        for d in self._dirs:
            d.stop()
        for sock in (self._down, self._up):
            sock.close()
