"""Host selection under the previous_hosts retry predicate (``exclude_hosts``), as Envoy's
load balancer does it: the predicate can reject a pick, which is then re-picked at most
host_selection_retry_max_attempts times (default 1); when every pick is rejected the last
one is used anyway. A one-endpoint cluster therefore retries its only host (Envoy logs
``URX,UF`` for a refused one) instead of failing with ``UH`` (no_healthy_upstream).
Loopback only."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from remora.proxy.interfaces import ConnectionFacts, UpstreamError
from remora.proxy.stats import StatsStore
from remora.proxy.stream_info import StreamInfo
from remora.proxy.upstream.cluster import ClusterImpl
from remora.proxy.upstream.config import parse_cluster
from tests.unit.proxy.proxy_helpers import free_port, static_cluster

FACTS = ConnectionFacts("127.0.0.1", 15001, "127.0.0.1", 40000, "127.0.0.1")


def cluster(*ports: int, **extra: Any) -> ClusterImpl:
    raw = static_cluster("c", *ports, **extra)
    return ClusterImpl(parse_cluster(raw, "clusters[0]"), StatsStore())


async def listening() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock, int(sock.getsockname()[1])


def test_one_host_already_tried_is_connected_again() -> None:
    async def main() -> None:
        sock, port = await listening()
        c = cluster(port)
        info = StreamInfo()
        up = await asyncio.wait_for(
            c.connect(FACTS, info, frozenset({f"127.0.0.1:{port}"})), 3)
        assert info.upstream_host == f"127.0.0.1:{port}"
        assert c.stats.counters["cluster.c.upstream_cx_none_healthy"] == 0
        assert c.stats.counters["cluster.c.upstream_cx_total"] == 1
        up.writer.close()
        sock.close()
    asyncio.run(main())


def test_one_refused_host_already_tried_fails_uf_not_uh() -> None:
    """The connect-failure retry of a one-endpoint cluster: Envoy's second attempt is
    another refused connect (UF, reason kept for UPSTREAM_TRANSPORT_FAILURE_REASON)."""
    async def main() -> None:
        port = free_port()  # nothing listens there
        c = cluster(port)
        info = StreamInfo()
        with pytest.raises(UpstreamError) as err:
            await asyncio.wait_for(c.connect(FACTS, info, frozenset({f"127.0.0.1:{port}"})), 3)
        assert err.value.flag == "UF"
        assert "Connection refused" in err.value.reason
        assert info.upstream_host == f"127.0.0.1:{port}"
        assert c.stats.counters["cluster.c.upstream_cx_connect_fail"] == 1
        assert c.stats.counters["cluster.c.upstream_cx_none_healthy"] == 0
    asyncio.run(main())


def test_reselections_avoid_tried_hosts_up_to_the_limit() -> None:
    """ROUND_ROBIN over three hosts, two of them tried. With enough re-selections the
    untried one is found; with 0 the round-robin pick stands even if it was tried."""
    hosts = (1001, 1002, 1003)
    keys = [f"127.0.0.1:{p}" for p in hosts]
    tried = frozenset(keys[:2])
    c = cluster(*hosts)
    for _ in range(6):  # whatever the round-robin position, 2 re-picks reach the third
        assert c._choose(FACTS, tried, 2) == ("127.0.0.1", 1003)
    picks = {c._choose(FACTS, tried, 0) for _ in range(6)}
    assert picks == {("127.0.0.1", p) for p in hosts}  # the predicate is never consulted
    # Envoy's default (1 re-selection): from a round-robin position before a tried host,
    # the next pick may be the other tried host and is then used anyway.
    c = cluster(*hosts)
    default = [c._choose(FACTS, tried, 1)[1] for _ in range(4)]  # type: ignore[index]
    assert default == [1003, 1002, 1003, 1002]


def test_without_exclusion_round_robin_is_unchanged_and_no_host_is_uh() -> None:
    c = cluster(1001, 1002)
    assert {c._choose(FACTS, frozenset(), 1) for _ in range(4)} == {
        ("127.0.0.1", 1001), ("127.0.0.1", 1002)}
    empty = cluster()

    async def main() -> None:
        with pytest.raises(UpstreamError) as err:
            await empty.connect(FACTS, StreamInfo(), frozenset({"127.0.0.1:1"}))
        assert err.value.flag == "UH"
        assert empty.stats.counters["cluster.c.upstream_cx_none_healthy"] == 1
    asyncio.run(main())
