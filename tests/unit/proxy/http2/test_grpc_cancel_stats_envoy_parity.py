"""A gRPC stream that ends while the proxy still waits for the upstream's trailers (its
grpc-status): how the host's rq_success / rq_error and the cluster's upstream_rq_* count
it, held to a real Envoy 1.40 on loopback.

Envoy's router defers a gRPC response's host stat to its trailers
(Filter::handleNon5xxResponseHeaders, grpc_rq_success_deferred_) and charges the response
code with the headers (chargeUpstreamCode in onUpstreamHeaders). Observed on Envoy 1.40:
a route timeout that fires while the trailers are still awaited counts the host's and the
cluster's upstream_rq_timeout but charges the deferred stat neither way (no rq_error, no
rq_success) and no upstream_rq_504 (the 200 stays counted); a client that goes away then
leaves the host's stat uncharged too. Over HTTP/1.1 the trailers never come (Envoy's
HTTP/1 codec drops them), so a response that ends is the host's rq_error; one cut short
is charged neither way either.

The cases: the route timeout (0.3 s) fires while the trailers are 1.5 s away; the client
closes its connection once the head and the message arrived; the trailers come 0.1 s
late, within the timeout (the control: a success); the same three over an HTTP/1.1
upstream, its chunked body's end late instead of trailers.

One bootstrap (an HTTP/1.1 listener, an HTTP/2 cluster on the h2 backend of
upstream_backend.py, an HTTP/1.1 cluster on a raw backend), run by `envoy` and by `remora
proxy`, one request at a time, the counters read before and after each. Needs the envoy
binary (marker `envoy`); no root, loopback only."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.http2 import upstream_setup as us
from tests.unit.proxy.proxy_helpers import free_port

pytestmark = pytest.mark.envoy

REQUEST = ("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc\r\n"
           "TE: trailers\r\nContent-Length: 0\r\n\r\n")
# name -> (path, what the client does): "read" reads until the proxy closes or ends the
# response; "close" closes once the message arrived
CASES: dict[str, tuple[str, str]] = {
    "route-timeout-awaiting-trailers": ("/grpc-late/1500", "read"),
    "client-closed-awaiting-trailers": ("/grpc-late/1000", "close"),
    "trailers-late-within-timeout": ("/grpc-late/100", "read"),
    # an HTTP/1.1 upstream (cluster h1): the head and the message in a chunked body, the
    # rest of it (its end) 1.5 s or 0.1 s later; Envoy's HTTP/1 codec drops trailers, so
    # the grpc-status never comes and the stat waits for the response's end
    "h1-route-timeout-awaiting-end": ("/h1/late/1500", "read"),
    "h1-client-closed-awaiting-end": ("/h1/late/1000", "close"),
    "h1-end-late-within-timeout": ("/h1/late/100", "read"),
    # the upstream closes its connection instead of ending the body (a reset)
    "h1-upstream-closed-awaiting-end": ("/h1/close/100", "read"),
}
# the cluster's and the connection manager's counters compared (by the part after
# cluster.h2. / http.in.); upstream_rq_timeout and the status counters above all
CLUSTER_STATS = ("upstream_rq_total", "upstream_rq_completed", "upstream_rq_timeout",
                 "upstream_rq_200", "upstream_rq_2xx", "upstream_rq_504", "upstream_rq_5xx")
HCM_STATS = ("downstream_rq_2xx", "downstream_rq_5xx", "downstream_rq_completed",
             "rq_reset_after_downstream_response_started")
HOST_STATS = ("rq_success", "rq_error", "rq_timeout", "rq_total")


def _serve_h1(conn: socket.socket) -> None:
    """/h1/late/N: a gRPC head and message in a chunked body, its last chunk N ms later;
    /h1/close/N: the connection closed N ms after the message instead."""
    conn.settimeout(5)
    for head in lp.request_heads(conn):
        path = head.split(b" ", 2)[1].decode()
        delay = int(path.rsplit("/", 1)[1]) / 1000
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
                         b"transfer-encoding: chunked\r\n\r\n9\r\n\x00\x00\x00\x00\x04pong\r\n")
            time.sleep(delay)
            if path.startswith("/h1/close/"):
                return
            conn.sendall(b"0\r\n\r\n")
        except OSError:
            return


def _bootstrap(port: int, admin: int, h2: int, h1: int) -> dict[str, Any]:
    routes = [{"match": {"prefix": "/grpc-late/1500"},
               "route": {"cluster": "h2", "timeout": "0.3s"}},
              {"match": {"prefix": "/h1/late/1500"},
               "route": {"cluster": "h1", "timeout": "0.3s"}},
              {"match": {"prefix": "/h1/"}, "route": {"cluster": "h1", "timeout": "5s"}},
              {"match": {"prefix": "/"}, "route": {"cluster": "h2", "timeout": "5s"}}]
    return us.router_bootstrap(port, admin, routes, [
        us.cluster("h2", h2, typed_extension_protocol_options=us.h2_options()),
        us.cluster("h1", h1)])


def _counts(admin: int, cluster: str) -> dict[str, int]:
    """CLUSTER's host's counters (host.*), CLUSTER's and the connection manager's."""
    out: dict[str, int] = {}
    clusters = lp.admin_text(admin, "/clusters")
    for stat in HOST_STATS:
        m = re.search(rf"^{cluster}::127\.0\.0\.1:\d+::{stat}::(\d+)$", clusters, re.M)
        assert m is not None, clusters
        out["host." + stat] = int(m.group(1))
    for line in lp.admin_text(admin, "/stats").splitlines():
        name, _, value = line.partition(": ")
        for scope, names in ((f"cluster.{cluster}.", CLUSTER_STATS), ("http.in.", HCM_STATS)):
            if name.startswith(scope) and name[len(scope):] in names:
                out[name] = int(value)
    return out


def _run(port: int, path: str, action: str) -> bytes:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    got = b""
    try:
        s.sendall(REQUEST.format(path=path).encode())
        while chunk := s.recv(65536):
            got += chunk
            # the 5-byte gRPC frame header and "pong", in a chunked body
            if action == "close" and b"\x04pong" in got:
                break
    except (TimeoutError, ConnectionResetError):
        pass
    finally:
        s.close()
    return got


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("grpc-cancel-stats")
    h1 = lp.thread_server(_serve_h1, threaded=True)  # one thread per connection: shared

    def story(kind: str) -> dict[str, Any]:
        port, admin, h2 = free_port(), free_port(), free_port()
        cfg = tmp / f"{kind}.json"
        cfg.write_text(json.dumps(_bootstrap(port, admin, h2, h1.getsockname()[1])))
        got: dict[str, Any] = {}
        with us.backend(h2), lp.loopback_proxy(kind, cfg, port):
            for name, (path, action) in CASES.items():
                cluster = "h1" if path.startswith("/h1/") else "h2"
                before = _counts(admin, cluster)
                head = _run(port, path, action).split(b"\r\n", 1)[0]
                # the counters move when the upstream stream ends: until the host's
                # request is charged one way or the other, and its trailers are due
                deadline = time.monotonic() + 2.5
                while True:
                    time.sleep(0.1)
                    after = _counts(admin, cluster)
                    charged = sum(after[f"host.{s}"] - before.get(f"host.{s}", 0)
                                  for s in ("rq_success", "rq_error"))
                    if charged or time.monotonic() > deadline:
                        break
                time.sleep(0.3)  # anything counted a little later still shows
                after = _counts(admin, cluster)
                got[name] = (head, {k: after[k] - before.get(k, 0) for k in after
                                    if after[k] != before.get(k, 0)})
        return got

    try:
        # both proxies at once (each its own ports, backend and counters): the cases
        # mostly wait on timers, so the wall time is one proxy's
        yield lp.each_kind(story)
    finally:
        h1.close()


@pytest.mark.parametrize("case", list(CASES))
def test_counts_same_as_envoy(outcomes: dict[str, dict[str, Any]], case: str) -> None:
    """(status line, the counters that moved and by how much)."""
    assert outcomes["remora"][case] == outcomes["envoy"][case]


def test_what_envoy_counts(outcomes: dict[str, dict[str, Any]]) -> None:
    envoy = {name: got[1] for name, got in outcomes["envoy"].items()}
    for case, cluster in (("route-timeout-awaiting-trailers", "h2"),
                          ("h1-route-timeout-awaiting-end", "h1")):
        moved = envoy[case]
        # the timeout is counted, the deferred host stat is charged neither way, and the
        # 200 stays counted as it was with the headers (no upstream_rq_504)
        assert moved["host.rq_timeout"] == moved[f"cluster.{cluster}.upstream_rq_timeout"] == 1
        assert "host.rq_error" not in moved and "host.rq_success" not in moved
        assert moved[f"cluster.{cluster}.upstream_rq_200"] == 1
        assert f"cluster.{cluster}.upstream_rq_504" not in moved
    for case in ("client-closed-awaiting-trailers", "h1-client-closed-awaiting-end"):
        assert "host.rq_error" not in envoy[case] and "host.rq_success" not in envoy[case]
    assert envoy["trailers-late-within-timeout"]["host.rq_success"] == 1
    # over HTTP/1.1 the trailers never come: the end of the response charges rq_error
    assert envoy["h1-end-late-within-timeout"]["host.rq_error"] == 1
    # the upstream's reset after the response started: chargeUpstreamAbort's rq_error
    # and the router's rq_reset_after_downstream_response_started (counted for a
    # deferred gRPC stat only: test_stream_reset_stats_envoy_parity's body cut short has
    # none)
    moved = envoy["h1-upstream-closed-awaiting-end"]
    assert moved["host.rq_error"] == 1
    assert moved["http.in.rq_reset_after_downstream_response_started"] == 1
