"""The HTTP/2 pool's decisions without sockets: which connection takes the next stream
(room under the cluster's max_concurrent_streams, not draining, not an excluded host),
and when a connection is dropped (GOAWAY, cluster update, max_requests_per_connection,
connect failure). The loopback and Envoy parity tests hold the same with real peers."""

from __future__ import annotations

import asyncio
from typing import Any

from remora.proxy.http.pool import PoolKey
from remora.proxy.http2.upstream import H2Client, H2Pool
from remora.proxy.interfaces import UpstreamError
from remora.proxy.upstream.config import Http2Options

KEY: PoolKey = ("c", "10.0.0.1", 80, None)
OTHER: PoolKey = ("c", "10.0.0.1", 80, "10.0.0.9")  # another original_src


class _Stats:
    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    def inc(self, name: str, value: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + value

    def gauge_add(self, name: str, delta: int) -> None:
        pass

    def observe(self, name: str, value_ms: float) -> None:
        pass


def _client(pool: H2Pool, owner: object, key: PoolKey = KEY, streams: int = 2,
            max_requests: int = 0) -> H2Client:
    client = H2Client(key, owner, Http2Options(max_concurrent_streams=streams),
                      max_requests, 3600.0, _Stats(), "cluster.c.", pool.forget)
    pool.open(client)  # admits the stream that opened it
    return client


def run(test: Any) -> None:
    asyncio.run(test())


def test_streams_share_a_connection_up_to_the_limit() -> None:
    async def go() -> None:
        pool, owner = H2Pool(), object()
        client = _client(pool, owner, streams=2)
        assert pool.acquire(KEY, frozenset(), owner) is client
        assert pool.acquire(KEY, frozenset(), owner) is None  # full: a new one is needed
        assert pool.acquire(OTHER, frozenset(), owner) is None  # never across keys
        client.release()
        assert pool.acquire(KEY, frozenset(), owner) is client
    run(go)


def test_goaway_and_cluster_update_take_no_new_streams() -> None:
    async def go() -> None:
        pool, owner = H2Pool(), object()
        client = _client(pool, owner, streams=10)
        client.goaway = True
        assert pool.acquire(KEY, frozenset(), owner) is None
        fresh = _client(pool, owner, streams=10)
        assert pool.acquire(KEY, frozenset(), object()) is None  # the cluster changed
        assert fresh.goaway  # drained: finishes its streams, takes none
    run(go)


def test_max_requests_per_connection() -> None:
    async def go() -> None:
        pool, owner = H2Pool(), object()
        client = _client(pool, owner, streams=10, max_requests=2)
        assert pool.acquire(KEY, frozenset(), owner) is client
        assert pool.acquire(KEY, frozenset(), owner) is None
        client.release()
        client.release()
        assert client.closed  # its last stream ended: closed and forgotten
        assert pool.connections(KEY) == []
    run(go)


def test_max_connection_duration_drains() -> None:
    async def go() -> None:
        pool, owner = H2Pool(), object()
        client = H2Client(KEY, owner, Http2Options(), 0, 3600.0, _Stats(), "c.",
                          pool.forget, max_duration=0.05)
        pool.open(client)
        assert pool.acquire(KEY, frozenset(), owner) is client
        await asyncio.sleep(0.06)
        assert pool.acquire(KEY, frozenset(), owner) is None
        assert client.goaway and not client.closed  # two streams still on it
        client.release()
        client.release()
        assert client.closed
    run(go)


def test_excluded_host_is_skipped_while_connecting_too() -> None:
    async def go() -> None:
        pool, owner = H2Pool(), object()
        _client(pool, owner, streams=10)  # still connecting: its host is not known yet
        assert pool.acquire(KEY, frozenset({"10.0.0.1:80"}), owner) is None
    run(go)


def test_connect_failure_fails_every_waiting_stream() -> None:
    async def go() -> None:
        pool, owner = H2Pool(), object()
        client = _client(pool, owner, streams=10)
        waiter = pool.acquire(KEY, frozenset(), owner)
        assert waiter is client
        client.fail(UpstreamError("UF", "delayed connect error: Connection refused"))
        pool.forget(client)
        try:
            await client.ready
        except UpstreamError as err:
            assert err.reason == "delayed connect error: Connection refused"
        else:
            raise AssertionError("a failed connection must fail its waiters")
        assert pool.acquire(KEY, frozenset(), owner) is None
        assert pool.connections() == []
    run(go)
