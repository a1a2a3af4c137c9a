"""tcp_proxy, clusters and access logs end to end on loopback (no root needed)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

from remora.proxy.server.runtime import Server
from tests.unit.proxy.proxy_helpers import (
    echo_upper,
    free_port,
    running,
    static_cluster,
    tcp_listener,
    until,
    upstream,
)


def test_byte_exact_both_directions_with_half_close(tmp_path: Path) -> None:
    size = 8 * 1024 * 1024 + 13
    to_upstream = os.urandom(size)
    to_client = os.urandom(size // 2 + 7)
    received: dict[str, bytes] = {}

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The app answers first and half-closes, then keeps reading the client's upload.
        writer.write(to_client)
        await writer.drain()
        writer.write_eof()
        received["up"] = await reader.read()
        writer.close()

    async def main() -> None:
        srv, port = await upstream(app)
        lport = free_port()
        doc = {"static_resources": {"listeners": [tcp_listener("l", lport, "c")],
                                    "clusters": [static_cluster("c", port)]}}
        async with running(doc, tmp_path) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", lport)

            async def send() -> None:
                for i in range(0, size, 1 << 20):
                    writer.write(to_upstream[i:i + (1 << 20)])
                    await writer.drain()
                writer.write_eof()

            sender = asyncio.ensure_future(send())
            got = await reader.read()  # EOF from the app arrives while we still send
            await sender
            assert hashlib.sha256(got).digest() == hashlib.sha256(to_client).digest()
            await until(lambda: "up" in received)
            assert hashlib.sha256(received["up"]).digest() == hashlib.sha256(to_upstream).digest()
            writer.close()
            await until(lambda: server.stats.counters["tcp.l.downstream_cx_rx_bytes_total"] == size)
            assert server.stats.counters["tcp.l.downstream_cx_tx_bytes_total"] == len(to_client)
        srv.close()

    asyncio.run(main())


def test_refused_upstream_logs_uf_urx_with_reason(tmp_path: Path) -> None:
    log = tmp_path / "access.log"

    async def main() -> None:
        lport, dead = free_port(), free_port()
        doc = {"static_resources": {
            "listeners": [tcp_listener("l", lport, "c", str(log))],
            "clusters": [static_cluster("c", dead)]}}
        async with running(doc, tmp_path) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", lport)
            assert await reader.read() == b""
            writer.close()
            await until(lambda: log.exists() and log.read_text().endswith("\n"))
            assert server.stats.counters["cluster.c.upstream_cx_connect_fail"] == 1
        line = log.read_text()
        # Envoy's default format: [time] "- - -" 0 UF,URX 0 0 DURATION - "-" "-" "-" "-" "host"
        fields = line.split(" ")
        assert fields[1:5] == ['"-', "-", '-"', "0"]
        assert fields[5] == "UF,URX"
        assert line.rstrip().endswith(f'"127.0.0.1:{dead}"')

    asyncio.run(main())


def test_no_healthy_host_unknown_cluster_and_overflow(tmp_path: Path) -> None:
    log = tmp_path / "access.log"

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async def main() -> None:
        srv, port = await upstream(hold)
        p_bh, p_nc, p_cb = free_port(), free_port(), free_port()
        doc = {"static_resources": {
            "listeners": [tcp_listener("bh", p_bh, "BlackHoleCluster", str(log)),
                          tcp_listener("nc", p_nc, "missing", str(log)),
                          tcp_listener("cb", p_cb, "one", str(log))],
            "clusters": [{"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "1s"},
                         static_cluster("one", port, circuit_breakers={"thresholds": [
                             {"max_connections": 1}]})]}}
        async with running(doc, tmp_path) as server:
            for p in (p_bh, p_nc):
                r, w = await asyncio.open_connection("127.0.0.1", p)
                assert await r.read() == b""
                w.close()
            _r1, w1 = await asyncio.open_connection("127.0.0.1", p_cb)
            await until(lambda: server.stats.gauges["cluster.one.upstream_cx_active"] == 1)
            r2, w2 = await asyncio.open_connection("127.0.0.1", p_cb)
            assert await r2.read() == b""
            assert server.stats.counters["cluster.one.upstream_cx_overflow"] == 1
            assert server.stats.counters["cluster.BlackHoleCluster.upstream_cx_none_healthy"] == 1
            assert server.stats.counters["tcp.nc.downstream_cx_no_route"] == 1
            w1.close()
            w2.close()
            await until(lambda: len(log.read_text().splitlines()) == 4)
        flags = sorted(line.split(" ")[5] for line in log.read_text().splitlines())
        assert flags == ["-", "NC", "UH", "UO"]
        srv.close()

    asyncio.run(main())


def test_idle_timeout_closes_both_sides(tmp_path: Path) -> None:
    closed = asyncio.Event

    async def main() -> None:
        up_closed = closed()

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
            up_closed.set()

        srv, port = await upstream(app)
        lport = free_port()
        doc = {"static_resources": {
            "listeners": [tcp_listener("l", lport, "c", idle_timeout="0.3s")],
            "clusters": [static_cluster("c", port)]}}
        async with running(doc, tmp_path) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", lport)
            writer.write(b"x")
            started = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(), 3) == b""
            assert asyncio.get_running_loop().time() - started >= 0.25
            await asyncio.wait_for(up_closed.wait(), 3)
            assert server.stats.counters["tcp.l.idle_timeout"] == 1
        srv.close()

    asyncio.run(main())


def test_global_downstream_max_connections(tmp_path: Path) -> None:
    async def main() -> None:
        srv, port = await upstream(echo_upper)
        lport = free_port()
        doc = {"static_resources": {"listeners": [tcp_listener("l", lport, "c")],
                                    "clusters": [static_cluster("c", port)]},
               "overload_manager": {"resource_monitors": [{
                   "name": "envoy.resource_monitors.global_downstream_max_connections",
                   "typed_config": {
                       "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                                "downstream_connections.v3.DownstreamConnectionsConfig",
                       "max_active_downstream_connections": 1}}]}}
        server: Server
        async with running(doc, tmp_path) as server:
            r1, w1 = await asyncio.open_connection("127.0.0.1", lport)
            await until(lambda: server.active_connections == 1)
            r2, _w2 = await asyncio.open_connection("127.0.0.1", lport)
            assert await r2.read() == b""
            assert server.stats.counters[
                "listener.127.0.0.1_" + str(lport) + ".downstream_global_cx_overflow"] == 1
            w1.write(b"still served")
            w1.write_eof()
            assert await r1.read() == b"STILL SERVED"
        srv.close()

    asyncio.run(main())


def test_connect_timeout_is_uf_with_the_timeout_counted(tmp_path: Path) -> None:
    import socket

    # A listener that never accepts, its queue filled: further SYNs go unanswered.
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(stuck.getsockname())
        fillers.append(s)
    log = tmp_path / "access.log"

    async def main() -> None:
        lport = free_port()
        cluster = static_cluster("c", stuck.getsockname()[1])
        cluster["connect_timeout"] = "0.3s"
        doc = {"static_resources": {"listeners": [tcp_listener("l", lport, "c", str(log))],
                                    "clusters": [cluster]}}
        async with running(doc, tmp_path) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", lport)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            assert server.stats.counters["cluster.c.upstream_cx_connect_timeout"] == 1
            assert server.stats.counters["cluster.c.upstream_cx_connect_fail"] == 1
            await until(lambda: log.exists() and log.read_text().endswith("\n"))
        assert log.read_text().split(" ")[5] == "UF,URX"

    try:
        asyncio.run(main())
    finally:
        for s in (*fillers, stuck):
            s.close()


def test_ipv6_listener_and_cluster(tmp_path: Path) -> None:
    log = tmp_path / "access.log"

    async def main() -> None:
        srv = await asyncio.start_server(echo_upper, "::1", 0)
        port = srv.sockets[0].getsockname()[1]
        lport = free_port()
        listener = tcp_listener("l6", lport, "c6", str(log))
        listener["address"]["socket_address"]["address"] = "::1"
        cluster = static_cluster("c6", port)
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"]["address"] = "::1"
        doc = {"static_resources": {"listeners": [listener], "clusters": [cluster]}}
        async with running(doc, tmp_path) as server:
            reader, writer = await asyncio.open_connection("::1", lport)
            writer.write(b"six")
            writer.write_eof()
            assert await reader.read() == b"SIX"
            writer.close()
            await until(lambda: log.exists() and log.read_text().endswith("\n"))
            # Envoy 1.40 names it listener.[__1]_PORT (':' sanitized to '_' in stat names)
            assert server.stats.counters[f"listener.[__1]_{lport}.downstream_cx_total"] == 1
        assert log.read_text().rstrip().endswith(f'"[::1]:{port}"')
        srv.close()

    asyncio.run(main())


def test_buffer_limits_bound_the_plain_relays_reads(tmp_path: Path, monkeypatch: Any) -> None:
    """per_connection_buffer_limit_bytes: the listener's bounds each read from the client,
    the cluster's each read from the upstream (Envoy's read-buffer limits); unset is 1 MiB.
    Bytes stay exact across reads that small."""
    from remora.proxy.network_filters import plain_relay
    from remora.proxy.upstream.config import parse_cluster

    assert parse_cluster(static_cluster("c", 1), "c").buffer_limit == 1 << 20
    seen: dict[str, list[int]] = {"limits": [], "rx": [], "tx": []}

    class Recording(plain_relay.PlainRelay):
        def __init__(self, down_fd: int, up_fd: int, down_limit: int, up_limit: int) -> None:
            seen["limits"] += [down_limit, up_limit]
            super().__init__(down_fd, up_fd, down_limit, up_limit)

        def _add_rx(self, n: int) -> None:
            seen["rx"].append(n)
            super()._add_rx(n)

        def _add_tx(self, n: int) -> None:
            seen["tx"].append(n)
            super()._add_tx(n)

    monkeypatch.setattr(plain_relay, "PlainRelay", Recording)
    taken: list[int] = []  # the size of every buffer a read was made into
    take = plain_relay._take

    def recording_take(size: int) -> bytearray:
        taken.append(size)
        return take(size)
    monkeypatch.setattr(plain_relay, "_take", recording_take)
    data = os.urandom(2 * 1024 * 1024 + 3)

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = await reader.read()
        writer.write(got)  # the upload back, then EOF
        writer.write_eof()
        await writer.drain()
        writer.close()

    async def main() -> None:
        srv, port = await upstream(app)
        lport = free_port()
        listener = tcp_listener("l", lport, "c")
        listener["per_connection_buffer_limit_bytes"] = 32768
        cluster = static_cluster("c", port)
        cluster["per_connection_buffer_limit_bytes"] = 16384
        doc = {"static_resources": {"listeners": [listener], "clusters": [cluster]}}
        async with running(doc, tmp_path):
            reader, writer = await asyncio.open_connection("127.0.0.1", lport)
            writer.write(data)
            writer.write_eof()
            got = await reader.read()
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            writer.close()
        srv.close()

    asyncio.run(main())
    assert seen["limits"] == [32768, 16384]
    assert sum(seen["rx"]) == sum(seen["tx"]) == len(data)
    # (the first count may be bytes the listener's StreamReader held before the relay
    # took over: asyncio's reader fills to twice its limit)
    assert set(taken) == {32768, 16384}
