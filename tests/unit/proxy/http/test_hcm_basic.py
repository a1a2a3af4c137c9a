"""The connection manager end to end over loopback: routing, headers, keep-alive, pooling,
bodies, pipelining and the access-log record."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
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

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def run(fn: Callable[..., Awaitable[None]], *args: Any) -> None:
    asyncio.run(asyncio.wait_for(fn(*args), 20))


async def setup(cfg: dict[str, Any] | None = None, apps: int = 1, original_src: bool = False,
                **cluster_kw: Any) -> tuple[Any, list[App], FakeCluster, FakeContext]:
    started = [await App().start() for _ in range(apps)]
    cluster = FakeCluster("app", [a.addr for a in started], **cluster_kw)
    ctx = FakeContext(FakeClusterManager(cluster))
    hcm = build_hcm(cfg or hcm_config(server_name="istio-envoy"), ctx)
    return hcm, started, cluster, ctx


def test_request_is_proxied_with_envoys_headers_and_logged() -> None:
    async def body() -> None:
        hcm, (app,), _, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/common/sauth", host="srv:18080", headers="user-agent: Go\r\n")
            assert r.status == 200
            seen = r.json()
            names = [n for n, _ in seen["headers"]]
            assert names[0] == "host" and seen["headers"][0][1] == "srv:18080"
            hm = dict(seen["headers"])
            assert hm["x-forwarded-proto"] == "http"
            assert UUID.match(hm["x-request-id"])
            assert "x-forwarded-for" not in hm  # use_remote_address false: XFF untouched
            assert names[-2:] == ["x-forwarded-proto", "x-request-id"]
            assert r.header("server") == "istio-envoy"  # server_name overwrites app's
            assert r.header("x-envoy-upstream-service-time") is not None
            assert r.header("date") is not None
            c.close()
        await asyncio.sleep(0.05)
        (info,) = ctx.logger.infos
        assert info.response_code == 200 and info.response_code_details == "via_upstream"
        assert info.flags_string() == "-"
        assert info.protocol == "HTTP/1.1" and info.route_name == "default"
        assert info.upstream_cluster == "app" and info.upstream_host == f"127.0.0.1:{app.port}"
        assert info.upstream_local_address and info.upstream_local_address.startswith("127.")
        assert info.listener_name == "virtualInbound"
        rh = info.request_headers or {}
        assert rh[":method"] == "GET" and rh[":path"] == "/common/sauth"
        assert rh[":authority"] == "srv:18080" and rh["user-agent"] == "Go"
        assert rh["x-request-id"] == hm["x-request-id"]
        assert info.bytes_sent == len(r.body) and info.bytes_received == 0
        assert info.duration_ms is not None
        assert ctx.stats.counters["http.inbound_0.0.0.0_18080.downstream_rq_2xx"] == 1
        assert ctx.stats.counters["cluster.app.upstream_rq_200"] == 1
    run(body)


def test_keep_alive_reuses_one_upstream_connection_across_clients() -> None:
    async def body() -> None:
        hcm, (app,), cluster, _ = await setup()
        async with proxy(hcm) as addr:
            c1 = await Client.connect(addr)
            for _ in range(3):
                assert (await c1.get("/")).status == 200
            c2 = await Client.connect(addr)
            assert (await c2.get("/")).status == 200
            assert not c1.closed
        assert cluster.connects == 1 and app.connections == 1
    run(body)


def test_original_src_pools_per_source_address() -> None:
    async def body() -> None:
        hcm, (_app,), cluster, ctx = await setup(original_src=True)
        async with proxy(hcm, original_src=True) as addr:
            a1 = await Client.connect(addr, local_ip="127.0.0.2")
            b1 = await Client.connect(addr, local_ip="127.0.0.3")
            peer_a = (await a1.get("/")).json()["peer"]
            peer_b = (await b1.get("/")).json()["peer"]
            assert peer_a.startswith("127.0.0.2:") and peer_b.startswith("127.0.0.3:")
            assert cluster.connects == 2
            a2 = await Client.connect(addr, local_ip="127.0.0.2")
            assert (await a2.get("/")).json()["peer"] == peer_a  # same source: reused
            assert cluster.connects == 2
        assert ctx.logger.infos[2].upstream_local_address == peer_a
    run(body)


def test_bodies_content_length_and_chunked_both_ways() -> None:
    async def body() -> None:
        hcm, (_app,), _, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            c.send(b"POST /cl HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello")
            r = await c.response()
            assert r.json()["body"] == "hello"
            assert dict(r.json()["headers"])["content-length"] == "5"
            c.send(b"POST /ch HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n")
            await asyncio.sleep(0.05)  # the rest of the body arrives after the router left
            c.send(b"4\r\ndefg\r\n0\r\n\r\n")
            r = await c.response()
            seen = r.json()
            assert seen["body"] == "abcdefg"
            assert ("transfer-encoding", "chunked") in [tuple(h) for h in seen["headers"]]
            r = await c.get("/chunked")
            assert r.body == b"hello world" and r.header("transfer-encoding") == "chunked"
            r = await c.get("/", method="HEAD")
            assert r.status == 200 and r.body == b""
            r = await c.get("/status/204")
            assert r.status == 204 and r.body == b""
            big = b"x" * 300_000
            c.send(b"PUT /big HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % len(big) + big)
            r = await c.response()
            assert len(r.json()["body"]) == len(big)
        received = [i.bytes_received for i in ctx.logger.infos]
        assert received[:2] == [5, 7] and received[-1] == 300_000
        assert ctx.logger.infos[2].bytes_sent == 11
    run(body)


def test_close_delimited_response_is_rechunked_and_connection_close_honoured() -> None:
    async def body() -> None:
        hcm, (_app,), _cluster, _ = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/close")
            assert r.body == b"until close" and r.header("transfer-encoding") == "chunked"
            assert (await c.get("/")).status == 200  # downstream stays open
            r = await c.get("/", headers="connection: close\r\n")
            assert r.header("connection") == "close"
            assert await c.at_eof()
    run(body)


def test_pipelined_requests_answered_in_order() -> None:
    async def body() -> None:
        hcm, (_app,), _, _ = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            c.send(b"GET /slow/50 HTTP/1.1\r\nhost: a\r\n\r\nGET /two HTTP/1.1\r\nhost: a\r\n\r\n"
                   b"GET /three HTTP/1.1\r\nhost: a\r\n\r\n")
            paths = [(await c.response()).json()["path"] for _ in range(3)]
            assert paths == ["/slow/50", "/two", "/three"]
    run(body)


def test_expect_100_continue_answered_by_the_proxy() -> None:
    async def body() -> None:
        hcm, (_app,), _, _ = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            c.send(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\nexpect: 100-continue"
                   b"\r\n\r\n")
            interim = await c.reader.readuntil(b"\r\n\r\n")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            c.send(b"abc")
            seen = (await c.response()).json()
            assert seen["body"] == "abc"
            assert "expect" not in dict(seen["headers"])
    run(body)


@pytest.mark.parametrize("path,expected", [("/a/./b/../c", "/a/c"), ("/%7euser", "/~user")])
def test_normalize_path_forwards_the_normalized_path(path: str, expected: str) -> None:
    async def body() -> None:
        hcm, (_app,), _, _ = await setup(hcm_config(normalize_path=True))
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            assert (await c.get(path)).json()["path"] == expected
    run(body)


def test_websocket_upgrade_is_tunnelled() -> None:
    async def body() -> None:
        hcm, (app,), _, ctx = await setup(hcm_config(upgrade_configs=[
            {"upgrade_type": "websocket"}]))
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            c.send(b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\n"
                   b"upgrade: websocket\r\n\r\nearly ")
            head = await c.reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            # the app's own connection line, as it wrote it (Envoy keeps it in place)
            assert b"connection: Upgrade\r\n" in head and b"upgrade: websocket\r\n" in head
            assert await c.reader.readexactly(15) == b"hello from app|"
            c.send(b"frames")
            assert await c.reader.readexactly(12) == b"EARLY FRAMES"
            c.close()
            await asyncio.sleep(0.1)
        seen = dict(app.seen[0].headers)
        assert seen["upgrade"] == "websocket" and seen["connection"] == "upgrade"
        (info,) = ctx.logger.infos
        assert info.response_code == 101 and info.bytes_received == 12
        # the client closed the tunnel (Envoy: DC downstream_remote_disconnect)
        assert list(info.response_flags) == ["DC"]
    run(body)


def test_upgrade_refused_without_upgrade_config() -> None:
    async def body() -> None:
        hcm, (app,), _, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/ws", headers="connection: upgrade\r\nupgrade: websocket\r\n")
            assert r.status == 403
        assert app.seen == []
        assert ctx.logger.infos[0].response_code_details == "upgrade_failed"
    run(body)


def test_cluster_http_protocol_options_bound_pooled_connections() -> None:
    from types import SimpleNamespace

    async def body() -> None:
        hcm, (_app,), cluster, _ = await setup()
        cluster.config = SimpleNamespace(http_protocol_options=SimpleNamespace(  # type: ignore[attr-defined]
            idle_timeout=None, max_requests_per_connection=2, max_connection_duration=None))
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            for _ in range(5):
                assert (await c.get("/")).status == 200
        assert cluster.connects == 3  # 2 + 2 + 1 requests
    run(body)


def test_updated_cluster_does_not_reuse_the_old_versions_connections() -> None:
    async def body() -> None:
        hcm, (app,), cluster, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            assert (await c.get("/")).status == 200
            newer = FakeCluster("app", [app.addr])  # what a CDS update installs
            ctx.cluster_manager.clusters["app"] = newer
            assert (await c.get("/")).status == 200
            assert (await c.get("/")).status == 200
        assert cluster.connects == 1 and newer.connects == 1 and app.connections == 2
    run(body)
