"""Where access-log lines go: files opened by path, writes coalesced per loop turn.

Envoy opens the configured path itself, ``/dev/stdout`` included (it reopens it by path,
so the sidecar's stdout redirection decides where lines land). Lines logged during one
event-loop turn are written with one ``write(2)``; without a running loop a line is
written at once. Every logger of one path shares one sink so lines never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from remora.errors import RemoraError


class Sink:
    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self._pending: list[str] = []
        self._scheduled = False

    def write(self, line: str) -> None:
        self._pending.append(line)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = "".join(self._pending).encode()
        self._pending.clear()
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                continue
            except OSError:
                return  # a closed stdout must not take the proxy down
            view = view[n:]


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


def flush_all() -> None:
    for sink in _SINKS.values():
        with contextlib.suppress(Exception):
            sink.flush()
