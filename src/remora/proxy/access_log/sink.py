"""Where access-log lines go: files opened by path, writes coalesced over a few milliseconds.

Envoy opens the configured path itself, ``/dev/stdout`` included (it reopens it by path,
so the sidecar's stdout redirection decides where lines land). Envoy buffers a file
access log's lines and writes them from a flush timer (``--file-flush-interval-msec``) or
once 64 KiB are buffered; remora writes the lines logged within FLUSH_DELAY with one
``write(2)`` (one per loop turn cost a flush call and a write per request at low
concurrency); without a running loop a line is written at once; what a full
non-blocking fd does not take is kept in order and retried shortly (the event loop never
waits on it), and ``flush_all`` (the process on its way out, SIGTERM included) writes
everything still held. Every logger of one path shares one sink so lines never
interleave. Forked workers (``--concurrency``) each have their own sink on the same file:
a regular file opened O_APPEND takes each write whole, but a pipe (``/dev/stdout`` piped
to a log collector) only keeps writes of up to PIPE_BUF bytes in one piece, so there the
batch is written in pieces of at most PIPE_BUF that end at a line's end (POSIX write(2):
writes of at most PIPE_BUF bytes to a pipe are not interleaved with other writers'); a
single line longer than PIPE_BUF cannot be kept whole and goes alone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import stat
import threading
from collections.abc import Callable

from remora.errors import RemoraError

# Lines leave at most this long after the first of them was logged: Envoy's
# --file-flush-interval-msec (`remora proxy` takes the same flag, set_flush_interval).
# Envoy's default is 10 s; remora's is 10 ms, so a lab user reading a sidecar's log sees a
# request's line at once. Envoy also flushes once 64 KiB are buffered (its access log
# file's min_flush_size); remora once FLUSH_LINES lines are (64 KiB of 256-byte lines:
# a count, not bytes, costs nothing per line), which matters only with a long interval.
FLUSH_DELAY = 0.01
FLUSH_LINES = 256
RETRY_DELAY = 0.01  # a full non-blocking pipe (stdout to a slow reader): retry after
EXIT_WAIT = 5.0  # without a loop (flush_all on the way out): wait this long at most


def _true() -> bool:
    return True


class Sink:
    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        # a pipe or socket: write at most this many bytes at a time, cut at a line's end
        self.atomic_limit = _atomic_limit(fd)
        self._pending: list[str] = []
        self._held = b""  # bytes a full non-blocking fd did not take yet
        self.scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None  # see schedule
        self._thread = 0
        # whether the loop the pending flush was scheduled on was closed before it ran (an
        # asyncio.run that ended within FLUSH_DELAY of a line): then the next line
        # schedules anew and the held lines go with it, in order (that loop's is_closed)
        self.loop_closed: Callable[[], bool] = _true

    def write(self, line: str) -> None:
        pending = self._pending
        pending.append(line)
        if not self.scheduled or self.loop_closed():
            self.schedule()
        elif len(pending) >= FLUSH_LINES:
            self.write_out()

    def schedule(self) -> None:
        """Flush FLUSH_DELAY from now (at once without a running loop); called by the
        first line after a flush (``write``, ``FileAccessLog.log``)."""
        # The loop the last flush was scheduled on, while it still runs in this thread, is
        # the running loop: asking asyncio for it costs a getpid(2) per call on CPython
        # 3.11 (its fork check), once per flush (forked workers forget it).
        loop = self._loop
        if loop is None or not loop.is_running() or self._thread != threading.get_ident():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._loop = loop
            self._thread = threading.get_ident()
            self.loop_closed = loop.is_closed
        self.scheduled = True
        loop.call_later(FLUSH_DELAY, self.flush)

    @property
    def pending(self) -> list[str]:
        """The lines since the last flush, in order (one list for the sink's life: ``flush``
        empties it in place, so a logger may hold it and append to it)."""
        return self._pending

    def flush(self) -> None:
        self.scheduled = False
        self.write_out()

    def write_out(self) -> None:
        """Write what is pending now; a scheduled flush stays scheduled (it writes the
        lines logged after these)."""
        held = self._held
        if self._pending:
            data = "".join(self._pending).encode()
            self._pending.clear()
            if held:
                data = held + data
        else:
            data = held
        self._held = b""
        limit = self.atomic_limit
        if limit and len(data) > limit:
            self._write_pieces(data, limit)
            return
        while data:
            try:
                n = os.write(self.fd, data)
            except BlockingIOError:
                # a non-blocking fd that is full (stdout piped to a slow reader): keep the
                # rest, in order, and never spin the event loop waiting for it
                if not self._wait_writable():
                    self._held = data
                    return
                continue
            except OSError:
                return  # a closed stdout must not take the proxy down
            if n == len(data):
                return  # all of it (the usual case): no copy of what was written
            data = data[n:]

    def _write_pieces(self, data: bytes, limit: int) -> None:
        """DATA to a pipe in pieces of at most LIMIT bytes, each ending at a line's end,
        so another process's lines never land inside one of ours."""
        start, end = 0, len(data)
        while start < end:
            stop = start + limit
            if stop < end:
                cut = data.rfind(b"\n", start, stop)
                stop = cut + 1 if cut >= start else data.find(b"\n", stop) + 1 or end
            else:
                stop = end
            try:
                n = os.write(self.fd, data[start:stop])
            except BlockingIOError:
                if not self._wait_writable():
                    self._held = data[start:]
                    return
                continue
            except OSError:
                return
            start += n

    def _wait_writable(self) -> bool:
        """In the event loop: retry in RETRY_DELAY (False). Without one (the process is
        on its way out): wait until the fd takes bytes again, EXIT_WAIT at most."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _, writable, _ = select.select([], [self.fd], [], EXIT_WAIT)
            return bool(writable)
        if not self.scheduled:
            self.scheduled = True
            self._loop, self._thread = loop, threading.get_ident()
            self.loop_closed = loop.is_closed
            loop.call_later(RETRY_DELAY, self.flush)
        return False


def set_flush_interval(seconds: float) -> None:
    """How long lines wait for their write at most (``--file-flush-interval-msec``)."""
    if seconds <= 0:
        raise ValueError("the flush interval must be positive")
    global FLUSH_DELAY
    FLUSH_DELAY = seconds


def _atomic_limit(fd: int) -> int:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return 0
    return select.PIPE_BUF if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else 0


_SINKS: dict[str, Sink] = {}


def open_sink(path: str) -> Sink:
    sink = _SINKS.get(path)
    if sink is None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise RemoraError(f"cannot open access log {path}: {exc.strerror}",
                              "fix the path or its permissions") from exc
        sink = _SINKS[path] = Sink(fd, path)
    return sink


def fd_sink(fd: int, name: str) -> Sink:
    key = f"<fd{fd}>"
    sink = _SINKS.get(key)
    if sink is None:
        sink = _SINKS[key] = Sink(fd, name)
    return sink


def _forget_loops() -> None:
    """In a forked child: the parent's loop is not this process's running loop, and the
    lines it holds are the parent's to write."""
    for sink in _SINKS.values():
        sink._loop = None
        sink.loop_closed = _true
        sink.scheduled = False
        sink._pending.clear()


os.register_at_fork(after_in_child=_forget_loops)


def flush_all() -> None:
    for sink in _SINKS.values():
        with contextlib.suppress(Exception):
            sink.flush()
