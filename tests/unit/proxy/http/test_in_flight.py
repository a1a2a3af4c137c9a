"""A request sent on a pooled connection without a coroutine (router.py ``_Forward.start``,
connection.py ``in_flight``) fails, times out, is retried or loses its client exactly as
one sent by the router's coroutine: each case runs on a client connection whose upstream
connection is already pooled (so the request takes that path, which the test checks),
and is answered, logged and counted as the same case on a fresh upstream connection
(tests/unit/proxy/http/test_hcm_errors.py, checked against Envoy 1.40 there)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from remora.proxy.http.connection import Http1Connection
from tests.unit.proxy.http.fakes import Client, hcm_config, proxy
from tests.unit.proxy.http.test_hcm_basic import run, setup
from tests.unit.proxy.native_mode import COMPILED

RESET = "upstream connect error or disconnect/reset before headers. "


@pytest.fixture
def resumed(monkeypatch: pytest.MonkeyPatch) -> list[str] | None:
    """How often a request in flight became a coroutine again (and why); None when the
    connection is mypyc-compiled, whose own calls a patched method does not see (these
    tests run as pure Python too: tests/unit/proxy/test_native_build.py)."""
    if COMPILED:
        return None
    seen: list[str] = []
    original = Http1Connection.resume_in_flight

    def spy(self: Http1Connection) -> None:
        seen.append("resumed")
        original(self)

    monkeypatch.setattr(Http1Connection, "resume_in_flight", spy)
    return seen


def _route(**route: Any) -> dict[str, Any]:
    return {"name": "r", "match": {"prefix": "/"}, "route": {"cluster": "app", **route}}


def test_route_timeout_in_flight_is_504_ut(resumed: list[str] | None) -> None:
    async def body() -> None:
        hcm, _, cluster, ctx = await setup(hcm_config([_route(timeout="0.2s")]))
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            assert (await c.get("/")).status == 200  # pools the upstream connection
            r = await c.get("/slow/2000")
            assert (r.status, r.body) == (504, b"upstream request timeout")
            assert (await c.get("/")).status == 200  # the connection still serves
        assert resumed is None or resumed == ["resumed"]
        info = ctx.logger.infos[1]
        assert (info.flags_string(), info.response_code_details) == ("UT", "response_timeout")
        assert info.upstream_request_attempt_count == 1
        assert 150 <= (info.duration_ms or 0) < 1500
        counters = ctx.stats.counters
        assert counters["cluster.app.upstream_rq_timeout"] == 1
        assert counters["cluster.app.upstream_rq_504"] == 1
        assert counters["cluster.app.upstream_rq_200"] == 2
        # the timed-out connection was closed: the third request needed a new one
        assert cluster.connects == 2
    run(body)


def test_retried_status_in_flight_ends_with_urx(resumed: list[str] | None) -> None:
    async def body() -> None:
        cfg = hcm_config([_route(timeout="5s", retry_policy={
            "retry_on": "retriable-status-codes", "retriable_status_codes": [503],
            "num_retries": 2})])
        hcm, (app,), _, ctx = await setup(cfg)
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            assert (await c.get("/")).status == 200
            r = await c.get("/status/503")
            assert r.status == 503 and r.json()["path"] == "/status/503"
        assert resumed is None or resumed == ["resumed"]
        assert len(app.seen) == 4
        info = ctx.logger.infos[1]
        assert (info.flags_string(), info.response_code_details) == ("URX", "via_upstream")
        assert info.upstream_request_attempt_count == 3
        counters = ctx.stats.counters
        assert counters["cluster.app.upstream_rq_retry"] == 2
        assert counters["cluster.app.upstream_rq_503"] == 1
        assert counters.get("cluster.app.upstream_rq_retry_success", 0) == 0
        # every "retries" slot and "requests" slot is given back
        cluster = ctx.cluster_manager.get("app")
        assert cluster is not None
        assert cluster.active.get("retries", 0) == 0
        assert cluster.active.get("requests", 0) == 0
    run(body)


def test_upstream_reset_in_flight_is_503_uc(resumed: list[str] | None) -> None:
    async def body() -> None:
        hcm, _, _, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            assert (await c.get("/")).status == 200
            r = await c.get("/reset")
            assert r.status == 503
            assert r.body == (RESET + "reset reason: connection termination").encode()
        assert resumed is None or resumed == ["resumed"]
        info = ctx.logger.infos[1]
        assert (info.flags_string(), info.response_code_details) == (
            "UC", "upstream_reset_before_response_started{connection_termination}")
    run(body)


def test_downstream_disconnect_in_flight_is_dc_with_code_0(resumed: list[str] | None) -> None:
    async def body() -> None:
        hcm, _, _, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            assert (await c.get("/")).status == 200
            c.send(b"GET /slow/500 HTTP/1.1\r\nhost: a\r\n\r\n")
            await asyncio.sleep(0.1)
            c.close()
            await asyncio.sleep(0.2)
        assert resumed is None or resumed == ["resumed"]
        info = ctx.logger.infos[1]
        assert (info.response_code, info.flags_string(), info.response_code_details) == (
            0, "DC", "downstream_remote_disconnect")
        cluster = ctx.cluster_manager.get("app")
        assert cluster is not None and cluster.active.get("requests", 0) == 0
    run(body)


def test_usual_requests_stay_callbacks(resumed: list[str] | None) -> None:
    async def body() -> None:
        hcm, (app,), cluster, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            for i in range(5):
                r = await c.get(f"/n/{i}")
                assert r.status == 200 and r.json()["path"] == f"/n/{i}"
        assert resumed is None or resumed == []
        assert cluster.connects == 1 and len(app.seen) == 5
        assert [i.response_code for i in ctx.logger.infos] == [200] * 5
        assert ctx.stats.counters["cluster.app.upstream_rq_200"] == 5
    run(body)


def test_requests_overflow_with_a_pooled_connection_ready_is_503_uo(
        resumed: list[str] | None) -> None:
    async def body() -> None:
        hcm, _, cluster, ctx = await setup()
        async with proxy(hcm) as addr:
            a, b = await Client.connect(addr), await Client.connect(addr)
            # two upstream connections pooled
            ra, rb = await asyncio.gather(a.get("/slow/100"), b.get("/slow/100"))
            assert (ra.status, rb.status) == (200, 200) and cluster.connects == 2
            cluster.limits["requests"] = 1
            a.send(b"GET /slow/300 HTTP/1.1\r\nhost: a\r\n\r\n")  # holds the one slot
            await asyncio.sleep(0.1)
            r = await b.get("/")
            assert r.status == 503
            assert r.body == (RESET + "reset reason: overflow").encode()
            assert (await a.response()).status == 200
            # the pooled connection the refused request had taken is idle again
            assert (await b.get("/")).status == 200
            assert cluster.connects == 2
        (info,) = [i for i in ctx.logger.infos if i.response_code == 503]
        assert (info.flags_string(), info.response_code_details) == (
            "UO", "upstream_reset_before_response_started{overflow}")
        assert cluster.overflows["requests"] == 1
        assert cluster.active["requests"] == 0
    run(body)
