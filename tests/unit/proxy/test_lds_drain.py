"""LDS updates drain what they replace (server/drain.py ChainDrain, server/runtime.py), in
process on loopback (no root, no envoy; test_lds_drain_envoy_parity.py holds the client's
view to Envoy 1.40): which connections drain, that they are closed when --drain-time-s
is over, the listener_manager gauges, and the drain decision itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from remora.proxy.server.drain import ChainDrain, DrainManager
from remora.proxy.server.runtime import Server
from tests.unit.proxy.proxy_helpers import (
    free_port,
    running,
    static_cluster,
    tcp_listener,
    until,
    upstream,
    write_atomic,
)
from tests.unit.proxy.test_reload_and_admin import lds, roundtrip, tagger

DRAIN = 0.6


async def _closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1024), within) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def _story(tmp_path: Path, update: Any, check: Any) -> None:
    """Listeners `one` and `two` (tcp_proxy to A), a connection on each, the LDS file
    replaced by UPDATE(port_one, port_two), then CHECK(server, conns, ports)."""
    lds_path = tmp_path / "lds.json"

    async def main() -> None:
        srv_a, port_a = await upstream(tagger(b"A:"))
        srv_b, port_b = await upstream(tagger(b"B:"))
        p1, p2 = free_port(), free_port()
        write_atomic(lds_path, lds("1", tcp_listener("one", p1, "a"),
                                   tcp_listener("two", p2, "a")))
        doc = {"static_resources": {"clusters": [static_cluster("a", port_a),
                                                 static_cluster("b", port_b)]},
               "dynamic_resources": {"lds_config": {"path_config_source": {
                   "path": str(lds_path)}}}}
        async with running(doc, tmp_path) as server:
            server.drain.drain_time = DRAIN
            server.drain.strategy = "immediate"
            conns = [await asyncio.open_connection("127.0.0.1", p) for p in (p1, p2)]
            for r, w in conns:
                assert await roundtrip(r, w, b"x") == b"A:x"
            write_atomic(lds_path, update(p1, p2))
            c = server.stats.counters
            await until(lambda: c["listener_manager.lds.update_success"] == 2)
            await check(server, conns, (p1, p2))
            for _, w in conns:
                w.close()
        srv_a.close()
        srv_b.close()

    asyncio.run(main())


def test_in_place_update_closes_old_chain_at_drain_end(tmp_path: Path) -> None:
    async def check(server: Server, conns: Any, ports: Any) -> None:
        g = server.stats.gauges
        assert server.stats.counters["listener_manager.listener_in_place_updated"] == 1
        assert g["listener_manager.total_filter_chains_draining"] == 1
        (r1, w1), (r2, w2) = conns
        r, w = await asyncio.open_connection("127.0.0.1", ports[0])
        assert await roundtrip(r, w, b"n") == b"B:n"  # a new connection: the new chain
        assert await roundtrip(r1, w1, b"o") == b"A:o"  # the old one, still open
        assert await _closed(r1, DRAIN + 0.5)  # closed when the drain time is over
        assert g["listener_manager.total_filter_chains_draining"] == 0
        assert await roundtrip(r2, w2, b"u") == b"A:u"  # listener two is unchanged
        assert await roundtrip(r, w, b"m") == b"B:m"  # the new chain's is not drained
        w.close()

    _story(tmp_path, lambda p1, p2: lds("2", tcp_listener("one", p1, "b"),
                                        tcp_listener("two", p2, "a")), check)


def test_kept_chain_of_an_in_place_update_is_not_drained(tmp_path: Path) -> None:
    """A second chain added (for other destination ports): the first, unchanged, keeps
    its connections (Envoy's diffFilterChain drains only what the new listener lacks)."""
    def update(p1: int, p2: int) -> dict[str, Any]:
        one = tcp_listener("one", p1, "a")
        extra = tcp_listener("x", 1, "b")["filter_chains"][0]
        extra["filter_chain_match"] = {"destination_port": 9}
        one["filter_chains"].append(extra)
        return lds("2", one, tcp_listener("two", p2, "a"))

    async def check(server: Server, conns: Any, ports: Any) -> None:
        assert server.stats.counters["listener_manager.listener_in_place_updated"] == 1
        assert server.stats.gauges["listener_manager.total_filter_chains_draining"] == 0
        (r1, w1), _ = conns
        assert not await _closed(r1, DRAIN + 0.5)
        assert await roundtrip(r1, w1, b"k") == b"A:k"

    _story(tmp_path, update, check)


def test_listener_update_not_in_place_and_removal_drain_whole_listeners(
        tmp_path: Path) -> None:
    """`one` changes more than its chains (a full update: its old version drains whole),
    `two` is removed (drained, then closed)."""
    def update(p1: int, p2: int) -> dict[str, Any]:
        one = tcp_listener("one", p1, "a")
        one["per_connection_buffer_limit_bytes"] = 65536
        return lds("2", one)

    async def check(server: Server, conns: Any, ports: Any) -> None:
        c, g = server.stats.counters, server.stats.gauges
        assert c["listener_manager.listener_modified"] == 1
        assert c["listener_manager.listener_removed"] == 1
        assert g["listener_manager.total_listeners_draining"] == 2
        (r1, _), (r2, _) = conns
        r, w = await asyncio.open_connection("127.0.0.1", ports[0])
        assert await roundtrip(r, w, b"n") == b"A:n"
        assert await _closed(r1, DRAIN + 0.5) and await _closed(r2, 0.3)
        assert g["listener_manager.total_listeners_draining"] == 0
        assert await roundtrip(r, w, b"m") == b"A:m"
        w.close()

    _story(tmp_path, update, check)


def test_chain_drain_decision() -> None:
    server = DrainManager(drain_time=10.0, strategy="immediate")
    d = ChainDrain(server, inbound=False)
    assert not d.drain_close() and not d.draining
    local = DrainManager(drain_time=10.0, strategy="gradual")
    local.start(False)
    d.start_drain(local)
    assert d.draining
    # gradual: at the start of the LDS drain hardly ever, at its end always
    assert sum(d.drain_close() for _ in range(1000)) < 50
    assert local.started is not None
    local.started -= 10
    assert all(d.drain_close() for _ in range(100))
    # the server's own drain still counts for a chain an LDS drain has not reached
    other = ChainDrain(server, inbound=False)
    server.start(False)
    assert other.drain_close()
    assert d.end() == 0 and d.ended
