"""Correct under stress: no byte lost, bad input refused, upstream failures reported.

Every test runs once on the real Envoy and once on `remora proxy` with the same config.
The Envoy half proves the harness and pins down what Envoy does; the remora half must do
the same (the upstream-failure and malformed-request cases compare with Envoy's
observation field by field).

- Byte-exact relay through one sidecar (server, REDIRECT; and TPROXY with original_src)
  and two (client sidecar -> server sidecar): payloads of 0 bytes to 64 MiB in both
  directions, with the half-close coming from the client first, from the server first,
  or both sending at once; SHA-256 compared end to end. A few fixed big cases plus
  hypothesis for the rest. (Envoy itself drops upload bytes when the server half-closes
  first under backpressure, so it is held to smaller uploads in those modes: see
  held_up_len.)
- Byte-exact HTTP request and response bodies (Content-Length and chunked, 0 bytes to
  16 MiB) through the http_connection_manager chains of one and two sidecars.
- Fuzzed requests (random bytes, valid requests with bytes spliced in): the sidecar
  stays up and the next client is served.
- Malformed HTTP (bad request line, bad header, conflicting Content-Length, oversize
  headers, invalid chunking): an error status with DPE in the access log and the
  connection closed, while a keep-alive client next to it keeps being served.
- Upstream refused, reset before and after the response started, slower than the route
  timeout (tests/data/proxy/server-redirect-timeout*.json): status, flags, details.
- The overload manager's global_downstream_max_connections
  (tests/data/proxy/server-redirect-maxconn.json): the connection over the limit is
  closed and counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import proxyharness as ph
from tests.lab import CLIENT_IP, SERVER_IP, Lab, Namespace

pytestmark = [pytest.mark.netns, pytest.mark.envoy]

RELAY_PORT = 9000  # not 18080: takes the catch-all tcp_proxy chains
MIB = 1 << 20
CLIENT_FIRST, SERVER_FIRST, BOTH = 0, 1, 2
HEADER = struct.Struct("!QQQB")  # up_len, down_len, seed, mode
IO_TIMEOUT = 60.0


def payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), MIB))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def drain(sock: socket.socket) -> tuple[str, int]:
    """Read to EOF; return (sha256 hex, byte count)."""
    digest = hashlib.sha256()
    total = 0
    while True:
        chunk = sock.recv(MIB)
        if not chunk:
            return digest.hexdigest(), total
        digest.update(chunk)
        total += len(chunk)


# -- byte relay --------------------------------------------------------------------------
class RelayServer:
    """The app side of a relay case: what it received (hash, count) per seed."""

    def __init__(self, ns: Namespace) -> None:
        self.received: dict[int, tuple[str, int]] = {}
        self.peer = ph.PeerServer(ns, RELAY_PORT, self.handle)

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT)
        _up_len, down_len, seed, mode = HEADER.unpack(recv_exact(conn, HEADER.size))
        down = payload(seed + 1, down_len)
        if mode == CLIENT_FIRST:  # reply only after the client's FIN came through
            self.received[seed] = drain(conn)
            conn.sendall(down)
            conn.shutdown(socket.SHUT_WR)
        elif mode == SERVER_FIRST:  # our FIN goes first; the client keeps sending
            conn.sendall(down)
            conn.shutdown(socket.SHUT_WR)
            self.received[seed] = drain(conn)
        else:
            sender = threading.Thread(target=_send_and_shut, args=(conn, down))
            sender.start()
            self.received[seed] = drain(conn)
            sender.join(IO_TIMEOUT)


def _send_and_shut(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


@dataclass
class Relay:
    client: Namespace
    server: RelayServer
    sidecars: list[ph.Sidecar]
    connections: int = 0

    def check(self, up_len: int, down_len: int, mode: int, seed: int) -> None:
        self.connections += 1
        up = payload(seed, up_len)
        sock = Lab.socket(self.client)
        sock.settimeout(IO_TIMEOUT)
        sock.connect((SERVER_IP, RELAY_PORT))
        send_error: list[BaseException] = []

        def send() -> None:
            try:
                _send_and_shut(sock, HEADER.pack(up_len, down_len, seed, mode) + up)
            except OSError as exc:
                send_error.append(exc)

        sender = threading.Thread(target=send)
        try:
            sender.start()
            got = drain(sock)
            sender.join(IO_TIMEOUT)
        finally:
            sock.close()
        assert not sender.is_alive(), "client could not finish sending"
        assert not send_error, f"client send failed (mode {mode}): {send_error[0]!r}"
        expected_down = hashlib.sha256(payload(seed + 1, down_len)).hexdigest()
        assert got == (expected_down, down_len), f"server->client bytes differ (mode {mode})"
        deadline = time.monotonic() + 10
        while seed not in self.server.received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.received.get(seed) == (hashlib.sha256(up).hexdigest(), up_len), \
            f"client->server bytes differ (mode {mode})"


@contextlib.contextmanager
def relay_topology(kind: str, hops: int, workdir: Path,
                   mode: str = "redirect") -> Iterator[Relay]:
    with Lab(prefix="rst") as lab:
        client, server = lab.pair()
        app = RelayServer(server)
        sidecars = []
        try:
            ph.apply_capture(lab, server, mode)
            sidecars.append(ph.start_sidecar(lab, server, kind,
                                             ph.REFERENCE / f"server-{mode}.json", workdir))
            if hops == 2:
                ph.apply_capture(lab, client, "redirect")
                sidecars.append(ph.start_sidecar(lab, client, kind,
                                                 ph.REFERENCE / "client-redirect.json", workdir))
            yield Relay(client, app, sidecars)
            assert not app.peer.errors, app.peer.errors
        finally:
            app.peer.close()


BIG_CASES = [
    (0, 0, CLIENT_FIRST),
    (0, 0, SERVER_FIRST),
    (64 * MIB, 1, CLIENT_FIRST),
    (3, 64 * MIB, SERVER_FIRST),
    (8 * MIB + 7, 8 * MIB - 5, BOTH),
]
sizes = st.one_of(st.integers(0, 300), st.integers(0, 2 * MIB))


ENVOY_SAFE_UP = 64 * 1024


def held_up_len(kind: str, up_len: int, mode: int) -> int:
    """The client->server size a proxy is held to in MODE.

    Envoy 1.40 itself loses client->server bytes when the server half-closes first (or
    both send at once) while a large upload is still flowing: observed here in 5-15% of
    8 MiB SERVER_FIRST/BOTH transfers, through one sidecar and through two. Its access
    log shows every byte received from downstream (BYTES_RECEIVED), the client's send
    and shutdown succeed, yet the app reads a clean FIN 0.2-1.9 MB short (about Envoy's
    1 MiB connection buffer plus socket buffers); CLIENT_FIRST never lost a byte (0/60),
    and remora lost none in any mode (0/60 per mode). cf. envoyproxy/envoy#44148 and
    #45267 on tcp_proxy closes dropping buffered data. So Envoy is held to uploads that
    fit its buffers in those modes; remora, which must lose nothing, to everything."""
    if kind == "envoy" and mode != CLIENT_FIRST:
        return min(up_len, ENVOY_SAFE_UP)
    return up_len


@pytest.mark.parametrize(("hops", "capture"), [(1, "redirect"), (2, "redirect"),
                                               (1, "tproxy")])
@pytest.mark.parametrize("kind", ph.KINDS)
def test_byte_exact_relay(kind: str, hops: int, capture: str, tmp_path: Path) -> None:
    """TPROXY adds transparent listeners and original_src (the app is dialled from the
    client's own address) to the path."""
    with relay_topology(kind, hops, tmp_path, capture) as relay:
        for i, (up_len, down_len, mode) in enumerate(BIG_CASES):
            relay.check(held_up_len(kind, up_len, mode), down_len, mode, seed=1000 + 2 * i)
        seeds = iter(range(10_000, 1_000_000, 2))

        @settings(max_examples=20, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(sizes, sizes, st.sampled_from([CLIENT_FIRST, SERVER_FIRST, BOTH]))
        def relay_is_exact(up_len: int, down_len: int, mode: int) -> None:
            relay.check(held_up_len(kind, up_len, mode), down_len, mode, seed=next(seeds))

        relay_is_exact()
        # every relayed connection went through (and was logged by) each sidecar's
        # catch-all tcp_proxy chain
        seen_from = {peer[0] for peer in relay.server.peer.peers}
        assert seen_from == {CLIENT_IP if capture == "tproxy" else "127.0.0.6"}, seen_from
        expected = ["InboundPassthroughCluster", "PassthroughCluster"][:hops]
        for sidecar, cluster in zip(relay.sidecars, expected, strict=True):
            lines = sidecar.wait_access_log(relay.connections)
            assert [ph.parse_access_log(x)["upstream_cluster"] for x in lines] == \
                [cluster] * relay.connections


# -- byte-exact HTTP bodies through http_connection_manager ------------------------------
class HttpBodyServer:
    """App behind the HCM chain: hashes each request body, answers with a seeded body of
    the size the query asks for (Content-Length or chunked). Serves several requests per
    connection, since the sidecar pools its upstream connections."""

    def __init__(self, ns: Namespace) -> None:
        self.received: dict[int, tuple[str, int]] = {}
        self.peer = ph.PeerServer(ns, 18080, self.handle)

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT)
        server = self

        class _Request:
            def __init__(self) -> None:
                self.reset()

            def reset(self) -> None:
                self.url = b""
                self.digest = hashlib.sha256()
                self.count = 0

            def on_url(self, url: bytes) -> None:
                self.url += url

            def on_body(self, body: bytes) -> None:
                self.digest.update(body)
                self.count += len(body)

            def on_message_complete(self) -> None:
                query = dict(x.split("=") for x in
                             self.url.decode().split("?", 1)[1].split("&"))
                seed, down, chunked = int(query["seed"]), int(query["down"]), query["chunked"]
                server.received[seed] = (self.digest.hexdigest(), self.count)
                conn.sendall(_http_response(payload(seed + 1, down), chunked == "1"))
                self.reset()

        parser = httptools.HttpRequestParser(_Request())
        while data := conn.recv(MIB):
            parser.feed_data(data)


def _http_response(body: bytes, chunked: bool) -> bytes:
    if not chunked:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    parts = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    for i in range(0, len(body), 100_000):
        piece = body[i:i + 100_000]
        parts.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


def _http_request(body: bytes, seed: int, down: int, chunked: bool) -> bytes:
    head = (f"POST /echo?seed={seed}&down={down}&chunked={int(chunked)} HTTP/1.1\r\n"
            f"Host: {SERVER_IP}:18080\r\nConnection: close\r\n").encode()
    if not chunked:
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    chunks = b"".join(b"%x\r\n" % len(body[i:i + 65_537]) + body[i:i + 65_537] + b"\r\n"
                      for i in range(0, len(body), 65_537))
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


@dataclass
class HttpRelay:
    client: Namespace
    server: HttpBodyServer
    requests: int = 0

    def check(self, up_len: int, down_len: int, chunked: bool, seed: int) -> None:
        self.requests += 1
        up = payload(seed, up_len)
        sock = Lab.socket(self.client)
        sock.settimeout(IO_TIMEOUT)
        sock.connect((SERVER_IP, 18080))
        sender = threading.Thread(target=sock.sendall,
                                  args=(_http_request(up, seed, down_len, chunked),))
        try:
            sender.start()
            raw = ph.recv_all(sock)
            sender.join(IO_TIMEOUT)
        finally:
            sock.close()
        status, body = ph.parse_response(raw)
        assert status == 200, raw[:300]
        assert (hashlib.sha256(body).hexdigest(), len(body)) == (
            hashlib.sha256(payload(seed + 1, down_len)).hexdigest(), down_len)
        assert self.server.received.get(seed) == (hashlib.sha256(up).hexdigest(), up_len)


@pytest.mark.parametrize("hops", [1, 2])
@pytest.mark.parametrize("kind", ph.KINDS)
def test_byte_exact_http_bodies(kind: str, hops: int, tmp_path: Path) -> None:
    with Lab(prefix="rsh") as lab:
        client, server = lab.pair()
        app = HttpBodyServer(server)
        try:
            ph.apply_capture(lab, server, "redirect")
            sidecars = [(ph.start_sidecar(lab, server, kind,
                                          ph.REFERENCE / "server-redirect.json", tmp_path),
                         "inbound|18080||")]
            if hops == 2:
                ph.apply_capture(lab, client, "redirect")
                sidecars.append((ph.start_sidecar(lab, client, kind,
                                                  ph.REFERENCE / "client-redirect.json",
                                                  tmp_path),
                                 "outbound|18080||srv.default.svc.cluster.local"))
            relay = HttpRelay(client, app)
            for i, (up_len, down_len, chunked) in enumerate(
                    [(0, 0, False), (0, 0, True), (16 * MIB, 3, False), (5, 16 * MIB, True)]):
                relay.check(up_len, down_len, chunked, seed=2000 + 2 * i)
            seeds = iter(range(20_000, 1_000_000, 2))

            @settings(max_examples=15, deadline=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(sizes, sizes, st.booleans())
            def bodies_are_exact(up_len: int, down_len: int, chunked: bool) -> None:
                relay.check(up_len, down_len, chunked, seed=next(seeds))

            bodies_are_exact()
            assert not app.peer.errors, app.peer.errors
            for sidecar, cluster in sidecars:  # each request crossed each sidecar's HCM
                lines = [ph.parse_access_log(x) for x in sidecar.wait_access_log(relay.requests)]
                assert [(x["upstream_cluster"], x["response_code"]) for x in lines] == \
                    [(cluster, "200")] * relay.requests
        finally:
            app.peer.close()


# -- malformed requests ------------------------------------------------------------------
MALFORMED = {
    "bad-request-line": b"GARBAGE\r\n\r\n",
    "bad-header": b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    "conflicting-content-length":
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "oversize-headers": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    "invalid-chunking":
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
}
GOOD = b"GET /common/sauth HTTP/1.1\r\nHost: simple-server-svc.demo-to:18080\r\n\r\n"


class _Done:
    done = False

    def on_message_complete(self) -> None:
        self.done = True


class GoodClient(threading.Thread):
    """Keeps one keep-alive connection busy with valid requests until stopped."""

    def __init__(self, ns: Namespace) -> None:
        super().__init__(daemon=True)
        self.ns = ns
        self.ok = 0
        self.errors: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        sock = Lab.socket(self.ns)
        sock.settimeout(10)
        try:
            sock.connect((SERVER_IP, 18080))
            while not self.stop_event.is_set():
                sock.sendall(GOOD)
                sink = _Done()
                parser = httptools.HttpResponseParser(sink)
                while not sink.done:
                    data = sock.recv(65536)
                    if not data:
                        raise EOFError("good connection closed by the proxy")
                    parser.feed_data(data)
                if parser.get_status_code() != 200:
                    self.errors.append(f"status {parser.get_status_code()}")
                self.ok += 1
                time.sleep(0.005)
        except Exception as exc:
            self.errors.append(repr(exc))
        finally:
            sock.close()


@dataclass
class BadOutcome:
    status: int
    closed: bool
    log: dict[str, str] | None
    response: bytes  # the whole response, Date masked


def _send_bad(ns: Namespace, request: bytes) -> tuple[int, bytes, bool]:
    """Send REQUEST; return (local port, response, closed by the proxy within 5 s)."""
    sock = Lab.socket(ns)
    sock.settimeout(5)
    sock.connect((SERVER_IP, 18080))
    port = sock.getsockname()[1]
    data = b""
    closed = False
    try:
        sock.sendall(request)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
    except ConnectionResetError:
        closed = True
    except TimeoutError:
        closed = False
    finally:
        sock.close()
    return port, data, closed


def observe_malformed(kind: str, workdir: Path) -> tuple[dict[str, BadOutcome], GoodClient]:
    with Lab(prefix="rsm") as lab:
        client, server = lab.pair()
        ph.start_app(lab, server, workdir, quiet=True)
        ph.apply_capture(lab, server, "redirect")
        sidecar = ph.start_sidecar(lab, server, kind, ph.REFERENCE / "server-redirect.json",
                                   workdir)
        good = GoodClient(client)
        good.start()
        results: dict[str, tuple[int, bytes, bool]] = {}

        def run(name: str, request: bytes) -> None:
            results[name] = _send_bad(client, request)

        threads = [threading.Thread(target=run, args=item) for item in MALFORMED.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        time.sleep(0.1)
        good.stop_event.set()
        good.join(15)
        after = ph.http_exchange(client, SERVER_IP, 18080,
                                 GOOD.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert ph.parse_response(after)[0] == 200, "proxy stopped serving after bad input"
        by_port = {}
        for line in sidecar.wait_access_log(len(MALFORMED) + good.ok + 1):
            fields = ph.parse_access_log(line)
            by_port[fields["downstream_remote_address"].rsplit(":", 1)[1]] = fields
    outcomes = {}
    for name, (port, data, closed) in results.items():
        status = ph.parse_response(data)[0]
        fields = by_port.get(str(port))
        outcomes[name] = BadOutcome(status, closed, ph.comparable(fields) if fields else None,
                                    re.sub(rb"(?im)^(date: ).*$", rb"\1<date>\r", data))
    return outcomes, good


_cache: dict[str, object] = {}
_lock = threading.Lock()


def envoy_once(key: str, make: Callable[[], object]) -> object:
    with _lock:
        if key not in _cache:
            _cache[key] = make()
        return _cache[key]


def malformed(kind: str, factory: pytest.TempPathFactory) -> tuple[dict[str, BadOutcome],
                                                                   GoodClient]:
    found = envoy_once(f"malformed-{kind}", lambda: observe_malformed(
        kind, factory.mktemp(f"{kind}-malformed")))
    assert isinstance(found, tuple)
    return found


@pytest.mark.parametrize("kind", ph.KINDS)
def test_malformed_http_is_refused_and_others_served(
    kind: str, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    outcomes, good = malformed(kind, tmp_path_factory)
    assert not good.errors and good.ok > 0, (good.ok, good.errors)
    for name, outcome in outcomes.items():
        assert outcome.closed, f"{name}: connection left open"
        assert outcome.status in (400, 431), f"{name}: status {outcome.status}"
        assert outcome.log is not None, f"{name}: no access-log line"
        assert outcome.log["response_flags"] == "DPE", (name, outcome.log)
        assert outcome.log["response_code"] == str(outcome.status), (name, outcome.log)


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_http_same_as_envoy(case: str,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    ours = malformed("remora", tmp_path_factory)[0][case]
    theirs = malformed("envoy", tmp_path_factory)[0][case]
    assert (ours.status, ours.closed) == (theirs.status, theirs.closed)
    assert ours.response == theirs.response
    assert ours.log is not None and theirs.log is not None
    # A chunking error comes after routing: whether an upstream connection was already
    # bound when the stream is reset depends on the pool (the good client's connection
    # may be idle or busy), so Envoy itself logs "-" or 127.0.0.6:PORT from run to run.
    racy = {"upstream_local_address"} if case == "invalid-chunking" else set()
    differing = {k: (ours.log.get(k), v) for k, v in theirs.log.items()
                 if ours.log.get(k) != v and k not in racy}
    assert not differing, f"access-log field: (remora, envoy): {differing}"


GOOD_CLOSE = GOOD.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
fuzz_requests = st.one_of(
    st.binary(max_size=3000),
    # a valid request with random bytes spliced in somewhere
    st.tuples(st.integers(0, len(GOOD_CLOSE)), st.binary(min_size=1, max_size=64)).map(
        lambda cut: GOOD_CLOSE[:cut[0]] + cut[1] + GOOD_CLOSE[cut[0]:]),
)


@pytest.mark.parametrize("kind", ph.KINDS)
def test_fuzzed_requests_never_stop_the_proxy(kind: str, tmp_path: Path) -> None:
    """Whatever arrives on the HTTP port, the sidecar stays up and the next client is
    served (an incomplete request may legitimately wait: stream_idle_timeout is 0s in
    Istio's config, so the fuzzing client gives up after a moment)."""
    with Lab(prefix="rsz") as lab:
        client, server = lab.pair()
        ph.start_app(lab, server, tmp_path, quiet=True)
        ph.apply_capture(lab, server, "redirect")
        sidecar = ph.start_sidecar(lab, server, kind, ph.REFERENCE / "server-redirect.json",
                                   tmp_path)

        @settings(max_examples=20, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(fuzz_requests)
        def proxy_survives(request: bytes) -> None:
            sock = Lab.socket(client)
            sock.settimeout(0.15)
            try:
                sock.connect((SERVER_IP, 18080))
                sock.sendall(request)
                with contextlib.suppress(OSError):
                    while sock.recv(65536):
                        pass
            finally:
                sock.close()
            assert sidecar.proc.poll() is None, f"{kind} exited: {sidecar.stderr_tail()}"
            status, body = ph.parse_response(
                ph.http_exchange(client, SERVER_IP, 18080, GOOD_CLOSE, timeout=5))
            assert (status, len(body)) == (200, 60), (request, status, body[:200])

        proxy_survives()


# -- upstream failures ---------------------------------------------------------------------
def _reset_now(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _reset_before_headers(conn: socket.socket) -> None:
    conn.recv(65536)
    _reset_now(conn)


def _reset_mid_body(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    time.sleep(0.1)
    _reset_now(conn)


def _slow(seconds: float) -> Callable[[socket.socket], None]:
    def handler(conn: socket.socket) -> None:
        conn.recv(65536)
        time.sleep(seconds)
        with contextlib.suppress(OSError):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    return handler


FAILURES: dict[str, tuple[Callable[[socket.socket], None] | None, Path, str]] = {
    # name: (app behaviour or None for nothing listening, config, Envoy's flag)
    "refused": (None, ph.REFERENCE / "server-redirect.json", "UF"),
    "reset-before-headers": (_reset_before_headers, ph.REFERENCE / "server-redirect.json",
                             "UC"),
    "reset-mid-body": (_reset_mid_body, ph.REFERENCE / "server-redirect.json", "UPE"),
    "route-timeout": (_slow(2.0), ph.DATA / "server-redirect-timeout.json", "UT"),
    # Istio writes max_stream_duration on every route; with it present Envoy 1.40 does
    # not enforce the route's `timeout` (observed): the slow answer comes through.
    "route-timeout-with-max-stream-duration": (
        _slow(0.8), ph.DATA / "server-redirect-timeout-msd.json", "-"),
}
FAIL_REQUEST = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def observe_failure(kind: str, name: str, workdir: Path) -> tuple[bytes, dict[str, str]]:
    handler, config, _ = FAILURES[name]
    with Lab(prefix="rsf") as lab:
        client, server = lab.pair()
        peer = ph.PeerServer(server, 18080, handler) if handler else None
        try:
            ph.apply_capture(lab, server, "redirect")
            sidecar = ph.start_sidecar(lab, server, kind, config, workdir)
            started = time.monotonic()
            raw = ph.http_exchange(client, SERVER_IP, 18080, FAIL_REQUEST, timeout=10)
            assert time.monotonic() - started < 8, f"{name}: the proxy hung"
            lines = sidecar.wait_access_log(1)
        finally:
            if peer:
                peer.close()
    assert len(lines) == 1, lines
    # the whole response, headers included; only the date and measured times vary
    masked = re.sub(rb"(?im)^(date: ).*$", rb"\1<date>\r", raw)
    masked = re.sub(rb"(?im)^(x-envoy-upstream-service-time: )\d+\r$", rb"\1<n>\r", masked)
    return masked, ph.comparable(ph.parse_access_log(lines[0]))


@pytest.mark.parametrize("name", list(FAILURES))
@pytest.mark.parametrize("kind", ph.KINDS)
def test_upstream_failure_status_and_flags(
    kind: str, name: str, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    envoy = envoy_once(f"fail-{name}", lambda: observe_failure(
        "envoy", name, tmp_path_factory.mktemp(f"envoy-{name}")))
    assert isinstance(envoy, tuple)
    response, log = envoy if kind == "envoy" else observe_failure(
        kind, name, tmp_path_factory.mktemp(f"{kind}-{name}"))
    assert log["response_flags"] == FAILURES[name][2], log
    if kind != "envoy":
        envoy_response, envoy_log = envoy
        differing = {k: (log.get(k), v) for k, v in envoy_log.items() if log.get(k) != v}
        assert not differing, f"access-log field: (remora, envoy): {differing}"
        assert response == envoy_response


# -- overload manager --------------------------------------------------------------------
def _hold(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while conn.recv(65536):
            pass


@pytest.mark.parametrize("kind", ph.KINDS)
def test_global_downstream_max_connections(kind: str, tmp_path: Path) -> None:
    """tests/data/proxy/server-redirect-maxconn.json is the reference server config with
    the overload manager's max_active_downstream_connections at 2: the third concurrent
    connection is closed at once, never reaches the app, and is counted as
    listener.<address>.downstream_global_cx_overflow (what Envoy does)."""
    with Lab(prefix="rso") as lab:
        client, server = lab.pair()
        app = ph.PeerServer(server, RELAY_PORT, _hold)
        try:
            ph.apply_capture(lab, server, "redirect")
            sidecar = ph.start_sidecar(lab, server, kind,
                                       ph.DATA / "server-redirect-maxconn.json", tmp_path)
            socks = []
            for _ in range(3):
                sock = Lab.socket(client)
                sock.settimeout(0.3)
                sock.connect((SERVER_IP, RELAY_PORT))
                socks.append(sock)
                time.sleep(0.1)  # let the sidecar accept it before the next one
            states = []
            socks[2].settimeout(3)  # the refused one: allow a loaded machine time to close it
            for sock in socks:
                try:
                    sock.sendall(b"x")
                    states.append("closed" if sock.recv(10) == b"" else "data")
                except TimeoutError:
                    states.append("open")
                except OSError:
                    states.append("closed")
            for sock in socks:
                sock.close()
            assert states == ["open", "open", "closed"]  # (checked in connection order)
            assert len(app.peers) == 2
            overflow = sidecar.stats().get("listener.0.0.0.0_15006.downstream_global_cx_overflow")
            assert overflow == 1
        finally:
            app.close()
