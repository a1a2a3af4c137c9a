"""A real Envoy and `remora proxy` run on loopback, one after the other or side by side
(each_kind), for the unit parity tests (no root, no namespaces; the netns suites use
tests/proxyharness.py's start_sidecar).

Both get the same bootstrap file and the command line proxyharness.sidecar_argv gives them
everywhere else, so whatever differs in what they do is the proxy's, not the test's. A
proxy counts as started once a listener of its bootstrap accepts a connection, and is
stopped by its PID however the test ends.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tests import proxyharness as ph
from tests.unit.proxy.proxy_helpers import free_port

# the parity tests' HTTP/1.1 backend (echo_backend.py says what each path does), as source
# for ``python3 -c ECHO PORT [--empty-header]``
ECHO = Path(__file__).with_name("echo_backend.py").read_text()
T = TypeVar("T")


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str,
                   timeout: float = 20.0) -> None:
    """Until 127.0.0.1:PORT accepts; fails at once if PROC (which serves it) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def loopback_proxy(kind: str, config: Path, listening: int, *more_listening: int,
                   args: Sequence[str] = ()) -> Iterator[subprocess.Popen[bytes]]:
    """KIND ("envoy" or "remora") running CONFIG (with the extra command-line ARGS), once
    its listeners on 127.0.0.1:LISTENING (and MORE_LISTENING) accept; stopped on leaving.
    Its stderr goes to CONFIG with the suffix .err (the place to look when a parity test
    fails), its stdout nowhere."""
    errors = config.with_suffix(".err")
    with errors.open("wb") as err:
        proc = subprocess.Popen([*ph.sidecar_argv(kind, config), *args],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        try:
            for port in (listening, *more_listening):
                wait_listening(port, proc, kind)
        except AssertionError as e:  # say why it did not start, not only that
            tail = errors.read_text(errors="replace").splitlines()[-15:]
            raise AssertionError(f"{e}; the end of its stderr ({errors}):\n"
                                 + "\n".join(tail)) from None
        yield proc
    finally:
        stop(proc)


def each_kind(story: Callable[[str], T], kinds: Sequence[str] = ph.KINDS) -> dict[str, T]:
    """STORY(kind) for each of KINDS at the same time, each on a thread of its own: what
    each returned, by kind (a story's exception is raised here, the first kind's first,
    once every story has ended and cleaned up). For stories that mostly wait on the
    proxy's timers (drain times, delayed closes, idle timeouts): each proxy is its own
    process on its own ports, so neither sees the other's connections, and the wall time
    is one story's, not two."""
    with ThreadPoolExecutor(len(kinds)) as pool:
        futures = {kind: pool.submit(story, kind) for kind in kinds}
        return {kind: future.result() for kind, future in futures.items()}


@contextmanager
def echo_backend(*flags: str) -> Iterator[int]:
    """The HTTP/1.1 echo backend (echo_backend.py) with FLAGS on a free loopback port,
    once it accepts: its port; stopped on leaving."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", ECHO, str(port), *flags])
    try:
        wait_listening(port, proc, "echo backend")
        yield port
    finally:
        stop(proc)


def thread_server(handle: Callable[[socket.socket], None],
                  family: socket.AddressFamily = socket.AF_INET,
                  host: str = "127.0.0.1", threaded: bool = False) -> socket.socket:
    """A listening socket on HOST, on a port the kernel picks, whose connections a daemon
    thread accepts and passes to HANDLE (closed after it returns): a small upstream for a
    parity test. One connection at a time, or with THREADED each on a thread of its own
    (for proxies that keep upstream connections open while they open others). Closing the
    socket ends the thread."""
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind((host, 0))
    srv.listen(64 if threaded else 16)

    def run(conn: socket.socket) -> None:
        with conn:
            handle(conn)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            if threaded:
                threading.Thread(target=run, args=(conn,), daemon=True).start()
            else:
                run(conn)

    threading.Thread(target=serve, daemon=True).start()
    return srv


def request_heads(conn: socket.socket) -> Iterator[bytes]:
    """The heads of the requests a proxy sends on CONN, a kept-alive upstream connection
    of a parity test's small backend (requests without a body), one at a time as the
    backend answers them, until the proxy closes CONN or it fails."""
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            yield head
    except OSError:
        return


def envoy_validates(bootstrap: dict[str, Any], path: Path) -> tuple[bool, str]:
    """Whether the real Envoy accepts BOOTSTRAP (written to PATH), by `envoy --mode
    validate` (its proto validation and config checks, nothing started), and what it said."""
    path.write_text(json.dumps(bootstrap))
    return ph.envoy_validate(path, level="critical")


def wait_lines(path: Path, count: int, timeout: float = 5.0) -> list[str]:
    """The lines of PATH once there are COUNT of them (a proxy writes an access-log line a
    little after the response), or what is there after TIMEOUT ([] without the file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (
            not path.exists() or len(path.read_text().splitlines()) < count):
        time.sleep(0.05)
    return path.read_text().splitlines() if path.exists() else []


def admin_text(port: int, path: str) -> str:
    """GET PATH from the admin listener on 127.0.0.1:PORT."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return str(r.read().decode())


# what differs between two proxies' (or two runs') bytes without meaning anything: the
# date, the upstream service time, generated request ids, ephemeral ports, body lengths
VOLATILE_MASKS: tuple[tuple[bytes, bytes], ...] = (
    (rb"date: [^\r]*", b"date: D"),
    (rb"x-envoy-upstream-service-time: \d+", b"x-envoy-upstream-service-time: N"),
    (rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", b"UUID"),
    (rb"127\.0\.0\.1:\d+", b"127.0.0.1:P"),
    (rb"content-length: \d+", b"content-length: L"),
)


def exchange_closed(port: int, request: bytes, masks: Sequence[tuple[bytes, bytes]] = (),
                    timeout: float = 5.0, add_headers: bytes = b"") -> bytes:
    """Send REQUEST (an HTTP/1.1 one gets ``Connection: close`` and ADD_HEADERS after its
    request line) to 127.0.0.1:PORT and read until the proxy closes; a reset or a quiet
    TIMEOUT ends the read too. Each (pattern, replacement) of MASKS is then applied, so
    two proxies' answers compare without their dates and timings."""
    line, sep, rest = request.partition(b"\r\n")
    if sep and b"HTTP/1.1" in line:
        request = line + b"\r\nConnection: close\r\n" + add_headers + rest
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    out = b""
    try:
        s.sendall(request)
        while chunk := s.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    finally:
        s.close()
    for pattern, repl in masks:
        out = re.sub(pattern, repl, out)
    return out
