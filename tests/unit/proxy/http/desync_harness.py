"""A recording, misbehaving HTTP/1.1 backend and raw clients, for the desync tests (issue 15)
run against `remora proxy` and the real Envoy on loopback with the same bootstrap.

The backend records every byte each upstream connection delivers and every request it
parses out of them (so a test sees request boundaries exactly as an origin would), and
answers according to the request path:

``/ok...``      200 with body ``ok <target>`` (so a client can tell its own response apart)
``/extra-same`` a complete response and, in the same write, an unsolicited second one
``/extra-late`` a complete response, and an unsolicited second one 0.2 s later
``/204-body``   a 204 followed by bytes in the same write (a 304 for ``/304-body``)
``/head-late``  (HEAD) content-length 8, then those 8 body bytes 0.2 s later
``/head-body``  (HEAD) content-length 8 and those 8 body bytes in the same write
``/101``        an unrequested ``101 Switching Protocols``, then silence
``/ws``         ``101`` to a websocket upgrade; then records the tunnel
``/xchunked``   ``transfer-encoding: xchunked`` with a chunked-looking body
``/status099``  status line ``HTTP/1.1 099 Odd``
``/bighdr``     a 100 KB response header
``/garbage``    bytes that are not HTTP
``/fuzzresp/K`` the bytes ``scripted[K]``, as they are (the response-side fuzz)
The misbehaving answers all carry POISON somewhere, so a client that receives someone else's
leftovers shows it.

It is used by black-box tests over sockets only, so the tests hold for any implementation of
the proxy (the later sans-IO rebuild included).
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.datafiles import data_path

POISON = b"POISONED"


@dataclass
class Seen:
    """One request as the backend parsed it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    conn: int  # which upstream connection (1, 2, ...) carried it


def ok_body(target: str) -> bytes:
    return f"ok {target}".encode()


def _response(status: str, body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\ncontent-length: %d\r\n" % len(body)
            + extra + b"\r\n" + body)


class _Conn:
    def __init__(self, backend: RecordingBackend, sock: socket.socket, num: int) -> None:
        self.backend = backend
        self.sock = sock
        self.num = num
        self.buf = b""
        self.raw = bytearray()

    def recv(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            return False
        self.buf += data
        self.raw += data
        with self.backend.lock:
            self.backend.raw[self.num] = bytes(self.raw)
        return True

    def need(self, pred: Callable[[], int]) -> int:
        """Read until PRED returns an index >= 0 (or the peer closes: -1)."""
        while (i := pred()) < 0:
            if not self.recv():
                return -1
        return i

    def request(self) -> Seen | None:
        end = self.need(lambda: self.buf.find(b"\r\n\r\n"))
        if end < 0:
            return None
        head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
        line, *lines = head.split("\r\n")
        parts = line.split(" ")
        if len(parts) != 3:
            raise ValueError(line)
        headers = []
        for h in lines:
            n, sep, v = h.partition(":")
            if not sep:
                raise ValueError(h)
            headers.append((n.strip().lower(), v.strip()))
        hmap = dict(headers)
        body = b""
        if hmap.get("transfer-encoding", "").lower() == "chunked":
            while True:
                i = self.need(lambda: self.buf.find(b"\r\n"))
                if i < 0:
                    return None
                size = int(self.buf[:i].split(b";")[0], 16)
                self.buf = self.buf[i + 2:]
                if size == 0:
                    j = self.need(lambda: self.buf.find(b"\r\n\r\n") if not
                                  self.buf.startswith(b"\r\n") else 0)
                    if j < 0:
                        return None
                    self.buf = self.buf[2:] if j == 0 and self.buf.startswith(b"\r\n") \
                        else self.buf[j + 4:]
                    break
                if self.need(lambda s=size: 0 if len(self.buf) >= s + 2 else -1) < 0:
                    return None
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
        elif "content-length" in hmap:
            n = int(hmap["content-length"])
            if self.need(lambda: 0 if len(self.buf) >= n else -1) < 0:
                return None
            body, self.buf = self.buf[:n], self.buf[n:]
        return Seen(parts[0], parts[1], headers, body, self.num)

    def serve(self) -> None:
        s = self.sock
        try:
            while True:
                try:
                    req = self.request()
                except ValueError as e:
                    with self.backend.lock:
                        self.backend.errors.append((self.num, str(e)))
                    s.sendall(_response("400 Bad Request", b"backend: bad request"))
                    return
                if req is None:
                    return
                with self.backend.lock:
                    self.backend.seen.append(req)
                if not self.answer(req):
                    return
        except OSError:
            pass
        finally:
            s.close()

    def answer(self, req: Seen) -> bool:
        """Write the response for REQ; False: stop serving this connection."""
        s, path = self.sock, req.target
        late = _response("200 OK", POISON)
        if path.startswith("/extra-same"):
            s.sendall(_response("200 OK", ok_body(path)) + late)
        elif path.startswith("/extra-late"):
            s.sendall(_response("200 OK", ok_body(path)))
            time.sleep(0.2)
            s.sendall(late)
        elif path.startswith("/204-body"):
            s.sendall(b"HTTP/1.1 204 No Content\r\n\r\n" + late)
        elif path.startswith("/304-body"):
            s.sendall(b"HTTP/1.1 304 Not Modified\r\n\r\n" + late)
        elif path.startswith("/head-body"):
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n" + POISON)
        elif path.startswith("/head-late"):
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n")
            time.sleep(0.2)
            s.sendall(POISON)
        elif path.startswith("/101"):
            s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
                      b"upgrade: foo\r\n\r\n")
            while self.recv():  # the tunnel: record, answer nothing
                pass
            return False
        elif path.startswith("/ws"):
            s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
                      b"upgrade: websocket\r\n\r\n")
            while self.recv():
                pass
            return False
        elif path.startswith("/xchunked"):
            s.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: xchunked\r\n\r\n"
                      b"4\r\nPOIS\r\n0\r\n\r\n")
        elif path.startswith("/status099"):
            s.sendall(b"HTTP/1.1 099 Odd\r\ncontent-length: 8\r\n\r\n" + POISON)
        elif path.startswith("/bighdr"):
            s.sendall(b"HTTP/1.1 200 OK\r\nx-big: " + b"p" * 100_000
                      + b"\r\ncontent-length: 8\r\n\r\n" + POISON)
        elif path.startswith("/fuzzresp/"):
            s.sendall(self.backend.scripted.get(path.split("/")[2], b""))
        elif path.startswith("/garbage"):
            s.sendall(b"this is not http " + POISON + b"\r\n\r\n")
        else:
            s.sendall(_response("200 OK", ok_body(path)))
        return True


class RecordingBackend:
    """The backend on 127.0.0.1:``port`` (a thread per connection), until ``close``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.raw: dict[int, bytes] = {}
        self.errors: list[tuple[int, str]] = []  # what the proxy sent that is not HTTP/1.1
        self.scripted: dict[str, bytes] = {}  # /fuzzresp/<key>: these bytes, as they are
        self.connections = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = int(self._sock.getsockname()[1])
        self._closed = False
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                num = self.connections
                self._open.append(sock)
            threading.Thread(target=_Conn(self, sock, num).serve, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()
            self.raw.clear()

    def requests(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        with self.lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


# -- the proxy under test ------------------------------------------------------------------
def bootstrap(port: int, admin: int, backend: int, log: Path,
              hcm_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The reference sidecar's inbound HTTP connection manager (Istio's, unchanged but for
    its access-log path and HCM_EXTRA), one listener on 127.0.0.1:PORT, everything routed
    to BACKEND."""
    ref = json.loads(data_path("reference", "envoy-sidecar", "server-redirect.json")
                     .read_text())
    hcm = copy.deepcopy(ref["static_resources"]["listeners"][0]["filter_chains"][1]
                        ["filters"][0])
    tc = hcm["typed_config"]
    tc["access_log"][0]["typed_config"]["path"] = str(log)
    tc["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "backend"
    tc.update(hcm_extra or {})

    def sock(p: int) -> dict[str, Any]:
        return {"socket_address": {"address": "127.0.0.1", "port_value": p}}
    return {"admin": {"address": sock(admin)},
            "static_resources": {
                "listeners": [{"name": "l", "address": sock(port),
                               "filter_chains": [{"filters": [hcm]}]}],
                "clusters": [{"name": "backend", "type": "STATIC", "connect_timeout": "1s",
                              "load_assignment": {"cluster_name": "backend", "endpoints": [
                                  {"lb_endpoints": [{"endpoint": {"address": sock(backend)}}]}
                              ]}}]}}


# -- clients -------------------------------------------------------------------------------
@dataclass
class Answer:
    """What a client got: the bytes, and whether the proxy closed within the wait."""

    data: bytes
    closed: bool
    seconds: float
    responses: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def status(self) -> int:
        return self.responses[0][0] if self.responses else 0


def parse_responses(data: bytes, head: bool = False) -> list[tuple[int, bytes]]:
    """The complete responses in DATA, in order: (status, body)."""
    import httptools

    out: list[tuple[int, bytes]] = []
    body: list[bytes] = []

    class Cb:
        def on_message_begin(self) -> None:
            body.clear()

        def on_body(self, b: bytes) -> None:
            body.append(b)

        def on_headers_complete(self) -> None:
            st = parser.get_status_code()
            if head and st >= 200:
                # llhttp cannot know the request was HEAD: end the message here
                out.append((st, b""))

        def on_message_complete(self) -> None:
            st = parser.get_status_code()
            if st == 101:  # relayed without its upgrade header: llhttp ends it here
                out.append((st, b""))
                raise EOFError  # HTTP ends with a 101
            if st >= 200 and not head:
                out.append((st, b"".join(body)))

    parser = httptools.HttpResponseParser(Cb())
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        out.append((101, b""))  # a 101 ends HTTP on this connection
    except httptools.HttpParserError:
        pass
    return out


def response_starts(data: bytes) -> int:
    """How many responses DATA begins (llhttp's message starts; a body that merely contains
    HTTP text is not one); -1 when what follows a response is not HTTP at all."""
    import httptools

    starts = 0

    class Cb:
        def on_message_begin(self) -> None:
            nonlocal starts
            starts += 1

    parser = httptools.HttpResponseParser(Cb())
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as e:
        if "Upgrade" not in str(e):  # llhttp pauses after a 101: HTTP ends there
            return -1
    return starts


def exchange(port: int, request: bytes, wait: float = 2.0, head: bool = False,
             until_responses: int = 0) -> Answer:
    """Send REQUEST on a new connection; read until the proxy closes or WAIT passes (or,
    with UNTIL_RESPONSES, until that many complete responses arrived)."""
    s = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()
    out = b""
    closed = False
    try:
        s.sendall(request)
        deadline = started + wait
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            out += chunk
            if until_responses and len(parse_responses(out, head)) >= until_responses:
                break
    finally:
        s.close()
    return Answer(out, closed, time.monotonic() - started, parse_responses(out, head))


# -- a proxy in front of its own recording backend ---------------------------------------
@dataclass
class Target:
    """One proxy (``kind``) on 127.0.0.1:``port`` in front of ``backend``."""

    kind: str
    port: int
    admin: int
    backend: RecordingBackend
    proc: Any

    def counter(self, name: str) -> int:
        """A counter from the admin /stats text (0 when absent)."""
        from tests.unit.proxy import loopback_proxies as lp

        for line in lp.admin_text(self.admin, "/stats").splitlines():
            n, sep, v = line.partition(": ")
            if sep and n == name:
                return int(v)
        return 0

    def wait_counter(self, name: str, at_least: int, timeout: float = 3.0) -> int:
        deadline = time.monotonic() + timeout
        while (value := self.counter(name)) < at_least and time.monotonic() < deadline:
            time.sleep(0.05)
        return value

    def alive(self) -> bool:
        return bool(self.proc.poll() is None)


@contextmanager
def proxy_target(kind: str, workdir: Path,
                 hcm_extra: dict[str, Any] | None = None) -> Iterator[Target]:
    """KIND ("remora" or "envoy") running ``bootstrap`` in front of a new backend."""
    from tests.unit.proxy import loopback_proxies as lp
    from tests.unit.proxy.proxy_helpers import free_port

    backend = RecordingBackend()
    try:
        port, admin = free_port(), free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = workdir / f"{kind}.json"
        cfg.write_text(json.dumps(bootstrap(port, admin, backend.port,
                                            workdir / f"{kind}.log", hcm_extra)))
        with lp.loopback_proxy(kind, cfg, port) as proc:
            yield Target(kind, port, admin, backend, proc)
    finally:
        backend.close()
