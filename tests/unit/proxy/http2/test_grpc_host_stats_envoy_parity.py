"""A host's rq_success / rq_error (admin /clusters) after gRPC requests, held to a real
Envoy 1.40 on loopback. Envoy's router charges a gRPC request (content-type
application/grpc) by its grpc-status, not its HTTP status alone (Filter::
handleNon5xxResponseHeaders, onUpstreamTrailers): a non-5xx response is a success only when
it carries a grpc-status that Grpc::Utility::grpcToHttpStatus maps to no 5xx (in the
headers of a trailers-only response, else in the trailers); a missing one, or one mapped to
5xx (UNKNOWN, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, DEADLINE_EXCEEDED, an
invalid value), is an error. Any other request is charged by its status.

One bootstrap (an HTTP/1.1 listener, an HTTP/2 cluster on the h2 backend of
upstream_backend.py, an HTTP/1.1 cluster on a raw backend), run by `envoy` and by `remora
proxy`, the same requests one at a time, the host's two counters read after each. Needs
the envoy binary (marker `envoy`); no root, loopback only."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.http2 import upstream_setup as us
from tests.unit.proxy.proxy_helpers import free_port

pytestmark = pytest.mark.envoy

GRPC = "application/grpc"
# name -> (path, content-type): /h1/... go to the HTTP/1.1 backend, the rest to the h2 one
CASES: dict[str, tuple[str, str | None]] = {
    "trailers-ok": ("/grpc", GRPC),
    "trailers-not-found": ("/grpc-trailer/5", GRPC),
    "trailers-unavailable": ("/grpc-trailer/14", GRPC),
    "trailers-internal": ("/grpc-trailer/13", GRPC),
    "trailers-invalid": ("/grpc-trailer/abc", GRPC),
    "trailers-only-ok": ("/grpc-status/0", GRPC),
    "trailers-only-not-found": ("/grpc-status/5", GRPC),
    "trailers-only-unauthenticated": ("/grpc-status/16", GRPC),
    "trailers-only-cancelled": ("/grpc-status/1", GRPC),
    "trailers-only-unknown": ("/grpc-status/2", GRPC),
    "trailers-only-deadline": ("/grpc-status/4", GRPC),
    "trailers-only-unimplemented": ("/grpc-status/12", GRPC),
    "trailers-only-unavailable": ("/grpc-status/14", GRPC),
    "trailers-only-out-of-range-code": ("/grpc-status/17", GRPC),
    "trailers-only-invalid": ("/grpc-status/abc", GRPC),
    "grpc-proto-unavailable": ("/grpc-status/14", GRPC + "+proto"),
    "no-status-with-body": ("/size/5", GRPC),
    "no-status-headers-only": ("/status/200", GRPC),
    "grpc-http-503": ("/status/503", GRPC),
    "grpc-http-404": ("/status/404", GRPC),
    "not-grpc-unavailable": ("/grpc-status/14", None),
    "grpc-web-unavailable": ("/grpc-status/14", "application/grpc-web"),
    "h1-header-unavailable": ("/h1/unavailable", GRPC),
    "h1-header-ok": ("/h1/ok", GRPC),
    "h1-no-status": ("/h1/none", GRPC),
    "h1-trailers-ok": ("/h1/trailers", GRPC),
}

H1_RESPONSES = {
    "unavailable": b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 14\r\n"
                   b"content-length: 0\r\n\r\n",
    "ok": b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 0\r\n"
          b"content-length: 0\r\n\r\n",
    "none": b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ncontent-length: 2\r\n\r\nok",
    "trailers": b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
                b"transfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n",
}


def _serve_h1(conn: socket.socket) -> None:
    conn.settimeout(5)
    for head in lp.request_heads(conn):
        name = head.split(b" ", 2)[1].decode().rsplit("/", 1)[1]
        try:
            conn.sendall(H1_RESPONSES[name])
        except OSError:
            return


def _bootstrap(port: int, admin: int, h2: int, h1: int) -> dict[str, Any]:
    routes = [{"match": {"prefix": "/h1/"}, "route": {"cluster": "h1", "timeout": "5s"}},
              {"match": {"prefix": "/"}, "route": {"cluster": "h2", "timeout": "5s"}}]
    return us.router_bootstrap(port, admin, routes, [
        us.cluster("h2", h2, typed_extension_protocol_options=us.h2_options()),
        us.cluster("h1", h1)])


def _host_counts(admin: int, cluster: str) -> tuple[int, int]:
    text = lp.admin_text(admin, "/clusters")
    found = {}
    for stat in ("rq_success", "rq_error"):
        m = re.search(rf"^{cluster}::127\.0\.0\.1:\d+::{stat}::(\d+)$", text, re.M)
        assert m is not None, text
        found[stat] = int(m.group(1))
    return found["rq_success"], found["rq_error"]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("grpc-host-stats")
    h1 = lp.thread_server(_serve_h1, threaded=True)
    found: dict[str, dict[str, Any]] = {}
    try:
        for kind in ph.KINDS:
            port, admin, h2 = free_port(), free_port(), free_port()
            cfg = tmp / f"{kind}.json"
            cfg.write_text(json.dumps(_bootstrap(port, admin, h2, h1.getsockname()[1])))
            got: dict[str, Any] = {}
            with us.backend(h2), lp.loopback_proxy(kind, cfg, port):
                for name, (path, ctype) in CASES.items():
                    cluster = "h1" if path.startswith("/h1/") else "h2"
                    before = _host_counts(admin, cluster)
                    ct = f"Content-Type: {ctype}\r\nTE: trailers\r\n" if ctype else ""
                    head = lp.exchange_closed(port, f"POST {path} HTTP/1.1\r\nHost: a\r\n{ct}"
                                              f"Content-Length: 0\r\n\r\n".encode(),
                                              timeout=5).split(b"\r\n", 1)[0]
                    deadline = time.monotonic() + 2
                    while True:  # the counters move when the upstream stream ends
                        after = _host_counts(admin, cluster)
                        if after != before or time.monotonic() > deadline:
                            break
                        time.sleep(0.05)
                    got[name] = (head, after[0] - before[0], after[1] - before[1])
            found[kind] = got
        yield found
    finally:
        h1.close()


@pytest.mark.parametrize("case", list(CASES))
def test_host_counts_same_as_envoy(outcomes: dict[str, dict[str, Any]], case: str) -> None:
    """(status line, rq_success added, rq_error added)."""
    assert outcomes["remora"][case] == outcomes["envoy"][case]


def test_what_envoy_counts(outcomes: dict[str, dict[str, Any]]) -> None:
    envoy = {name: got[1:] for name, got in outcomes["envoy"].items()}
    success, error = (1, 0), (0, 1)
    assert envoy["trailers-ok"] == success
    assert envoy["trailers-unavailable"] == error
    assert envoy["trailers-only-not-found"] == success
    assert envoy["trailers-only-unavailable"] == error
    assert envoy["no-status-headers-only"] == error
    assert envoy["no-status-with-body"] == error
    assert envoy["grpc-http-404"] == error
    assert envoy["not-grpc-unavailable"] == success
    assert envoy["grpc-web-unavailable"] == success
    # HTTP/1.1 upstream: its trailers are dropped (no enable_trailers), so only a
    # grpc-status in a head that ends the response counts
    assert envoy["h1-header-ok"] == success
    assert envoy["h1-trailers-ok"] == error
