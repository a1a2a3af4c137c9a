"""Access-log lines are batched: the lines logged within FLUSH_DELAY leave in one write(2)
(Envoy flushes its file access logs from a timer too); lines still pending when the loop
stops (SIGTERM: the server stops and the process runs flush_all before exiting) are
written then, none lost."""

from __future__ import annotations

import asyncio
import os
import select
import time

import pytest

from remora.proxy.access_log import sink as sink_mod


@pytest.fixture
def pipe_sink(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    r, w = os.pipe()
    os.set_blocking(r, False)
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes | memoryview) -> int:
        if fd == w:
            writes.append(len(data))
        return real_write(fd, data)
    monkeypatch.setattr(sink_mod.os, "write", counting_write)
    s = sink_mod.fd_sink(w, "test-pipe")
    yield s, r, writes
    sink_mod._SINKS.pop(f"<fd{w}>", None)
    os.close(r)
    os.close(w)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


def test_lines_within_the_flush_delay_leave_in_one_write(pipe_sink) -> None:  # type: ignore[no-untyped-def]
    s, r, writes = pipe_sink

    async def main() -> None:
        for i in range(3):
            s.write(f"line {i}\n")
            await asyncio.sleep(0)  # later turns of the loop: still held
        assert _read(r) == b""  # not before the delay is over
        await asyncio.sleep(sink_mod.FLUSH_DELAY * 3)
        assert _read(r) == b"line 0\nline 1\nline 2\n"
        assert writes == [21]
        s.write("line 3\n")
        await asyncio.sleep(sink_mod.FLUSH_DELAY * 3)
        assert _read(r) == b"line 3\n"
        assert len(writes) == 2
    asyncio.run(main())


def test_lines_pending_when_the_loop_stops_are_written_by_flush_all(pipe_sink) -> None:  # type: ignore[no-untyped-def]
    s, r, _ = pipe_sink
    loop = asyncio.new_event_loop()

    def log_and_stop() -> None:
        s.write("last words\n")  # its flush is scheduled for a turn that never runs
        loop.stop()
    loop.call_soon(log_and_stop)
    loop.run_forever()
    loop.close()
    assert _read(r) == b""
    sink_mod.flush_all()  # what remora proxy's process does on the way out
    assert _read(r) == b"last words\n"


def test_without_a_loop_a_line_is_written_at_once(pipe_sink) -> None:  # type: ignore[no-untyped-def]
    s, r, _ = pipe_sink
    s.write("config check\n")
    assert _read(r) == b"config check\n"


def _fill(fd: int) -> bytes:
    """Write to non-blocking FD until the pipe is full; returns what was written."""
    chunk = b"x" * 4096
    written = bytearray()
    while True:
        try:
            n = os.write(fd, chunk)
        except BlockingIOError:
            return bytes(written)
        written += chunk[:n]


def _drain(fd: int) -> bytes:
    out = bytearray()
    while data := _read(fd):
        out += data
    return bytes(out)


def test_a_full_pipe_keeps_lines_in_order_without_blocking_the_loop(pipe_sink) -> None:  # type: ignore[no-untyped-def]
    s, r, _ = pipe_sink
    os.set_blocking(s.fd, False)  # stdout piped to a slow reader, non-blocking

    async def main() -> None:
        filler = _fill(s.fd)
        for i in range(200):
            s.write(f"line {i:03d}\n")
            if i % 50 == 0:
                await asyncio.sleep(0)  # turns go on while the pipe is full
        assert _drain(r) == filler  # the reader catches up
        got = b""
        for _ in range(100):
            await asyncio.sleep(sink_mod.RETRY_DELAY)
            got += _drain(r)
            if got.count(b"\n") == 200:
                break
        assert got == b"".join(b"line %03d\n" % i for i in range(200))
    asyncio.run(main())


def test_flush_all_writes_what_a_full_pipe_held(pipe_sink) -> None:  # type: ignore[no-untyped-def]
    s, r, _ = pipe_sink
    os.set_blocking(s.fd, False)
    loop = asyncio.new_event_loop()
    filler = b""

    def log_while_full() -> None:
        nonlocal filler
        filler = _fill(s.fd)
        s.write("held line\n")
        s.flush()  # cannot write: held for a retry that never runs
        loop.stop()
    loop.call_soon(log_while_full)
    loop.run_forever()
    loop.close()
    assert _drain(r) == filler
    sink_mod.flush_all()  # the pipe has room again: written on the way out
    assert _drain(r) == b"held line\n"


def test_each_loop_in_turn_and_no_loop_between_get_their_lines(pipe_sink) -> None:  # type: ignore[no-untyped-def]
    """The sink remembers the loop it last scheduled a flush on (asking asyncio costs a
    getpid(2) on CPython 3.11): a loop that ended, no loop at all, and a second loop in
    a thread each still get their lines written, one write per flush delay."""
    import threading
    s, r, writes = pipe_sink

    async def turn(tag: str) -> None:
        s.write(f"{tag}1\n")
        s.write(f"{tag}2\n")
        await asyncio.sleep(0)
        s.write(f"{tag}3\n")  # a later turn of the same loop
        await asyncio.sleep(sink_mod.FLUSH_DELAY * 3)

    asyncio.run(turn("a"))
    s.write("none\n")  # between loops: written at once
    asyncio.run(turn("b"))
    worker = threading.Thread(target=lambda: asyncio.run(turn("c")))
    worker.start()
    worker.join()
    assert _read(r) == b"a1\na2\na3\nnone\nb1\nb2\nb3\nc1\nc2\nc3\n"
    assert writes == [9, 5, 9, 9]


def test_lines_held_by_a_loop_that_ended_leave_with_the_next_line(pipe_sink) -> None:  # type: ignore[no-untyped-def]
    """An asyncio.run that ends within the flush delay of its last line leaves that flush
    unrun: the next line, in a new loop or with none, takes the held lines along, in
    order."""
    s, r, writes = pipe_sink

    async def log(tag: str) -> None:
        s.write(f"{tag}\n")

    asyncio.run(log("a"))  # the loop closes before its flush
    assert _read(r) == b""
    asyncio.run(log("b"))  # a new loop: the next line schedules anew
    assert _read(r) == b""

    async def log_and_wait() -> None:
        s.write("c\n")
        await asyncio.sleep(sink_mod.FLUSH_DELAY * 3)
    asyncio.run(log_and_wait())
    assert _read(r) == b"a\nb\nc\n"
    assert writes == [6]
    asyncio.run(log("d"))
    s.write("e\n")  # no loop: at once, with what the ended loop held
    assert _read(r) == b"d\ne\n"


def test_a_batch_to_a_pipe_leaves_in_whole_lines_of_at_most_pipe_buf(pipe_sink) -> None:  # type: ignore[no-untyped-def]
    s, r, writes = pipe_sink
    lines = [f"line {i:04d} " + "x" * 280 + "\n" for i in range(40)]  # ~11.6 KB
    lines.append("y" * 5000 + "\n")  # one line longer than PIPE_BUF: goes alone
    s.pending.extend(lines)
    got = b""
    s.flush()
    while chunk := _read(r):
        got += chunk
    assert got == "".join(lines).encode()
    assert len(writes) > 1
    assert all(n <= select.PIPE_BUF for n in writes[:-1]) and writes[-1] == 5001


def test_forked_writers_on_one_pipe_never_split_a_line() -> None:
    """Two processes (as --concurrency 2's workers) batch lines into one pipe that a slow
    reader drains: every line arrives whole."""
    r, w = os.pipe()
    children = []
    for tag in "ab":
        pid = os.fork()
        if pid == 0:  # a worker: its own sink on the shared pipe
            try:
                os.close(r)
                s = sink_mod.Sink(w, "stdout")
                for batch in range(30):
                    s.pending.extend(f"{tag} {batch:02d} {i:03d} " + tag * 200 + "\n"
                                     for i in range(60))  # ~13 KB per write batch
                    s.flush()
            finally:
                os._exit(0)
        children.append(pid)
    os.close(w)
    data = b""
    with os.fdopen(r, "rb", buffering=0) as f:
        while chunk := f.read(1024):  # a slow reader keeps the pipe full
            data += chunk
            time.sleep(0.0005)
    for pid in children:
        os.waitpid(pid, 0)
    got = data.decode().splitlines()
    assert len(got) == 2 * 30 * 60
    for line in got:
        tag, _, _, body = line.split(" ")
        assert body == tag * 200, line[:80]


def test_the_flush_interval_is_the_command_lines(  # type: ignore[no-untyped-def]
        pipe_sink, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--file-flush-interval-msec`` (set_flush_interval): lines wait that long, not the
    default 10 ms; a buffer of FLUSH_LINES lines goes out at once (Envoy: 64 KiB), and
    the timer then writes the lines after it."""
    s, r, writes = pipe_sink
    monkeypatch.setattr(sink_mod, "FLUSH_DELAY", sink_mod.FLUSH_DELAY)  # restored after
    sink_mod.set_flush_interval(0.2)

    async def main() -> None:
        s.write("a\n")
        await asyncio.sleep(0.05)  # five times the default delay: still held
        assert _read(r) == b""
        await asyncio.sleep(0.3)
        assert _read(r) == b"a\n"
        for i in range(sink_mod.FLUSH_LINES + 1):
            s.write(f"{i}\n")
        # the FLUSH_LINES-th line wrote them all, the one after waits for the timer
        assert _read(r) == b"".join(f"{i}\n".encode() for i in range(sink_mod.FLUSH_LINES))
        assert len(writes) == 2
        await asyncio.sleep(0.3)
        assert _read(r) == f"{sink_mod.FLUSH_LINES}\n".encode()
        assert len(writes) == 3
    asyncio.run(main())
    with pytest.raises(ValueError):
        sink_mod.set_flush_interval(0)
