"""tcp_proxy's zero-copy data path: splice(2) between the two sockets through a pipe per
direction, so relayed bytes never enter Python (no bytes objects, no copies to user space).

Used when neither side has a TLS transport (the bytes a TLS transport hands us are
plaintext that must be re-encrypted, so they have to pass through user space); otherwise
tcp_proxy keeps its stream relay. Semantics match that relay and Envoy's tcp_proxy:
- half-close: a FIN read from one side becomes shutdown(SHUT_WR) on the other once every
  byte before it was written, and the other direction keeps flowing until it ends too;
- an error on either socket (reset, EPIPE) ends both directions;
- bytes are counted as they are read (Envoy's downstream_cx_rx/tx_bytes_total).

The asyncio transports keep owning their sockets (and close them afterwards); the relay
pauses their reading, takes what their StreamReaders already buffered, and works on dup(2)s
of the file descriptors so the event loop's own registration of the originals is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable

from remora.proxy.takeover import take_buffered

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
PIPE_SIZE = 1 << 20  # Linux's default /proc/sys/fs/pipe-max-size
AVAILABLE = hasattr(os, "splice")


def plain_socket_fd(writer: asyncio.StreamWriter) -> int | None:
    """The socket fd under WRITER's transport, or None when the transport is TLS (or has
    no socket), i.e. when splice(2) cannot carry its bytes."""
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
    """src -> pipe -> dst. Reads only while the pipe is empty, so a slow dst stops the
    reads from src (backpressure without buffering in Python)."""

    __slots__ = ("carry", "count", "done", "dst", "eof", "loop", "on_error", "pending",
                 "pipe_r", "pipe_w", "reading", "relay", "src", "writing")

    def __init__(self, loop: asyncio.AbstractEventLoop, src: int, dst: int, carry: bytes,
                 eof: bool, relay: SpliceRelay, count: Callable[[int], None]) -> None:
        self.loop = loop
        self.src = src
        self.dst = dst
        self.carry = carry
        self.eof = eof
        self.relay = relay
        self.count = count
        self.pending = 0
        self.reading = False
        self.writing = False
        self.done = False
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)

    def start(self) -> None:
        if self.carry:
            self.count(len(self.carry))
        self._flush()

    def _on_readable(self) -> None:
        try:
            n = os.splice(self.src, self.pipe_w, PIPE_SIZE, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError as exc:
            self.relay.fail(exc)
            return
        if n == 0:
            self.eof = True
        else:
            self.pending += n
            self.count(n)
            self.relay.last = time.monotonic()
        self._flush()

    def _flush(self) -> None:
        try:
            while self.carry:
                sent = os.write(self.dst, self.carry)
                self.carry = self.carry[sent:]
            while self.pending:
                self.pending -= os.splice(self.pipe_r, self.dst, self.pending, flags=_FLAGS)
        except BlockingIOError:
            self._set_reading(False)
            self._set_writing(True)
            return
        except OSError as exc:
            self.relay.fail(exc)
            return
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

    def _set_reading(self, on: bool) -> None:
        if on != self.reading:
            self.reading = on
            if on:
                self.loop.add_reader(self.src, self._on_readable)
            else:
                self.loop.remove_reader(self.src)

    def _set_writing(self, on: bool) -> None:
        if on != self.writing:
            self.writing = on
            if on:
                self.loop.add_writer(self.dst, self._flush)
            else:
                self.loop.remove_writer(self.dst)

    def stop(self) -> None:
        self._set_reading(False)
        self._set_writing(False)
        if self.pipe_r >= 0:
            for fd in (self.pipe_r, self.pipe_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.pipe_r = self.pipe_w = -1


def _shutdown_write(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
    finally:
        sock.detach()


class SpliceRelay:
    """Both directions of one tcp_proxy connection over splice(2). ``run`` returns once
    both directions ended (FIN passed on) or one of them failed; ``stop`` ends it early
    (idle timeout, cancellation)."""

    def __init__(self, down_fd: int, up_fd: int) -> None:
        self._down = os.dup(down_fd)
        self._up = os.dup(up_fd)
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
                _Direction(loop, self._down, self._up, down_carry, down_eof, self, self._add_rx),
                _Direction(loop, self._up, self._down, up_carry, up_eof, self, self._add_tx),
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
        for fd in (self._down, self._up):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._down = self._up = -1
