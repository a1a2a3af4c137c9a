"""Failure paths, each answered as Envoy 1.40 answers it (bodies, flags and
RESPONSE_CODE_DETAILS observed on a real Envoy with the same routes)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.proxy.http.fakes import (
    App,
    Client,
    FakeCluster,
    FakeClusterManager,
    FakeContext,
    build_hcm,
    hcm_config,
    proxy,
)
from tests.unit.proxy.http.test_hcm_basic import run, setup
from tests.unit.proxy.proxy_helpers import free_port

RESET = "upstream connect error or disconnect/reset before headers. "


@pytest.mark.parametrize("raw,status,details", [
    (b"GARBAGE\r\n\r\n", 400, "http1.codec_error"),
    (b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n", 400, "http1.codec_error"),
    (b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab", 400,
     "http1.codec_error"),
    (b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", 400, "http1.content_length_and_chunked_not_allowed"),
    (b"GET / HTTP/1.1\r\nhost: a\r\nx-big: " + b"a" * 70000 + b"\r\n\r\n", 431,
     "http1.headers_too_large"),
    (b"GET / HTTP/1.0\r\nhost: a\r\n\r\n", 426, "low_version"),
])
def test_malformed_request_gets_dpe_and_close_while_others_are_served(
        raw: bytes, status: int, details: str) -> None:
    async def body() -> None:
        hcm, _, _, ctx = await setup()
        async with proxy(hcm) as addr:
            good = await Client.connect(addr)
            assert (await good.get("/")).status == 200
            bad = await Client.connect(addr)
            bad.send(raw)
            r = await bad.response()
            assert r.status == status
            assert r.header("connection") == "close"
            assert r.header("content-type") == "text/plain"
            assert await bad.at_eof()
            assert (await good.get("/")).status == 200
        info = ctx.logger.infos[1]
        assert (info.response_code, info.flags_string(), info.response_code_details) == (
            status, "DPE", details)
    run(body)


def test_invalid_chunk_after_routing_gets_400_dpe() -> None:
    async def body() -> None:
        hcm, _, _, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            c.send(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
            r = await c.response()
            assert r.status == 400 and r.body == b"Bad Request"
            assert await c.at_eof()
        (info,) = ctx.logger.infos
        assert info.flags_string() == "DPE" and info.request_headers[":method"] == "POST"
    run(body)


def test_refused_upstream_is_503_uf() -> None:
    async def body() -> None:
        port = free_port()
        cluster = FakeCluster("app", [("127.0.0.1", port)])
        ctx = FakeContext(FakeClusterManager(cluster))
        hcm = build_hcm(hcm_config(), ctx)
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/")
            assert r.status == 503
            assert r.body == (RESET + "reset reason: remote connection failure").encode()
            assert (await c.get("/")).status == 503  # connection kept
        info = ctx.logger.infos[0]
        assert info.flags_string() == "UF"
        assert info.response_code_details == (
            "upstream_reset_before_response_started{remote_connection_failure|"
            "delayed_connect_error:_Connection_refused}")
        assert info.upstream_host == f"127.0.0.1:{port}"
        assert info.upstream_transport_failure_reason == "delayed connect error: Connection refused"
    run(body)


def test_route_timeout_is_504_ut() -> None:
    async def body() -> None:
        cfg = hcm_config([{"name": "to", "match": {"prefix": "/"},
                           "route": {"cluster": "app", "timeout": "0.2s"}}])
        hcm, _, _, ctx = await setup(cfg)
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/slow/2000")
            assert (r.status, r.body) == (504, b"upstream request timeout")
            assert (await c.get("/")).status == 200  # the connection still serves
        info = ctx.logger.infos[0]
        assert (info.flags_string(), info.response_code_details) == ("UT", "response_timeout")
        assert 150 <= (info.duration_ms or 0) < 1500
        assert ctx.stats.counters["cluster.app.upstream_rq_timeout"] == 1
    run(body)


def _retry_route(policy: dict[str, Any], path: str = "/") -> dict[str, Any]:
    return {"name": "r", "match": {"prefix": path},
            "route": {"cluster": "app", "timeout": "5s", "retry_policy": policy}}


PREVIOUS_HOSTS = [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
             "PreviousHostsPredicate"}}]


def test_retry_on_5xx_moves_to_another_host_with_previous_hosts() -> None:
    async def body() -> None:
        bad = await App(fixed_status=503).start()
        good = await App().start()
        # round robin would pick `bad` again for the second attempt without the predicate
        cluster = FakeCluster("app", [bad.addr, good.addr, bad.addr])
        ctx = FakeContext(FakeClusterManager(cluster))
        hcm = build_hcm(hcm_config([_retry_route({
            "retry_on": "5xx", "num_retries": 2, "retry_host_predicate": PREVIOUS_HOSTS,
            "host_selection_retry_max_attempts": "5"})]), ctx)
        async with proxy(hcm) as addr:
            for _ in range(2):
                c = await Client.connect(addr)
                r = await c.get("/")
                assert r.status == 200
                c.close()
        # the second request is picked per request too: bad (the rotation's third entry)
        # on a new connection (the first was reset when its 503 was retried, as Envoy
        # resets a retried upstream request), then good over its pooled connection
        assert len(bad.seen) == 2 and len(good.seen) == 2 and cluster.connects == 3
        info = ctx.logger.infos[0]
        assert info.upstream_request_attempt_count == 2
        assert info.upstream_host == f"127.0.0.1:{good.port}"
        assert info.flags_string() == "-"
        # both requests were retried once, both retries succeeded
        assert ctx.stats.counters["cluster.app.upstream_rq_retry"] == 2
        assert ctx.stats.counters["cluster.app.upstream_rq_retry_success"] == 2
        name, value = good.seen[0].headers[-1]
        assert name == "x-envoy-expected-rq-timeout-ms" and 4900 < int(value) <= 5000
    run(body)


def test_retries_exhausted_returns_last_response_with_urx() -> None:
    async def body() -> None:
        cfg = hcm_config([_retry_route({"retry_on": "retriable-status-codes,connect-failure",
                                        "retriable_status_codes": [503], "num_retries": 2})])
        hcm, (app,), _, ctx = await setup(cfg)
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/status/503")
            assert r.status == 503 and r.json()["path"] == "/status/503"
        assert len(app.seen) == 3
        info = ctx.logger.infos[0]
        assert (info.flags_string(), info.response_code_details) == ("URX", "via_upstream")
    run(body)


def test_connect_failure_retries_then_uf_urx() -> None:
    async def body() -> None:
        cluster = FakeCluster("app", [("127.0.0.1", free_port())])
        ctx = FakeContext(FakeClusterManager(cluster))
        hcm = build_hcm(hcm_config([_retry_route({"retry_on": "connect-failure",
                                                  "num_retries": 1})]), ctx)
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/")
            assert r.body == (RESET + "retried and the latest reset reason: "
                              "remote connection failure").encode()
        assert cluster.connects == 2
        # in the order set, as Envoy 1.40 prints them: the router marks URX before the
        # local reply records the connect failure
        assert ctx.logger.infos[0].flags_string() == "URX,UF"
    run(body)


def test_per_try_timeout_retries_then_504() -> None:
    async def body() -> None:
        cfg = hcm_config([_retry_route({"retry_on": "5xx", "num_retries": 1,
                                        "per_try_timeout": "0.1s"})])
        hcm, (app,), _, ctx = await setup(cfg)
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/slow/1000")
            assert (r.status, r.body) == (504, b"upstream request timeout")
        assert len(app.seen) == 2
        info = ctx.logger.infos[0]
        # order set, as Envoy 1.40 prints it (checked in test_envoy_parity): the retry
        # state marks URX before the timeout abort records UT
        assert (info.flags_string(), info.response_code_details) == (
            "URX,UT", "upstream_per_try_timeout")
    run(body)


def test_circuit_breaker_overflow_is_503_uo() -> None:
    async def body() -> None:
        hcm, (_app,), cluster, ctx = await setup(max_requests=1)
        async with proxy(hcm) as addr:
            slow = await Client.connect(addr)
            slow.send(b"GET /slow/300 HTTP/1.1\r\nhost: a\r\n\r\n")
            await asyncio.sleep(0.1)
            c = await Client.connect(addr)
            r = await c.get("/")
            assert r.status == 503
            assert r.body == (RESET + "reset reason: overflow").encode()
            assert (await slow.response()).status == 200
        assert cluster.overflows["requests"] == 1
        info = ctx.logger.infos[0]
        assert (info.flags_string(), info.response_code_details) == (
            "UO", "upstream_reset_before_response_started{overflow}")
        assert cluster.active["requests"] == 0  # released
    run(body)


def test_upstream_reset_before_headers_is_503_uc_and_truncation_is_upe() -> None:
    async def body() -> None:
        hcm, _, _, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/reset")
            assert r.status == 503
            assert r.body == (RESET + "reset reason: connection termination").encode()
            r = await c.get("/truncate")
            assert r.status == 200 and r.body == b"abc"
            assert c.closed or await c.at_eof()
        first, second = ctx.logger.infos
        assert (first.flags_string(), first.response_code_details) == (
            "UC", "upstream_reset_before_response_started{connection_termination}")
        assert (second.flags_string(), second.response_code_details) == (
            "UPE", "upstream_reset_after_response_started{protocol_error}")
    run(body)


def test_downstream_disconnect_while_waiting_is_dc_with_code_0() -> None:
    async def body() -> None:
        hcm, _, _, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            c.send(b"GET /slow/500 HTTP/1.1\r\nhost: a\r\n\r\n")
            await asyncio.sleep(0.1)
            c.close()
            await asyncio.sleep(0.2)
        (info,) = ctx.logger.infos
        assert (info.response_code, info.flags_string(), info.response_code_details) == (
            0, "DC", "downstream_remote_disconnect")
    run(body)


def test_no_route_direct_response_and_unknown_cluster() -> None:
    async def body() -> None:
        cfg = hcm_config([
            {"name": "direct", "match": {"path": "/direct"},
             "direct_response": {"status": 403, "body": {"inline_string": "nope"}}},
            {"name": "ghost", "match": {"prefix": "/ghost"}, "route": {"cluster": "ghost"}},
        ], domains=["app.test"])
        hcm, _, _, ctx = await setup(cfg)
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/x", host="other.test")
            assert (r.status, r.body, r.header("content-length")) == (404, b"", "0")
            assert [n for n, _ in r.headers] == ["date", "server", "content-length"]
            r = await c.get("/direct?q=1")
            assert (r.status, r.body) == (403, b"nope")
            r = await c.get("/ghost")
            assert r.status == 503
        got = [(i.response_code, i.flags_string(), i.response_code_details, i.route_name)
               for i in ctx.logger.infos]
        assert got == [(404, "NR", "route_not_found", None),
                       (403, "-", "direct_response", "direct"),
                       (503, "NC", "cluster_not_found", "ghost")]
    run(body)


def test_stream_idle_timeout_is_504_si_and_idle_connections_close() -> None:
    """A request read whole and then idle (the upstream slow): Envoy's onIdleTimeout
    answers maybeRequestTimeoutCode(remoteDecodeComplete) = 504 and keeps the connection
    (408 and a close are for a request still being read: test_response_envoy_parity.py
    idle-incomplete)."""
    async def body() -> None:
        cfg = hcm_config(stream_idle_timeout="0.2s",
                         common_http_protocol_options={"idle_timeout": "0.3s"})
        hcm, _, _, ctx = await setup(cfg)
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/slow/1000")
            assert (r.status, r.body) == (504, b"stream timeout")
            assert (await c.get("/")).status == 200  # the connection stays
            assert await c.at_eof(timeout=2.0)  # closed by idle_timeout
            idle = await Client.connect(addr)
            assert (await idle.get("/")).status == 200
            assert await idle.at_eof(timeout=2.0)  # closed by idle_timeout, not by us
        info = ctx.logger.infos[0]
        assert (info.flags_string(), info.response_code_details) == ("SI", "stream_idle_timeout")
        # both connections end by idle_timeout: the one the 504 kept, and the other
        assert ctx.stats.counters["http.inbound_0.0.0.0_18080.downstream_cx_idle_timeout"] == 2
    run(body)


def test_previous_hosts_with_one_host_retries_that_host() -> None:
    """The client sidecar's policy (previous_hosts, 2 retries on 503) with one endpoint:
    Envoy falls back to the host it already tried instead of failing with UH."""
    async def body() -> None:
        cfg = hcm_config([_retry_route({
            "retry_on": "connect-failure,retriable-status-codes", "retriable_status_codes": [503],
            "num_retries": 2, "retry_host_predicate": PREVIOUS_HOSTS,
            "host_selection_retry_max_attempts": "5"})])
        hcm, (app,), _, ctx = await setup(cfg)
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/status/503")
            assert r.status == 503 and r.json()["path"] == "/status/503"
        assert len(app.seen) == 3
        info = ctx.logger.infos[0]
        assert (info.flags_string(), info.upstream_request_attempt_count) == ("URX", 3)
    run(body)
