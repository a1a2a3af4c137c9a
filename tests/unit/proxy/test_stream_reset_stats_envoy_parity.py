"""A downstream stream (HTTP/1.1, HTTP/2) that ends in a reset, and what the connection manager
counts for it, held to a real Envoy 1.40 on loopback: downstream_rq_rx_reset,
downstream_rq_tx_reset and downstream_cx_destroy_*_active_rq.

Observed on Envoy 1.40: a client that closes its connection while its request is in
progress (awaiting the response, or mid-body) resets the stream (downstream_rq_rx_reset)
and ends a connection with an active request (downstream_cx_destroy_remote_active_rq); a
response the proxy started and cannot finish (the upstream's body cut short, the route
timeout firing after the response began) is reset by the proxy (downstream_rq_tx_reset),
and ActiveStream::onResetStream counts that reset as downstream_rq_rx_reset too; an
upstream that fails before answering gets a local 503 and no reset; a response sent
before the request was all read counts downstream_rq_response_before_rq_complete, and
the stream whose request never ended is reset (rx). Over HTTP/2 the
same by RST_STREAM: the client's counts rx, the proxy's tx and rx.

One bootstrap (an HTTP/1.1 listener, a cluster on the echo backend of echo_backend.py),
run by `envoy` and by `remora proxy` side by side (each_kind), the same cases one at a
time, the counters read before and after each. Needs the envoy binary (marker `envoy`);
no root, loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.http2 import upstream_setup as us
from tests.unit.proxy.http2.h2client import H2Client
from tests.unit.proxy.proxy_helpers import free_port

pytestmark = pytest.mark.envoy

NAMES = ("downstream_rq_rx_reset", "downstream_rq_tx_reset", "downstream_rq_completed",
         "downstream_rq_response_before_rq_complete",
         "downstream_cx_destroy_active_rq", "downstream_cx_destroy_remote_active_rq",
         "downstream_cx_destroy_local_active_rq", "downstream_rq_5xx")


def _bootstrap(port: int, admin: int, echo: int) -> dict[str, Any]:
    routes = [{"match": {"prefix": "/drip"}, "route": {"cluster": "web", "timeout": "0.1s"}},
              {"match": {"prefix": "/direct"},
               "direct_response": {"status": 200, "body": {"inline_string": "hi"}}},
              {"match": {"prefix": "/"}, "route": {"cluster": "web"}}]
    return us.router_bootstrap(port, admin, routes, [us.cluster("web", echo)])


def _gone(port: int, request: bytes) -> None:
    """REQUEST sent, and the connection closed 0.2 s later (before the answer)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(request)
    time.sleep(0.2)
    s.close()


async def _h2(port: int, path: str, reset: bool) -> None:
    client = await H2Client.connect(("127.0.0.1", port))
    try:
        sid = client.start("GET", path, authority="a")
        if reset:
            await asyncio.sleep(0.2)
            client.conn.reset_stream(sid)
            client.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.responses[sid].done.wait(), 2)
        await asyncio.sleep(0.2)
    finally:
        await client.close()


CASES: dict[str, Callable[[int], Any]] = {
    "client-gone-awaiting-response":
        lambda p: _gone(p, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"),
    "client-gone-mid-body":
        lambda p: _gone(p, b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc"),
    "upstream-body-cut-short":
        lambda p: lp.exchange_closed(p, b"GET /half HTTP/1.1\r\nHost: a\r\n\r\n"),
    "route-timeout-after-response-started":
        lambda p: lp.exchange_closed(p, b"GET /drip HTTP/1.1\r\nHost: a\r\n\r\n"),
    # answered (a direct_response) while the request body is still to come
    "response-before-request-complete":
        lambda p: _gone(p, b"POST /direct HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc"),
    "upstream-gone-before-response":
        lambda p: lp.exchange_closed(p, b"GET /reset HTTP/1.1\r\nHost: a\r\n\r\n"),
    # HTTP/2 downstream (prior knowledge): the client's RST_STREAM while it awaits the
    # response; the upstream's body cut short (the proxy's RST_STREAM)
    "h2-client-reset-awaiting-response": lambda p: asyncio.run(_h2(p, "/slow", True)),
    "h2-upstream-body-cut-short": lambda p: asyncio.run(_h2(p, "/half", False)),
}


def _counts(admin: int) -> dict[str, int]:
    out = {}
    for line in lp.admin_text(admin, "/stats?filter=^http\\.in\\.").splitlines():
        name, _, value = line.partition(": ")
        if name[len("http.in."):] in NAMES:
            out[name[len("http.in."):]] = int(value)
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("stream-reset-stats")

    def story(kind: str) -> dict[str, Any]:
        port, admin = free_port(), free_port()
        cfg = tmp / f"{kind}.json"
        got: dict[str, Any] = {}
        with lp.echo_backend() as echo:
            cfg.write_text(json.dumps(_bootstrap(port, admin, echo)))
            with lp.loopback_proxy(kind, cfg, port):
                for name, case in CASES.items():
                    before = _counts(admin)
                    case(port)
                    time.sleep(1.3)  # the slow answer (1 s) and every close are over
                    after = _counts(admin)
                    got[name] = {k: after[k] - before.get(k, 0) for k in after
                                 if after[k] != before.get(k, 0)}
        return got

    return lp.each_kind(story)


@pytest.mark.parametrize("case", list(CASES))
def test_counted_as_envoy_counts(outcomes: dict[str, dict[str, Any]], case: str) -> None:
    assert outcomes["remora"][case] == outcomes["envoy"][case]


def test_what_envoy_counts(outcomes: dict[str, dict[str, Any]]) -> None:
    envoy = outcomes["envoy"]
    for case in ("client-gone-awaiting-response", "client-gone-mid-body"):
        assert envoy[case]["downstream_rq_rx_reset"] == 1
        assert envoy[case]["downstream_cx_destroy_remote_active_rq"] == 1
        assert "downstream_rq_tx_reset" not in envoy[case]
    for case in ("upstream-body-cut-short", "route-timeout-after-response-started"):
        assert envoy[case]["downstream_rq_tx_reset"] == envoy[case]["downstream_rq_rx_reset"] == 1
    assert "downstream_rq_rx_reset" not in envoy["upstream-gone-before-response"]
    early = envoy["response-before-request-complete"]
    assert early["downstream_rq_response_before_rq_complete"] == 1
    assert early["downstream_rq_rx_reset"] == 1
    assert envoy["h2-client-reset-awaiting-response"]["downstream_rq_rx_reset"] == 1
    assert envoy["h2-upstream-body-cut-short"]["downstream_rq_tx_reset"] == 1
