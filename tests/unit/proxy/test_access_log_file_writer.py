"""An access log in a regular file is written by the process's writer thread, never by the
event loop (Envoy's AccessLogFileImpl writes from its flush thread the same way): a
write(2) to a file that blocks (an ext4 journal commit, the appended page under writeback)
must not hold the requests in flight. Lines still leave in order, none lost: at the
process's exit (flush_all), outside a loop, and in a forked worker."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remora.proxy.access_log import sink as sink_mod


@pytest.fixture
def file_sink(tmp_path: Path) -> Iterator[tuple[sink_mod.Sink, Path]]:
    path = tmp_path / "access.log"
    s = sink_mod.open_sink(str(path))
    assert s.regular_file
    yield s, path
    sink_mod._WRITER.drain(5.0)
    sink_mod._SINKS.pop(str(path), None)
    os.close(s.fd)


def test_a_file_is_written_by_the_writer_thread_in_order(
        file_sink: tuple[sink_mod.Sink, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    s, path = file_sink
    writers: set[int] = set()
    real = sink_mod._write_all

    def recording(fd: int, data: bytes) -> None:
        writers.add(threading.get_ident())
        real(fd, data)
    monkeypatch.setattr(sink_mod, "_write_all", recording)

    async def main() -> int:
        for i in range(50):
            s.write(f"line {i}\n")
            if i % 10 == 9:
                await asyncio.sleep(sink_mod.FLUSH_DELAY * 2)  # several batches
        return threading.get_ident()
    loop_thread = asyncio.run(main())
    assert sink_mod._WRITER.drain(5.0)
    assert path.read_text() == "".join(f"line {i}\n" for i in range(50))
    assert writers and loop_thread not in writers


def test_a_blocked_file_write_does_not_stall_the_loop(
        file_sink: tuple[sink_mod.Sink, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    s, path = file_sink
    real = sink_mod._write_all
    released = threading.Event()

    def blocked(fd: int, data: bytes) -> None:
        released.wait(5.0)  # a write(2) stuck behind the filesystem
        real(fd, data)
    monkeypatch.setattr(sink_mod, "_write_all", blocked)

    async def main() -> tuple[int, float]:
        s.write("first\n")
        await asyncio.sleep(sink_mod.FLUSH_DELAY * 2)  # its flush has run: handed over
        turns, started = 0, time.monotonic()
        while time.monotonic() - started < 0.2:  # the loop keeps turning meanwhile
            await asyncio.sleep(0.005)
            turns += 1
        s.write("second\n")
        await asyncio.sleep(sink_mod.FLUSH_DELAY * 2)
        return turns, time.monotonic() - started
    turns, elapsed = asyncio.run(main())
    assert turns >= 10 and elapsed < 1.0
    assert path.read_text() == ""  # the thread is still stuck on the first batch
    released.set()
    assert sink_mod._WRITER.drain(5.0)
    assert path.read_text() == "first\nsecond\n"


def test_flush_all_writes_and_waits_for_the_thread(
        file_sink: tuple[sink_mod.Sink, Path]) -> None:
    s, path = file_sink
    loop = asyncio.new_event_loop()

    def log_and_stop() -> None:
        s.write("last words\n")  # its flush is scheduled for a turn that never runs
        loop.stop()
    loop.call_soon(log_and_stop)
    loop.run_forever()
    loop.close()
    assert path.read_text() == ""
    sink_mod.flush_all()  # what remora proxy's process does on the way out
    assert path.read_text() == "last words\n"  # written when flush_all returns


def test_without_a_loop_a_line_is_in_the_file_when_write_returns(
        file_sink: tuple[sink_mod.Sink, Path]) -> None:
    s, path = file_sink
    s.write("config check\n")
    assert path.read_text() == "config check\n"


def test_a_forked_worker_has_its_own_writer(file_sink: tuple[sink_mod.Sink, Path]) -> None:
    """The writer thread does not survive fork(2) (--concurrency N forks its workers after
    lines may have been written): the child starts its own and its lines arrive."""
    s, path = file_sink
    s.write("parent before\n")  # starts the parent's writer thread
    pid = os.fork()
    if pid == 0:
        try:
            async def child() -> None:
                s.write("child\n")
                await asyncio.sleep(sink_mod.FLUSH_DELAY * 2)
            asyncio.run(child())
            sink_mod.flush_all()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    s.write("parent after\n")
    assert path.read_text().splitlines() == ["parent before", "child", "parent after"]
