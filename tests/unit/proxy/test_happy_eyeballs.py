"""An EDS/STATIC endpoint with ``additional_addresses`` (what istiod sends for a dual-stack
pod with ISTIO_DUAL_STACK): the proxy connects by Happy Eyeballs as Envoy does, the
endpoint's ``address`` first, the other family only when that fails or has not answered
in 300 ms. Loopback only (127.0.0.1 and ::1)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from remora.proxy.admin.config_dump import _hosts_cla
from remora.proxy.config.strict import ConfigError
from remora.proxy.interfaces import ConnectionFacts, UpstreamError
from remora.proxy.stats import StatsStore
from remora.proxy.stream_info import StreamInfo
from remora.proxy.upstream.cluster import ClusterImpl
from remora.proxy.upstream.config import parse_cluster
from remora.proxy.upstream.happy_eyeballs import interleave, race
from tests.unit.proxy.proxy_helpers import addr, free_port

FACTS = ConnectionFacts("127.0.0.1", 15001, "127.0.0.1", 40000, "127.0.0.1")


def dual_cluster(port4: int, port6: int, **endpoint: Any) -> ClusterImpl:
    raw = {"name": "c", "type": "STATIC", "connect_timeout": "1s",
           "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
               {"endpoint": {"address": addr("127.0.0.1", port4),
                             "additional_addresses": [{"address": addr("::1", port6)}],
                             **endpoint}}]}]}}
    return ClusterImpl(parse_cluster(raw, "clusters[0]"), StatsStore())


def listener(family: socket.AddressFamily, host: str) -> tuple[socket.socket, int]:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(8)
    return sock, int(sock.getsockname()[1])


def test_interleave_starts_with_the_first_address_family() -> None:
    assert interleave([("10.0.0.1", 1), ("10.0.0.2", 1), ("fd00::1", 1)]) == [
        ("10.0.0.1", 1), ("fd00::1", 1), ("10.0.0.2", 1)]
    assert interleave([("fd00::1", 1), ("10.0.0.1", 1)]) == [("fd00::1", 1), ("10.0.0.1", 1)]
    assert interleave([]) == []


def test_the_address_is_used_when_it_answers() -> None:
    async def main() -> None:
        s4, p4 = listener(socket.AF_INET, "127.0.0.1")
        s6, p6 = listener(socket.AF_INET6, "::1")
        c = dual_cluster(p4, p6)
        info = StreamInfo()
        up = await asyncio.wait_for(c.connect(FACTS, info), 3)
        assert info.upstream_host == f"127.0.0.1:{p4}"
        assert info.upstream_local_address.startswith("127.0.0.1:")
        assert c.stats.counters["cluster.c.upstream_cx_total"] == 1
        up.writer.close()
        await asyncio.sleep(0.05)
        assert c.stats.gauges["cluster.c.upstream_cx_active"] == 0
        s4.close()
        s6.close()
    asyncio.run(main())


def test_a_refused_address_falls_back_to_the_other_family_at_once() -> None:
    async def main() -> None:
        s6, p6 = listener(socket.AF_INET6, "::1")
        p4 = free_port()  # nothing listens: refused, so the next attempt starts at once
        c = dual_cluster(p4, p6)
        info = StreamInfo()
        started = time.monotonic()
        up = await asyncio.wait_for(c.connect(FACTS, info), 3)
        assert time.monotonic() - started < 0.25
        # UPSTREAM_HOST is the host (its first address); the connection is the other one
        assert info.upstream_host == f"127.0.0.1:{p4}"
        assert info.upstream_local_address.startswith("[::1]:")
        assert c.stats.counters["cluster.c.upstream_cx_total"] == 1
        assert c.stats.counters["cluster.c.upstream_cx_connect_fail"] == 0
        up.writer.close()
        s6.close()
    asyncio.run(main())


def test_every_address_refused_is_one_connect_failure() -> None:
    async def main() -> None:
        c = dual_cluster(free_port(), free_port("::1"))
        info = StreamInfo()
        with pytest.raises(UpstreamError) as err:
            await asyncio.wait_for(c.connect(FACTS, info), 3)
        assert err.value.flag == "UF"
        assert err.value.reason == "delayed connect error: Connection refused"
        assert c.stats.counters["cluster.c.upstream_cx_connect_fail"] == 1
        assert c.active["connections"] == 0
    asyncio.run(main())


def test_race_starts_the_next_attempt_after_the_delay() -> None:
    """An address that does not answer: the next one starts after DELAY and wins; the
    slow attempt is cancelled."""
    cancelled: list[int] = []

    async def attempt(i: int, a: tuple[str, int]) -> str:
        if i == 0:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(i)
                raise
        return a[0]

    async def main() -> tuple[int, str]:
        return await race([("10.0.0.1", 1), ("fd00::1", 1)], attempt, lambda _: None, 0.05)
    started = time.monotonic()
    assert asyncio.run(main()) == (1, "fd00::1")
    assert 0.04 < time.monotonic() - started < 1 and cancelled == [0]


def test_additional_addresses_in_config_dump_and_bad_ones_refused() -> None:
    c = dual_cluster(18080, 18080)
    [lb] = _hosts_cla("c", c.hosts)["endpoints"][0]["lb_endpoints"]
    assert lb["endpoint"] == {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 18080}},
        "additional_addresses": [
            {"address": {"socket_address": {"address": "::1", "port_value": 18080}}}]}
    with pytest.raises(ConfigError, match="additional_addresses"):
        dual_cluster(1, 1, additional_addresses=[{"address": addr("::1", 1), "nope": 1}])
