"""`remora proxy` forwarding HTTP/1.1 clients to HTTP/2 upstreams on loopback: real peers
(an h2-library backend in its own process, grpcio's server), the proxy run by its CLI.

Bodies of 0, 1 KiB and 4 MiB arrive byte for byte, a 1 MiB request body is streamed
through the flow-control windows, concurrent requests share one upstream connection (the
backend counts its accepted connections), RST_STREAM / REFUSED_STREAM / GOAWAY / a
refused connect get Envoy's answers, and the access log shows HTTP/2 and gRPC statuses.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.http2 import upstream_setup as us
from tests.unit.proxy.http2.upstream_backend import body_of
from tests.unit.proxy.proxy_helpers import free_port


class Rig:
    def __init__(self, port: int, admin: int, log: Path) -> None:
        self.port, self.admin, self.log = port, admin, log
        self.lines_seen = 0

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        return us.request(self.port, kw.pop("method", "GET"), path, **kw)

    def new_log_lines(self, count: int) -> list[str]:
        lines = lp.wait_lines(self.log, self.lines_seen + count)
        out = lines[self.lines_seen:]
        self.lines_seen = len(lines)
        return out

    def stat(self, name: str) -> int:
        for line in lp.admin_text(self.admin, "/stats").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("h2up")
    certs = us.server_certificate(tmp)
    port, admin, backend, grpc, refused, limited, tls = (free_port() for _ in range(7))
    log = tmp / "access.log"
    cfg = tmp / "remora.json"
    cfg.write_text(json.dumps(us.bootstrap(port, admin, log, backend, grpc, refused,
                                               limited, tls)))
    with us.backend(backend), us.backend(limited, 2), us.backend(tls, 0, certs), \
                us.grpc_server(grpc), \
                lp.loopback_proxy("remora", cfg, port):
        yield Rig(port, admin, log)


@pytest.mark.parametrize("size", [0, 1024, 4 * 1024 * 1024])
def test_response_bodies_arrive_byte_for_byte(rig: Rig, size: int) -> None:
    status, headers, body = rig.get(f"/size/{size}")
    assert status == 200
    assert headers["content-length"] == str(size)
    assert body == body_of(size)
    (line,) = rig.new_log_lines(1)
    assert line.split()[:5] == ["200", "-", "via_upstream", "HTTP/1.1", "HTTP/2"]
    assert line.split()[8] == str(size)  # BYTES_SENT


def test_request_body_streamed_through_the_windows(rig: Rig) -> None:
    body = body_of(1024 * 1024 + 17)  # more than the 64 KiB initial windows of the peer
    status, _, echoed = rig.get("/echo", method="POST", body=body)
    assert (status, echoed) == (200, body)
    (line,) = rig.new_log_lines(1)
    assert line.split()[7] == str(len(body))  # BYTES_RECEIVED


def test_chunked_request_body(rig: Rig) -> None:
    s = socket.create_connection(("127.0.0.1", rig.port), timeout=5)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
              b"Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.endswith(b"\r\n\r\nabcde")
    rig.new_log_lines(1)


def test_concurrent_requests_share_one_upstream_connection(rig: Rig) -> None:
    before = int(rig.get("/conns")[2])
    rig.new_log_lines(1)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: rig.get("/slow"), range(8)))
    assert [r[0] for r in results] == [200] * 8
    # each request came on its own downstream connection, all on the same upstream one
    assert len({r[1]["x-conn"] for r in results}) == 1
    assert len({r[1]["x-stream"] for r in results}) == 8
    assert int(rig.get("/conns")[2]) == before
    rig.new_log_lines(9)


def test_concurrent_bodies_both_ways_stay_apart(rig: Rig) -> None:
    """Eight 512 KiB request bodies at once on one connection, each echoed: the flow
    control of every stream and of the connection (the backend's 64 KiB windows) lets
    them all through, and no byte lands in another stream's response."""
    bodies = [bytes([i]) * 1000 + body_of(512 * 1024) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: rig.get("/echo", method="POST", body=b), bodies))
    assert [(r[0], r[2]) for r in results] == [(200, b) for b in bodies]
    assert len({r[1]["x-conn"] for r in results}) == 1
    rig.new_log_lines(8)


def test_upstream_that_does_not_read_holds_the_client(rig: Rig) -> None:
    """The backend never opens its windows for a 20 MiB request body: the proxy keeps
    what the windows and its 1 MiB buffer allow and stops reading the client until the
    route timeout (2 s) answers 504. What it took in is the access log's BYTES_RECEIVED
    (the client's send stalls later than that: the kernel's socket buffers on loopback
    hold several MiB more)."""
    total = 20 * 1024 * 1024
    s = socket.create_connection(("127.0.0.1", rig.port), timeout=5)
    s.sendall(b"POST /no-ack HTTP/1.1\r\nHost: a\r\nx-cluster: h2-one\r\n"
              b"Content-Length: %d\r\n\r\n" % total)
    s.setblocking(False)
    sent, chunk, deadline = 0, b"x" * 65536, time.monotonic() + 1.5
    while time.monotonic() < deadline and sent < total:
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            time.sleep(0.02)
    s.setblocking(True)
    answer = s.recv(65536)
    s.close()
    assert answer.startswith(b"HTTP/1.1 504 Gateway Timeout"), answer
    assert sent >= 2 * 1024 * 1024  # more than the proxy may take in was offered
    status, _, _ = rig.get("/size/3")
    assert status == 200  # the proxy serves on
    stalled, _ = rig.new_log_lines(2)
    assert stalled.split()[:3] == ["504", "UT", "response_timeout"]
    # 64 KiB of windows, 1 MiB buffered, and the reads in flight when the buffer filled
    # (up to 256 KiB each): bounded, whatever the client offers
    assert int(stalled.split()[7]) < 2 * 1024 * 1024, stalled


def test_peer_stream_limit_is_respected(rig: Rig) -> None:
    """The backend advertises SETTINGS_MAX_CONCURRENT_STREAMS 2 and treats a third open
    stream as a connection error (h2's server): five concurrent requests all succeed, so
    none was ever sent beyond the peer's limit (remora queues them, as nghttp2 does)."""
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(
            lambda _: rig.get("/slow", headers={"x-cluster": "h2-peer-limit"}), range(5)))
    assert [r[0] for r in results] == [200] * 5
    assert len({r[1]["x-conn"] for r in results}) <= 3
    # warm now: the next burst opens no connection beyond what 2 streams each need
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(
            lambda _: rig.get("/slow", headers={"x-cluster": "h2-peer-limit"}), range(4)))
    assert [r[0] for r in results] == [200] * 4
    rig.new_log_lines(9)


def test_cluster_max_concurrent_streams_opens_connections(rig: Rig) -> None:
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(
            lambda _: rig.get("/slow", headers={"x-cluster": "h2-one"}), range(3)))
    assert [r[0] for r in results] == [200] * 3
    assert len({r[1]["x-conn"] for r in results}) == 3
    rig.new_log_lines(3)


def test_grpc_unary_through_an_http11_client(rig: Rig) -> None:
    status, headers, body = rig.get(
        "/remora.demo.Simple/Sauth", method="POST", body=us.grpc_frame(b"hi"),
        headers={"content-type": "application/grpc", "te": "trailers"})
    assert status == 200
    assert headers["content-type"] == "application/grpc"
    assert headers.get("transfer-encoding") == "chunked"  # no length: the trailers follow
    from remora.apps.grpc_server import BODY
    assert body == us.grpc_frame(BODY)
    (line,) = rig.new_log_lines(1)
    # the trailers (grpc-status 0) never reach an HTTP/1.1 client, the access log sees them
    assert line.split()[3:7] == ["HTTP/1.1", "HTTP/2", "OK", "0"]


def test_grpc_trailers_only_and_status_from_trailers(rig: Rig) -> None:
    grpc = {"content-type": "application/grpc"}
    status, headers, body = rig.get("/grpc-fail", method="POST", body=b"", headers=grpc)
    assert (status, headers["grpc-status"], headers["content-length"], body) == (
        200, "5", "0", b"")
    status, headers, body = rig.get("/grpc", method="POST", body=b"", headers=grpc)
    assert (status, body) == (200, us.grpc_frame(b"pong"))
    status, _, _ = rig.get("/echo", method="POST", body=b"", headers=grpc)
    fields = [line.split()[5:7] for line in rig.new_log_lines(3)]
    # the headers' status, the trailers', then none at all: Unknown (httpToGrpcStatus)
    assert fields == [["NotFound", "5"], ["OK", "0"], ["Unknown", "2"]]


def test_remote_reset_is_503_ur(rig: Rig) -> None:
    status, _, body = rig.get("/reset")
    assert status == 503
    assert body == (b"upstream connect error or disconnect/reset before headers. "
                    b"reset reason: remote reset")
    (line,) = rig.new_log_lines(1)
    assert line.split()[:3] == ["503", "UR", "upstream_reset_before_response_started"
                                "{remote_reset}"]


def test_refused_stream_answer_and_retry(rig: Rig) -> None:
    status, _, body = rig.get("/refuse-me")
    assert status == 503
    assert body.endswith(b"reset reason: remote refused stream reset")
    retries = rig.stat("cluster.h2.upstream_rq_retry")
    status, _, body = rig.get("/refuse-retry", method="POST", body=b"again")
    assert (status, body) == (200, b"again")  # refused once, retried on the same connection
    assert rig.stat("cluster.h2.upstream_rq_retry") == retries + 1
    lines = rig.new_log_lines(2)
    assert lines[0].split()[:3] == ["503", "UR", "upstream_reset_before_response_started"
                                    "{remote_refused_stream_reset}"]
    assert lines[1].split()[:3] == ["200", "-", "via_upstream"]


def test_goaway_moves_the_next_request_to_a_new_connection(rig: Rig) -> None:
    _, first, _ = rig.get("/goaway")
    _, second, _ = rig.get("/size/1")
    assert second["x-conn"] != first["x-conn"]
    rig.new_log_lines(2)


def test_route_timeout_resets_the_stream_not_the_connection(rig: Rig) -> None:
    _, before, _ = rig.get("/size/1")
    status, _, body = rig.get("/slow-timeout")
    assert (status, body) == (504, b"upstream request timeout")
    _, after, _ = rig.get("/size/1")
    assert after["x-conn"] == before["x-conn"]
    lines = rig.new_log_lines(3)
    assert lines[1].split()[:3] == ["504", "UT", "response_timeout"]


def test_connect_failure_is_uf(rig: Rig) -> None:
    status, _, body = rig.get("/x", headers={"x-cluster": "refused"})
    assert status == 503
    assert b"remote connection failure" in body
    (line,) = rig.new_log_lines(1)
    assert line.split()[1] == "UF"
    assert line.split()[4] == "-"  # no upstream request was made: no UPSTREAM_PROTOCOL


def test_tls_upstream_offers_alpn_h2(rig: Rig) -> None:
    """The cluster's UpstreamTlsContext names no alpn_protocols: the HTTP/2 pool offers
    h2 (Envoy's fallback), which the TLS backend, offering h2 only, selects."""
    status, headers, body = rig.get("/size/5", headers={"x-cluster": "h2-tls"})
    assert (status, headers["x-alpn"], body) == (200, "h2", body_of(5))
    (line,) = rig.new_log_lines(1)
    assert line.split()[4] == "HTTP/2"


def test_client_gone_resets_the_stream_only(rig: Rig) -> None:
    """A client that leaves mid-request: its stream is reset (RST_STREAM CANCEL), logged
    DC, and the connection keeps serving."""
    _, before, _ = rig.get("/size/1")
    s = socket.create_connection(("127.0.0.1", rig.port), timeout=5)
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    time.sleep(0.1)
    s.close()
    time.sleep(0.4)  # the backend answers /slow after 0.3 s, on a stream reset by then
    _, after, _ = rig.get("/size/1")
    assert after["x-conn"] == before["x-conn"]
    lines = rig.new_log_lines(3)
    assert lines[1].split()[:3] == ["0", "DC", "downstream_remote_disconnect"]


def test_idle_timeout_and_max_requests_per_connection(rig: Rig) -> None:
    short = {"x-cluster": "h2-short"}
    conns = [rig.get("/size/1", headers=short)[1]["x-conn"] for _ in range(3)]
    assert conns[0] == conns[1] != conns[2]  # two streams per connection
    time.sleep(0.6)  # idle_timeout 0.3 s: the connection is closed, the next opens anew
    assert rig.get("/size/1", headers=short)[1]["x-conn"] not in conns
    rig.new_log_lines(4)


def test_legacy_and_downstream_protocol_clusters(rig: Rig) -> None:
    status, headers, _ = rig.get("/size/3", headers={"x-cluster": "h2-legacy"})
    assert (status, headers["content-length"]) == (200, "3")
    # use_downstream_protocol_config: an HTTP/1.1 client's request goes upstream as
    # HTTP/1.1, which the h2-only backend cannot answer
    status, _, _ = rig.get("/size/3", headers={"x-cluster": "h2-downstream"})
    lines = rig.new_log_lines(2)
    assert lines[0].split()[4] == "HTTP/2"
    assert status != 200
    assert lines[1].split()[4] == "HTTP/1.1"
