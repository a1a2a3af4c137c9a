"""An HTTP/2 stream's request sent on a pooled HTTP/1.1 connection without a coroutine
(router.py ``_Forward.start``, http2/stream.py ``StreamConn.in_flight``) fails, times out,
is retried, is reset by its client or outlives its connection exactly as one sent by the
router's coroutine: each case runs on a client connection whose upstream connection is
already pooled (so the stream takes that path, which the test checks with a spy on
``resume_in_flight``), and is answered, logged and counted as the same case is on
HTTP/1.1 (tests/unit/proxy/http/test_in_flight.py) and on a fresh upstream connection
(tests/unit/proxy/http2/test_stream_driving.py, test_downstream_h2.py)."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import pytest
from h2.errors import ErrorCodes

from remora.proxy.http2.stream import StreamConn
from tests.unit.proxy.http.fakes import proxy
from tests.unit.proxy.http2.h2client import H2Client
from tests.unit.proxy.http2.test_downstream_h2 import logged, run, setup
from tests.unit.proxy.native_mode import pure_only

RESET = "upstream connect error or disconnect/reset before headers. "


@pytest.fixture
def flights(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What became of each request in flight: "ended" (its usual response, no coroutine)
    or "resumed" (a coroutine again, for anything unusual)."""
    seen: list[str] = []
    resume, ended = StreamConn.resume_in_flight, StreamConn.in_flight_ended

    def spy_resume(self: StreamConn) -> None:
        seen.append("resumed")
        resume(self)

    def spy_ended(self: StreamConn) -> None:
        seen.append("ended")
        ended(self)

    monkeypatch.setattr(StreamConn, "resume_in_flight", spy_resume)
    monkeypatch.setattr(StreamConn, "in_flight_ended", spy_ended)
    return seen


def _routes(**route: Any) -> list[dict[str, Any]]:
    return [{"name": "r", "match": {"prefix": "/"}, "route": {"cluster": "app", **route}}]


def _cluster(ctx: Any) -> Any:
    cluster = ctx.cluster_manager.get("app")
    assert cluster is not None
    return cluster


def test_usual_streams_stay_callbacks(flights: list[str]) -> None:
    async def body() -> None:
        hcm, app, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            for i in range(4):
                r = await c.request("GET", f"/n/{i}")
                assert r.status == 200 and r.ended
                assert json.loads(r.body)["path"] == f"/n/{i}"
            await c.close()
        # the first made the upstream connection (a coroutine); the others went in flight
        assert flights == ["ended"] * 3
        infos = await logged(ctx, 4)
        assert [(i.response_code, i.flags_string(), i.response_code_details)
                for i in infos] == [(200, "-", "via_upstream")] * 4
        assert ctx.stats.counters["cluster.app.upstream_rq_200"] == 4
        assert _cluster(ctx).connects == 1 and len(app.seen) == 4
        assert _cluster(ctx).active.get("requests", 0) == 0
        await app.stop()
    run(body)


def test_client_reset_in_flight_is_dr_with_code_0(flights: list[str]) -> None:
    async def body() -> None:
        hcm, app, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            assert (await c.request("GET", "/warm")).status == 200
            doomed = c.start("GET", "/slow/3000")
            await asyncio.sleep(0.2)
            c.conn.reset_stream(doomed, ErrorCodes.CANCEL)
            c.flush()
            infos = await logged(ctx, 2)
            # the connection serves on, on a new upstream connection (the abandoned one
            # is closed, not pooled)
            assert (await c.request("GET", "/after")).status == 200
            await c.close()
        assert flights == ["resumed"]
        cut = infos[1]
        assert cut.request_headers[":path"] == "/slow/3000"
        # Envoy 1.40: code 0, DR, http2.remote_reset
        assert (cut.response_code, cut.flags_string(), cut.response_code_details) == (
            0, "DR", "http2.remote_reset")
        assert cut.upstream_request_attempt_count == 1
        assert _cluster(ctx).connects == 2
        assert _cluster(ctx).active.get("requests", 0) == 0
        await app.stop()
    run(body)


def test_upstream_reset_in_flight_is_503_uc(flights: list[str]) -> None:
    async def body() -> None:
        hcm, app, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            assert (await c.request("GET", "/warm")).status == 200
            r = await c.request("GET", "/reset")
            assert (r.status, r.ended) == (503, True)
            assert r.body == (RESET + "reset reason: connection termination").encode()
            await c.close()
        assert flights == ["resumed"]
        infos = await logged(ctx, 2)
        assert (infos[1].flags_string(), infos[1].response_code_details) == (
            "UC", "upstream_reset_before_response_started{connection_termination}")
        assert ctx.stats.counters["cluster.app.upstream_rq_503"] == 1
        assert _cluster(ctx).active.get("requests", 0) == 0
        await app.stop()
    run(body)


def test_route_timeout_in_flight_is_504_ut(flights: list[str]) -> None:
    async def body() -> None:
        hcm, app, ctx = await setup(routes=_routes(timeout="0.2s"))
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            assert (await c.request("GET", "/warm")).status == 200
            r = await c.request("GET", "/slow/2000")
            assert (r.status, r.body, r.ended) == (504, b"upstream request timeout", True)
            assert (await c.request("GET", "/after")).status == 200
            await c.close()
        assert flights == ["resumed"]
        infos = await logged(ctx, 3)
        info = infos[1]
        assert (info.flags_string(), info.response_code_details) == ("UT", "response_timeout")
        assert info.upstream_request_attempt_count == 1
        assert 150 <= (info.duration_ms or 0) < 1500
        counters = ctx.stats.counters
        assert counters["cluster.app.upstream_rq_timeout"] == 1
        assert counters["cluster.app.upstream_rq_504"] == 1
        assert counters["cluster.app.upstream_rq_200"] == 2
        # the timed-out upstream connection was closed: the third request needed a new one
        assert _cluster(ctx).connects == 2
        await app.stop()
    run(body)


def test_retried_status_in_flight_ends_with_urx(flights: list[str]) -> None:
    async def body() -> None:
        hcm, app, ctx = await setup(routes=_routes(timeout="5s", retry_policy={
            "retry_on": "retriable-status-codes", "retriable_status_codes": [503],
            "num_retries": 2}))
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            assert (await c.request("GET", "/warm")).status == 200
            r = await c.request("GET", "/status/503")
            assert r.status == 503 and json.loads(r.body)["path"] == "/status/503"
            await c.close()
        assert flights == ["resumed"]
        assert len(app.seen) == 4
        infos = await logged(ctx, 2)
        info = infos[1]
        assert (info.flags_string(), info.response_code_details) == ("URX", "via_upstream")
        assert info.upstream_request_attempt_count == 3
        counters = ctx.stats.counters
        assert counters["cluster.app.upstream_rq_retry"] == 2
        assert counters["cluster.app.upstream_rq_503"] == 1
        assert counters.get("cluster.app.upstream_rq_retry_success", 0) == 0
        cluster = _cluster(ctx)
        assert cluster.active.get("retries", 0) == 0
        assert cluster.active.get("requests", 0) == 0
        await app.stop()
    run(body)


def test_stream_idle_timeout_in_flight_is_504_si(flights: list[str]) -> None:
    # a request read whole: maybeRequestTimeoutCode(remoteDecodeComplete) is 504
    async def body() -> None:
        hcm, app, ctx = await setup(stream_idle_timeout="0.3s")
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            assert (await c.request("GET", "/warm")).status == 200
            r = await c.request("GET", "/slow/3000")
            assert (r.status, r.body, r.ended) == (504, b"stream timeout", True)
            await c.close()
        assert flights == ["resumed"]
        infos = await logged(ctx, 2)
        assert (infos[1].flags_string(), infos[1].response_code_details) == (
            "SI", "stream_idle_timeout")
        assert _cluster(ctx).active.get("requests", 0) == 0
        await app.stop()
    run(body)


def test_connection_end_in_flight_is_dc(flights: list[str]) -> None:
    async def body() -> None:
        hcm, app, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            assert (await c.request("GET", "/warm")).status == 200
            c.start("GET", "/slow/3000")
            await asyncio.sleep(0.2)
            c.writer.close()  # the client goes away
            infos = await logged(ctx, 2)
        assert flights == ["resumed"]
        cut = infos[1]
        assert (cut.response_code, cut.flags_string(), cut.response_code_details) == (
            0, "DC", "downstream_remote_disconnect")
        assert _cluster(ctx).active.get("requests", 0) == 0
        await app.stop()
    run(body)


def test_requests_overflow_with_a_pooled_connection_ready_is_503_uo(
        flights: list[str]) -> None:
    async def body() -> None:
        hcm, app, ctx = await setup()
        cluster = _cluster(ctx)
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            # two upstream connections pooled
            a, b = c.start("GET", "/slow/100"), c.start("GET", "/slow/100")
            for sid in (a, b):
                await asyncio.wait_for(c.responses[sid].done.wait(), 5)
                assert c.responses[sid].status == 200
            assert cluster.connects == 2
            cluster.limits["requests"] = 1
            held = c.start("GET", "/slow/300")  # holds the one slot, in flight
            await asyncio.sleep(0.1)
            r = await c.request("GET", "/")
            assert r.status == 503
            assert r.body == (RESET + "reset reason: overflow").encode()
            await asyncio.wait_for(c.responses[held].done.wait(), 5)
            assert c.responses[held].status == 200
            # the pooled connection the refused request had taken is idle again
            assert (await c.request("GET", "/")).status == 200
            assert cluster.connects == 2
            await c.close()
        assert flights == ["ended", "ended"]  # the refused one never went in flight
        infos = await logged(ctx, 5)
        (info,) = [i for i in infos if i.response_code == 503]
        assert (info.flags_string(), info.response_code_details) == (
            "UO", "upstream_reset_before_response_started{overflow}")
        assert cluster.overflows["requests"] == 1
        assert cluster.active["requests"] == 0
        await app.stop()
    run(body)


def test_client_goaway_lets_the_stream_in_flight_finish(flights: list[str]) -> None:
    async def body() -> None:
        hcm, app, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            assert (await c.request("GET", "/warm")).status == 200
            sid = c.start("GET", "/slow/300")
            await asyncio.sleep(0.1)
            # GOAWAY (NO_ERROR; last stream 0: the server opened none), written raw: the
            # h2 library's own close_connection would stop its client from reading the
            # response
            c.writer.write(struct.pack(">I", 8)[1:] + bytes([7, 0]) + struct.pack(
                ">III", 0, 0, 0))
            r = c.responses[sid]
            await asyncio.wait_for(r.done.wait(), 5)
            assert (r.status, r.ended) == (200, True)
            assert json.loads(r.body)["path"] == "/slow/300"
            # the connection closes once its last stream ended
            await asyncio.wait_for(c.closed.wait(), 5)
        assert flights == ["ended"]
        infos = await logged(ctx, 2)
        assert [(i.response_code, i.flags_string()) for i in infos] == [(200, "-")] * 2
        assert _cluster(ctx).active.get("requests", 0) == 0
        await app.stop()
    run(body)


@pure_only  # it patches Router.start_http1 and ConnectionPool.take_ready (compiled)
def test_a_cancellation_while_the_stream_starts_lands_at_its_wait(
        flights: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted inside ``hcm.start`` (here as the router takes its pooled connection,
    before the request is in flight): as ``_drive`` does for a coroutine that got to its
    response wait, the request becomes the router's coroutine once started and the
    cancellation lands at its wait the next turn: the stream ends as a disconnect (code
    0, DC), is reset, logged once, its slot is given back, the connection serves on."""
    from remora.proxy.http.pool import ConnectionPool
    from remora.proxy.http.router import Router
    start, take_ready = Router.start_http1, ConnectionPool.take_ready
    starting: list[Any] = []
    armed: list[bool] = []

    def start_http1(self: Router, stream: Any) -> Any:
        starting.append(stream)
        try:
            return start(self, stream)
        finally:
            starting.pop()

    def take_ready_then_cancel(self: ConnectionPool, *args: Any) -> Any:
        pc = take_ready(self, *args)
        if pc is not None and armed and armed.pop():
            conn = starting[-1].conn
            assert conn.in_flight is None
            conn.cancel_active("dc")
        return pc

    monkeypatch.setattr(Router, "start_http1", start_http1)
    monkeypatch.setattr(ConnectionPool, "take_ready", take_ready_then_cancel)

    async def body() -> None:
        hcm, app, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            assert (await c.request("GET", "/warm")).status == 200
            armed.append(True)
            r = await c.request("GET", "/slow/200")
            assert r.status == 0 and r.reset is not None  # reset, nothing answered
            assert (await c.request("GET", "/after")).status == 200
            await c.close()
        assert flights == ["resumed"]
        await asyncio.sleep(0.3)
        infos = ctx.logger.infos
        assert [(i.request_headers[":path"], i.response_code, i.flags_string(),
                 i.response_code_details) for i in infos] == [
            ("/warm", 200, "-", "via_upstream"),
            ("/slow/200", 0, "DC", "downstream_remote_disconnect"),
            ("/after", 200, "-", "via_upstream")]
        assert _cluster(ctx).active.get("requests", 0) == 0
        await app.stop()
    run(body)
