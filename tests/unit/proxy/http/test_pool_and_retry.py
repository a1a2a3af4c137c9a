"""The upstream pool and the retry policy without sockets: events in (release, bytes that
arrive while idle, time passing, a cluster update, a closed transport), decisions out
(which connection is handed to the next request, which are closed and counted).

What the pool guarantees (docs/proxy-http.md): a connection goes back to the pool only
clean, is never handed to another source address's key, never to an excluded host, and
bytes that arrive for no request close it (upstream_cx_protocol_error), never reaching a
client.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest

from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http.pool import ConnectionPool, PooledConnection, PoolKey, PoolLimits
from remora.proxy.http.retry import RetryPolicy, parse_retry_policy
from remora.proxy.interfaces import Upstream


class _Transport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def get_protocol(self) -> object:
        return None


class _Writer:
    def __init__(self) -> None:
        self.transport = _Transport()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.transport.closing = True


class _Reader:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self.eof = False

    def at_eof(self) -> bool:
        return self.eof and not self._buffer


KEY_A: PoolKey = ("inbound|18080||", "10.20.0.77", 18080, None)
KEY_B: PoolKey = ("inbound|18080||", "10.20.0.77", 18080, "10.20.0.78")  # original_src


class _Conn:
    """One fake upstream connection and what happened to it."""

    def __init__(self, host: str = "127.0.0.1:18080", key: PoolKey = KEY_A,
                 limits: PoolLimits | None = None, owner: object = None) -> None:
        self.reader = _Reader()
        self.writer = _Writer()
        self.strays = 0
        up = Upstream(cast(asyncio.StreamReader, self.reader),
                      cast(asyncio.StreamWriter, self.writer), host, "127.0.0.6:40000")
        self.pc = PooledConnection(key, up, limits or PoolLimits(), owner, self._stray)

    def _stray(self) -> None:
        self.strays += 1

    @property
    def closed(self) -> bool:
        return self.writer.closed


def test_released_connection_is_reused_for_its_key_only() -> None:
    pool = ConnectionPool()
    a = _Conn()
    pool.release(a.pc)
    assert pool.acquire(KEY_B, frozenset()) is None  # another client's source address
    assert pool.acquire(KEY_A, frozenset()) is a.pc
    assert pool.acquire(KEY_A, frozenset()) is None  # handed out once
    assert not a.closed and a.pc.requests == 1


def test_most_recently_released_first() -> None:
    pool = ConnectionPool()
    a, b = _Conn(), _Conn()
    pool.release(a.pc)
    pool.release(b.pc)
    assert pool.acquire(KEY_A, frozenset()) is b.pc
    assert pool.acquire(KEY_A, frozenset()) is a.pc


def test_excluded_host_is_skipped_and_kept() -> None:
    pool = ConnectionPool()
    a, b = _Conn("10.0.0.1:80"), _Conn("10.0.0.2:80")
    pool.release(a.pc)
    pool.release(b.pc)
    assert pool.acquire(KEY_A, frozenset({"10.0.0.2:80"})) is a.pc  # retry previous_hosts
    assert pool.idle_count(KEY_A) == 1 and not b.closed
    assert pool.acquire(KEY_A, frozenset({"10.0.0.2:80"})) is None
    assert pool.acquire(KEY_A, frozenset()) is b.pc


def test_bytes_buffered_at_release_close_it_and_count() -> None:
    pool = ConnectionPool()
    a = _Conn()
    a.reader._buffer += b"HTTP/1.1 200 OK\r\n\r\n"  # a second, unrequested response
    pool.release(a.pc)
    assert a.closed and a.strays == 1
    assert pool.acquire(KEY_A, frozenset()) is None


def test_bytes_arriving_while_idle_close_it_before_reuse() -> None:
    pool = ConnectionPool()
    a, b = _Conn(), _Conn()
    pool.release(b.pc)
    pool.release(a.pc)
    a.reader._buffer += b"x"  # arrived after release, while idle
    assert pool.acquire(KEY_A, frozenset()) is b.pc  # a is dropped, never handed out
    assert a.closed and a.strays == 1
    assert pool.idle_count() == 0


def test_upstream_closed_while_idle_is_not_reused() -> None:
    pool = ConnectionPool()
    a, b = _Conn(), _Conn()
    pool.release(a.pc)
    pool.release(b.pc)
    b.reader.eof = True  # the upstream's FIN
    assert pool.acquire(KEY_A, frozenset()) is a.pc
    assert b.closed and b.strays == 0  # a FIN is no protocol error


def test_closed_while_idle_leaves_the_pool_at_once() -> None:
    """A host is picked per request, so the key of a host that left the cluster is never
    asked for again: its idle connection, once closed, leaves the pool when the close is
    seen (connection_lost), not at a next acquire of its key."""
    pool = ConnectionPool()
    a, b = _Conn(), _Conn(key=KEY_B)
    pool.release(a.pc)
    pool.release(b.pc)
    a.pc.connection_lost(None)  # the upstream closed it while idle
    assert pool.idle_count(KEY_A) == 0 and pool.idle_count() == 1
    assert KEY_A not in pool._idle  # no empty list kept per gone host
    assert a.pc.pool is None and pool.acquire(KEY_B, frozenset()) is b.pc


def test_drop_hosts_closes_the_clusters_idle_connections_to_them() -> None:
    """An EDS update removed host 10.20.0.77:18080 from cluster OWNER: its idle
    connections close (Envoy drains a removed host's pools); another cluster's to the same
    address, and OWNER's to other hosts, stay."""
    owner, other = object(), object()
    pool = ConnectionPool()
    gone = _Conn(owner=owner)
    elsewhere = _Conn(owner=other)
    other_host_key: PoolKey = ("inbound|18080||", "10.20.0.9", 18080, None)
    kept = _Conn(key=other_host_key, owner=owner)
    for c in (gone, elsewhere, kept):
        pool.release(c.pc)
    assert pool.drop_hosts(owner, {("10.20.0.77", 18080)}) == 1
    assert gone.closed and not elsewhere.closed and not kept.closed
    assert pool.acquire(KEY_A, frozenset(), other) is elsewhere.pc
    assert pool.acquire(other_host_key, frozenset(), owner) is kept.pc
    assert pool.idle_count() == 0


def test_drop_hosts_retires_a_busy_connection_to_them() -> None:
    """A connection carrying a request when its host leaves the cluster finishes that
    request and then closes instead of going back to the pool (Envoy lets the streams of a
    drained pool finish)."""
    owner = object()
    pool = ConnectionPool()
    busy, other = _Conn(owner=owner), _Conn(owner=object())
    pool.track(busy.pc)
    pool.track(other.pc)
    pool.drop_hosts(owner, {("10.20.0.77", 18080)})
    assert not busy.closed  # its request goes on
    pool.release(busy.pc)  # ... and ends: closed, not kept
    assert busy.closed and pool.idle_count() == 0
    pool.release(other.pc)  # another cluster's connection to that address is kept
    assert not other.closed and pool.idle_count(KEY_A) == 1


def test_max_requests_per_connection() -> None:
    pool = ConnectionPool()
    a = _Conn(limits=PoolLimits(max_requests_per_connection=2))
    pool.release(a.pc)  # after request 1
    assert pool.acquire(KEY_A, frozenset()) is a.pc
    pool.release(a.pc)  # after request 2: the limit
    assert a.closed and pool.idle_count() == 0


def test_idle_timeout_and_max_connection_duration() -> None:
    pool = ConnectionPool()
    a = _Conn(limits=PoolLimits(idle_timeout=5.0))
    b = _Conn(limits=PoolLimits(max_connection_duration=60.0))
    pool.release(a.pc)
    pool.release(b.pc)
    a.pc.idle_since = time.monotonic() - 6  # idle longer than its idle_timeout
    b.pc.created = time.monotonic() - 61  # older than max_connection_duration
    assert pool.acquire(KEY_A, frozenset()) is None
    assert a.closed and b.closed


def test_a_cluster_update_drains_the_old_connections() -> None:
    pool = ConnectionPool()
    old_cluster, new_cluster = object(), object()
    a = _Conn(owner=old_cluster)
    pool.release(a.pc)
    assert pool.acquire(KEY_A, frozenset(), new_cluster) is None
    assert a.closed


# -- retries -----------------------------------------------------------------------------
def _policy(**raw: Any) -> RetryPolicy:
    return parse_retry_policy(Fields(raw, "route.retry_policy"))


@pytest.mark.parametrize(("retry_on", "status", "grpc", "retried"), [
    ("5xx", 500, None, True),
    ("5xx", 503, None, True),
    ("5xx", 404, None, False),
    ("gateway-error", 502, None, True),
    ("gateway-error", 500, None, False),  # only 502, 503, 504
    ("retriable-4xx", 409, None, True),
    ("retriable-4xx", 404, None, False),
    ("envoy-ratelimited", 429, None, True),
    ("unavailable", 200, "14", True),
    ("unavailable", 200, "13", False),
    ("reset,connect-failure", 503, None, False),  # no status condition
])
def test_retry_on_status(retry_on: str, status: int, grpc: str | None, retried: bool) -> None:
    assert _policy(retry_on=retry_on).retry_on_status(status, grpc) is retried


def test_retriable_status_codes() -> None:
    p = _policy(retry_on="retriable-status-codes", retriable_status_codes=[418])
    assert p.retry_on_status(418, None) and not p.retry_on_status(500, None)


def test_connect_failure_and_reset_conditions() -> None:
    assert _policy(retry_on="connect-failure").retry_on_connect_failure()
    assert _policy(retry_on="gateway-error").retry_on_connect_failure()
    assert not _policy(retry_on="retriable-4xx").retry_on_connect_failure()
    before = _policy(retry_on="reset-before-request")
    assert before.retry_on_reset(False) and not before.retry_on_reset(True)
    assert _policy(retry_on="reset").retry_on_reset(True)


def test_backoff_is_jittered_exponential_and_capped() -> None:
    p = _policy(retry_on="5xx", retry_back_off={"base_interval": "0.1s",
                                                "max_interval": "0.5s"})
    for n, upper in ((1, 0.1), (2, 0.3), (3, 0.5), (8, 0.5)):
        waits = [p.backoff(n) for _ in range(200)]
        assert all(0 <= w < upper + 1e-9 for w in waits)
        assert max(waits) > upper / 2  # jitter covers the range, not a constant
    assert _policy(retry_on="5xx").max_interval == pytest.approx(0.25)  # 10x base


def test_unknown_condition_is_refused_with_the_list() -> None:
    with pytest.raises(ConfigError, match="unsupported retry_on condition 'sometimes'"):
        _policy(retry_on="5xx,sometimes")
