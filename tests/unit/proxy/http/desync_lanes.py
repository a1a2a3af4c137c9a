"""Lanes for the request-side differential fuzz (issue 10, "Held to Envoy"): one Envoy and one
`remora proxy` for the whole run, each with LANES listeners, each listener routed to a
cluster of its own whose one endpoint is a recording backend of its own. A lane carries one
exchange at a time, so everything its backend receives while an exchange runs belongs to
that exchange; the lanes run side by side, and one case goes to both proxies' lane at once.

An exchange ends on evidence, never after a fixed sleep:

* the proxy closed the client connection (FIN or reset), or sent a complete response with
  ``connection: close`` (it reads nothing more; Envoy then waits up to its
  delayed_close_timeout, 1 s, for the client to close first, so the client does), and
  the lane's backend is settled: every upstream connection is closed or stands at a
  request boundary with nothing of a next request read or waiting in its receive queue,
  and no connection waits to be accepted (a proxy writes to its upstream before it
  answers the client, and loopback delivers a write at once);
* or the connection stays open and nothing at all happens for QUIET seconds, neither on
  the client connection nor at the backend (every byte the backend reads and every
  connection it accepts or loses wakes the client's select). This is the one way to see
  that a proxy is waiting for input the mutated request never sends (a body shorter than
  its content-length, a head without its blank line); QUIET restarts on any activity, so a
  pipelined second request is waited for as long as the first one keeps things moving.
  The client then closes, and the backend must settle (a proxy drops an upstream request
  whose client went away: Envoy resets the stream, which closes the HTTP/1.1 connection).

HANG bounds all of it: an exchange that neither ends nor settles within HANG seconds is a
hang, reported with its input. A backend that reads bytes it cannot parse as HTTP/1.1
framed as its head says records an error for the exchange (the proxy sent them).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import select
import socket
import termios
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.unit.proxy.http import desync_harness as dh

QUIET = float(os.environ.get("REMORA_DESYNC_QUIET", "0.5"))
HANG = float(os.environ.get("REMORA_DESYNC_HANG", "15"))

# A request as the backend framed it: (kind, method, target, headers, body). kind is
# "request" (complete by its framing), "head" (the head arrived, the body it announced did
# not before the connection closed), "tunnel" (bytes after a 101: method and target ""),
# "fragment" (bytes that never made a head before the connection closed).
Framed = tuple[str, str, str, tuple[tuple[str, str], ...], bytes]


class _Incomplete(Exception):
    """The peer closed inside a request."""


class _Conn:
    def __init__(self, backend: LaneBackend, sock: socket.socket) -> None:
        self.backend = backend
        self.sock = sock
        self.buf = b""
        self.head: tuple[str, str, tuple[tuple[str, str], ...]] | None = None
        self.closed = False
        self.tunnel = False

    def recv(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        with self.backend.lock:
            if data:
                self.buf += data
            else:
                self.closed = True
        self.backend.wake()
        return bool(data)

    def need(self, pos: int) -> int:
        """Read until self.buf has POS bytes."""
        while len(self.buf) < pos:
            if not self.recv():
                raise _Incomplete
        return pos

    def find(self, sep: bytes, start: int = 0) -> int:
        while (i := self.buf.find(sep, start)) < 0:
            if not self.recv():
                raise _Incomplete
        return i

    def take(self, n: int) -> bytes:
        with self.backend.lock:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def request(self) -> Framed:
        end = self.find(b"\r\n\r\n")
        head = self.take(end + 4)[:-4].decode("latin-1")
        line, *lines = head.split("\r\n")
        parts = line.split(" ")
        if len(parts) != 3 or parts[2] != "HTTP/1.1":
            raise ValueError(f"request line {line!r}")
        headers = []
        for h in lines:
            n, sep, v = h.partition(":")
            if not sep or n != n.strip() or not n:
                raise ValueError(f"header line {h!r}")
            headers.append((n.lower(), v.strip()))
        hdrs = tuple(headers)
        with self.backend.lock:
            self.head = (parts[0], parts[1], hdrs)
        names = [n for n, _ in headers]
        te = [v for n, v in headers if n == "transfer-encoding"]
        cl = [v for n, v in headers if n == "content-length"]
        if te and cl:
            raise ValueError("both transfer-encoding and content-length")
        if len(cl) > 1 or len(te) > 1:
            raise ValueError(f"repeated framing header {names}")
        body = b""
        if te:
            if te[0].lower() != "chunked":
                raise ValueError(f"transfer-encoding {te[0]!r}")
            while True:
                i = self.find(b"\r\n")
                size_text = self.buf[:i].split(b";")[0]
                if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
                    raise ValueError(f"chunk size {self.buf[:i]!r}")
                size = int(size_text, 16)
                self.take(i + 2)
                if size == 0:
                    if self.need(2) and self.buf.startswith(b"\r\n"):
                        self.take(2)
                    else:
                        self.take(self.find(b"\r\n\r\n") + 4)  # trailers
                    break
                self.need(size + 2)
                chunk = self.take(size + 2)
                if chunk[size:] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                body += chunk[:size]
        elif cl:
            if not cl[0].isdigit():
                raise ValueError(f"content-length {cl[0]!r}")
            n = int(cl[0])
            self.need(n)
            body = self.take(n)
        with self.backend.lock:
            self.head = None
        return ("request", parts[0], parts[1], hdrs, body)

    def serve(self) -> None:
        s = self.sock
        try:
            while True:
                try:
                    req = self.request()
                except _Incomplete:
                    return
                except ValueError as e:
                    self.backend.record(None, f"{e} in {self.buf[:200]!r}")
                    with contextlib.suppress(OSError):
                        s.sendall(dh._response("400 Bad Request", b"backend: bad request"))
                    return
                self.backend.record(req, None)
                _, _, target, headers, _ = req
                if target.startswith("/ws") and any(n == "upgrade" for n, _ in headers):
                    s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
                              b"upgrade: websocket\r\n\r\n")
                    with self.backend.lock:
                        self.tunnel = True
                    while self.recv():
                        pass
                    return
                s.sendall(dh._response("200 OK", dh.ok_body(target)))
        except OSError:
            pass
        finally:
            with self.backend.lock:
                self.closed = True
                self.backend.flush_closed(self)
            s.close()
            self.backend.wake()


def _unread(sock: socket.socket) -> int:
    """Bytes in SOCK's receive queue not yet read (a closed socket: none)."""
    if sock.fileno() < 0:
        return 0
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    except OSError:
        return 0
    return int(buf[0])


class LaneBackend:
    """A recording HTTP/1.1 origin on 127.0.0.1:``port``: 200 ``ok <target>`` to anything,
    101 to an Upgrade request for /ws... (then records the tunnel). Every event (bytes read,
    a connection accepted or lost) writes a byte to ``wake_r``'s peer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conns: list[_Conn] = []
        self.framed: list[Framed] = []
        self.errors: list[str] = []
        self.wake_r, self._wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.setblocking(False)
        self.port = int(self._sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            self._wake_w.send(b"x")

    def _accept(self) -> None:
        # accept and list a connection in one step under the lock, so ``settled`` sees it
        # either waiting in the listen queue or among self.conns, never in between
        while True:
            try:
                select.select([self._sock], [], [], 0.5)
                with self.lock:
                    try:
                        sock, _ = self._sock.accept()
                    except BlockingIOError:
                        continue
                    sock.setblocking(True)
                    conn = _Conn(self, sock)
                    self.conns.append(conn)
            except (OSError, ValueError):  # closed
                return
            self.wake()
            threading.Thread(target=conn.serve, daemon=True).start()

    def record(self, req: Framed | None, error: str | None) -> None:
        with self.lock:
            if req is not None:
                self.framed.append(req)
            if error is not None:
                self.errors.append(error)

    def flush_closed(self, conn: _Conn) -> None:
        """(lock held) What a closed connection leaves: a head whose body never came, the
        bytes of a head that never completed, a tunnel's bytes."""
        if conn.tunnel:
            self.framed.append(("tunnel", "", "", (), conn.buf))
        elif conn.head is not None:
            self.framed.append(("head", *conn.head, conn.buf))
        elif conn.buf:
            self.framed.append(("fragment", "", "", (), conn.buf))
        conn.buf, conn.head = b"", None
        self.conns.remove(conn)

    def settled(self) -> bool:
        """Every upstream connection closed (and its remains recorded) or idle at a request
        boundary: nothing of a next request read or waiting in the socket's receive queue
        (FIONREAD), no tunnel open, no connection waiting to be accepted."""
        with self.lock:
            if self._sock.fileno() < 0 or select.select([self._sock], [], [], 0)[0]:
                return False
            return all(not c.closed and not c.buf and c.head is None and not c.tunnel
                       and _unread(c.sock) == 0 for c in self.conns)

    def unsettled(self) -> str:
        """What keeps the backend from being settled, for a hang's report."""
        with self.lock:
            return "; ".join(
                f"connection {'in a tunnel' if c.tunnel else 'open'} with head "
                f"{c.head[:2] if c.head else None} and {len(c.buf)} bytes read "
                f"({c.buf[:60]!r}), {_unread(c.sock)} unread"
                for c in self.conns) or "a connection waiting to be accepted"

    def take(self) -> tuple[list[Framed], list[str]]:
        with self.lock:
            out, errs = self.framed, self.errors
            self.framed, self.errors = [], []
        return out, errs

    def close(self) -> None:
        self._sock.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)
        self.wake_r.close()
        self._wake_w.close()


# -- the exchange ------------------------------------------------------------------------
@dataclass
class Outcome:
    """One mutated request through one proxy."""

    kind: str
    data: bytes = b""  # what the client received
    # how it ended: "closed" (the proxy closed the client connection), "said close" (a
    # complete response with ``connection: close``: the proxy reads nothing more; Envoy
    # then waits up to its delayed_close_timeout, 1 s, for the client to close first),
    # "quiet" (open, and nothing happened for QUIET seconds)
    ended: str = ""
    seconds: float = 0.0
    framed: list[Framed] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    hang: str = ""

    @property
    def statuses(self) -> list[int]:
        return [s for s, _ in dh.parse_responses(self.data)]

    def requests(self) -> list[Framed]:
        return [f for f in self.framed if f[0] == "request"]

    def brief(self) -> str:
        got = ", ".join(f"{k} {m} {t} {b[:60]!r}" for k, m, t, _, b in self.framed) or "nothing"
        how = self.ended if self.ended != "quiet" else f"open, quiet {QUIET}s"
        return (f"{self.kind}: client got {self.statuses or self.data[:80]!r} ({how}, "
                f"{self.seconds:.2f}s); backend got {got}"
                + (f"; backend errors {self.errors}" if self.errors else "")
                + (f"; HANG: {self.hang}" if self.hang else ""))


def said_close(data: bytes) -> bool:
    """DATA holds a complete response after which the proxy will not read on (llhttp's
    keep-alive verdict: ``connection: close``, or an HTTP/1.0 response without keep-alive)."""
    import httptools

    done: list[bool] = []

    class Cb:
        def on_message_complete(self) -> None:
            if parser.get_status_code() >= 200:
                done.append(parser.should_keep_alive())

    parser = httptools.HttpResponseParser(Cb())
    with contextlib.suppress(httptools.HttpParserUpgrade, httptools.HttpParserError):
        parser.feed_data(data)
    return False in done


class _Run:
    def __init__(self, kind: str, port: int, backend: LaneBackend, request: bytes,
                 quiet: float, hang: float) -> None:
        self.out = Outcome(kind)
        self.backend = backend
        self.quiet = quiet
        self.hang = hang
        self.started = time.monotonic()
        self.last = self.started
        self.sock: socket.socket | None = socket.create_connection(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.pending = request
        self.phase = "talk"  # then "settle" (client gone), then "done"
        self.closed_at = 0.0

    def fds(self) -> tuple[list[socket.socket], list[socket.socket]]:
        r = [self.backend.wake_r]
        w: list[socket.socket] = []
        if self.sock is not None and self.phase == "talk":
            r.append(self.sock)
            if self.pending:
                w.append(self.sock)
        return r, w

    def _close_client(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.phase = "settle"
        self.closed_at = time.monotonic()

    def step(self, readable: list[Any], writable: list[Any], now: float) -> None:
        if self.backend.wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while self.backend.wake_r.recv(4096):
                    pass
            self.last = now
        if self.phase == "talk" and self.sock is not None:
            if self.sock in writable and self.pending:
                try:
                    n = self.sock.send(self.pending)
                    self.pending = self.pending[n:]
                except BlockingIOError:
                    pass
                except OSError:
                    self.pending = b""  # the proxy closed first; the read side tells
                self.last = now
            if self.sock in readable:
                try:
                    chunk = self.sock.recv(65536)
                except BlockingIOError:
                    chunk = None
                except OSError:
                    chunk = b""
                if chunk is not None:
                    self.last = now
                    if chunk:
                        self.out.data += chunk
                        if said_close(self.out.data):
                            self.out.ended = "said close"
                            self._close_client()
                    else:
                        self.out.ended = "closed"
                        self._close_client()
            if self.phase == "talk" and now - self.last >= self.quiet and not self.pending:
                self.out.ended = "quiet"
                self._close_client()
        if self.phase == "settle" and self.backend.settled():
            self.phase = "done"
        if self.phase != "done" and now - self.started > self.hang:
            self.out.hang = (f"no end within {self.hang}s ("
                             + ("client still open" if self.phase == "talk" else
                                "client gone, backend not settled: "
                                + self.backend.unsettled()) + ")")
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            self.phase = "done"
        if self.phase == "done":
            self.out.seconds = now - self.started
            self.out.framed, self.out.errors = self.backend.take()

    def timeout(self, now: float) -> float:
        if self.phase == "talk":
            return max(0.0, self.last + self.quiet - now) + 0.001
        return 0.01  # settling: a closed upstream connection is seen by its thread


LATE: Counter[str] = Counter()  # per proxy kind: records that arrived after their exchange
_late_lock = threading.Lock()


def exchange_all(jobs: list[tuple[str, int, LaneBackend]], request: bytes,
                 quiet: float = QUIET, hang: float = HANG) -> list[Outcome]:
    """REQUEST on a new connection to each (kind, port, backend) of JOBS at once; one
    Outcome each once every exchange has ended (see the module's docstring)."""
    for kind, _, b in jobs:
        # what arrived after the previous exchange settled is not this one's; counted, as
        # it means an end was judged too early (the replay of a flagged case shows whose)
        late, errors = b.take()
        if late or errors:
            with _late_lock:
                LATE[kind] += len(late) + len(errors)
    runs = [_Run(k, p, b, request, quiet, hang) for k, p, b in jobs]
    while active := [r for r in runs if r.phase != "done"]:
        now = time.monotonic()
        rs: list[Any] = []
        ws: list[Any] = []
        for r in active:
            a, b = r.fds()
            rs += a
            ws += b
        timeout = min(r.timeout(now) for r in active)
        readable, writable, _ = select.select(rs, ws, [], timeout)
        now = time.monotonic()
        for r in active:
            r.step(readable, writable, now)
    return [r.out for r in runs]


# -- the proxies ---------------------------------------------------------------------------
def lanes_bootstrap(ports: list[int], admin: int, backends: list[int],
                    log: Path) -> dict[str, Any]:
    """desync_harness.bootstrap's reference inbound HCM, once per lane: listener i on
    127.0.0.1:PORTS[i] routes everything to cluster lane-i, whose endpoint is BACKENDS[i]."""
    listeners, clusters = [], []
    for i, (port, backend) in enumerate(zip(ports, backends, strict=True)):
        one = dh.bootstrap(port, admin, backend, log)
        listener = one["static_resources"]["listeners"][0]
        cluster = one["static_resources"]["clusters"][0]
        listener["name"] = f"lane-{i}"
        tc = listener["filter_chains"][0]["filters"][0]["typed_config"]
        tc["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = f"lane-{i}"
        cluster["name"] = cluster["load_assignment"]["cluster_name"] = f"lane-{i}"
        listeners.append(listener)
        clusters.append(cluster)
    return {"admin": one["admin"],
            "static_resources": {"listeners": listeners, "clusters": clusters}}


@dataclass
class LaneProxy:
    kind: str
    ports: list[int]
    backends: list[LaneBackend]
    proc: Any
    stderr: Path

    def alive(self) -> bool:
        return bool(self.proc.poll() is None)

    def tracebacks(self) -> list[str]:
        """``escaped_exceptions`` of the proxy's stderr so far."""
        text = self.stderr.read_text(errors="replace") if self.stderr.exists() else ""
        return escaped_exceptions(text)


def escaped_exceptions(stderr: str) -> list[str]:
    """Lines of a proxy's STDERR that show an exception escaped: Python's traceback header
    and asyncio's unhandled-exception reports."""
    marks = ("Traceback (most recent call last)", "Exception in callback",
             "exception was never retrieved", "Unhandled exception")
    return [line for line in stderr.splitlines() if any(m in line for m in marks)]


@contextmanager
def lane_proxy(kind: str, lanes: int, workdir: Path) -> Iterator[LaneProxy]:
    """KIND ("remora" or "envoy") with LANES listeners, each before a LaneBackend."""
    from tests.unit.proxy import loopback_proxies as lp
    from tests.unit.proxy.proxy_helpers import free_port

    backends = [LaneBackend() for _ in range(lanes)]
    try:
        ports, admin = [free_port() for _ in range(lanes)], free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = workdir / f"{kind}.json"
        cfg.write_text(json.dumps(lanes_bootstrap(ports, admin, [b.port for b in backends],
                                                  workdir / f"{kind}.log")))
        with lp.loopback_proxy(kind, cfg, ports[0]) as proc:
            for p in ports[1:]:
                lp.wait_listening(p, proc, kind)
            for b in backends:  # the readiness probes' connections are no exchange's
                b.take()
            yield LaneProxy(kind, ports, backends, proc, cfg.with_suffix(".err"))
    finally:
        for b in backends:
            b.close()
