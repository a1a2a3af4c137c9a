"""File-based LDS/CDS/EDS reloads keep established connections and refuse bad files;
the admin API reports what runs (loopback, no root)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from remora.proxy.admin.server import Admin
from remora.proxy.server.runtime import Server
from tests.unit.proxy.proxy_helpers import (
    addr,
    free_port,
    running,
    static_cluster,
    tcp_listener,
    until,
    upstream,
    write_atomic,
)

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def tagger(tag: bytes) -> Any:
    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(tag + data)
            await writer.drain()
        writer.close()
    return app


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.read(1024), 3)


def lds(version: str, *listeners: dict[str, Any]) -> dict[str, Any]:
    return {"version_info": version, "resources": [{"@type": LISTENER, **x} for x in listeners]}


def test_lds_reload_keeps_connections_and_rejects_bad_files(tmp_path: Path) -> None:
    lds_path = tmp_path / "lds.json"

    async def main() -> None:
        srv_a, port_a = await upstream(tagger(b"A:"))
        srv_b, port_b = await upstream(tagger(b"B:"))
        lport = free_port()
        write_atomic(lds_path, lds("1", tcp_listener("dyn", lport, "a")))
        doc = {"static_resources": {"clusters": [static_cluster("a", port_a),
                                                 static_cluster("b", port_b)]},
               "dynamic_resources": {"lds_config": {"path_config_source": {
                   "path": str(lds_path)}}}}
        async with running(doc, tmp_path) as server:
            c = server.stats.counters
            r1, w1 = await asyncio.open_connection("127.0.0.1", lport)
            assert await roundtrip(r1, w1, b"1") == b"A:1"
            write_atomic(lds_path, lds("2", tcp_listener("dyn", lport, "b")))
            await until(lambda: c["listener_manager.lds.update_success"] == 2)
            assert c["listener_manager.listener_in_place_updated"] == 1
            assert await roundtrip(r1, w1, b"2") == b"A:2"  # established: old chain
            r2, w2 = await asyncio.open_connection("127.0.0.1", lport)
            assert await roundtrip(r2, w2, b"x") == b"B:x"
            # A file that does not validate is refused; the last good config keeps serving.
            bad = lds("3", tcp_listener("dyn", lport, "a"))
            bad["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"]["nope"] = 1
            write_atomic(lds_path, bad)
            await until(lambda: c["listener_manager.lds.update_rejected"] == 1)
            write_atomic(lds_path.with_name("other"), {})  # noise
            lds_path.with_name("x").write_text("")
            r3, w3 = await asyncio.open_connection("127.0.0.1", lport)
            assert await roundtrip(r3, w3, b"y") == b"B:y"
            assert server.versions["lds"] == "2"
            # Not even parseable: same.
            lds_path.write_text("{not json")
            await until(lambda: c["listener_manager.lds.update_rejected"] == 2)
            assert await roundtrip(r1, w1, b"3") == b"A:3"
            # Removing the listener stops accepting; established connections live on.
            write_atomic(lds_path, lds("4"))
            await until(lambda: c["listener_manager.listener_removed"] == 1)
            assert await roundtrip(r2, w2, b"z") == b"B:z"
            try:
                await asyncio.open_connection("127.0.0.1", lport)
                raise AssertionError("listener still accepting")
            except ConnectionRefusedError:
                pass
            for w in (w1, w2, w3):
                w.close()
        srv_a.close()
        srv_b.close()

    asyncio.run(main())


def test_cds_and_eds_files(tmp_path: Path) -> None:
    cds_path, eds_path = tmp_path / "cds.json", tmp_path / "eds.json"

    def cla(port: int, version: str) -> dict[str, Any]:
        return {"version_info": version, "resources": [{
            "@type": CLA, "cluster_name": "svc",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr("127.0.0.1", port)}}]}]}]}

    async def main() -> None:
        srv_a, port_a = await upstream(tagger(b"A:"))
        srv_b, port_b = await upstream(tagger(b"B:"))
        lport = free_port()
        write_atomic(eds_path, cla(port_a, "e1"))
        write_atomic(cds_path, {"version_info": "c1", "resources": [{
            "@type": CLUSTER, "name": "svc", "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"path_config_source": {
                "path": str(eds_path)}}}}]})
        doc = {"static_resources": {"listeners": [tcp_listener("l", lport, "svc")]},
               "dynamic_resources": {"cds_config": {"path": str(cds_path)}}}
        async with running(doc, tmp_path) as server:
            r1, w1 = await asyncio.open_connection("127.0.0.1", lport)
            assert await roundtrip(r1, w1, b"1") == b"A:1"
            write_atomic(eds_path, cla(port_b, "e2"))
            await until(lambda: server.stats.counters["cluster.svc.update_success"] == 2)
            r2, w2 = await asyncio.open_connection("127.0.0.1", lport)
            assert await roundtrip(r2, w2, b"2") == b"B:2"
            assert await roundtrip(r1, w1, b"3") == b"A:3"
            write_atomic(cds_path, {"resources": [{"@type": CLUSTER, "name": "svc",
                                                   "type": "LOGICAL_DNS"}]})
            await until(lambda: server.stats.counters["cluster_manager.cds.update_rejected"] == 1)
            r3, w3 = await asyncio.open_connection("127.0.0.1", lport)
            assert await roundtrip(r3, w3, b"4") == b"B:4"
            for w in (w1, w2, w3):
                w.close()
        srv_a.close()
        srv_b.close()

    asyncio.run(main())


async def http(port: int, method: str, target: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    writer.close()
    return int(head.split(b" ")[1]), body.decode()


def test_admin_endpoints(tmp_path: Path) -> None:
    async def main() -> None:
        srv, port = await upstream(tagger(b"A:"))
        lport, aport = free_port(), free_port()
        doc = {"admin": {"address": addr("127.0.0.1", aport)},
               "static_resources": {"listeners": [tcp_listener("l", lport, "c")],
                                    "clusters": [static_cluster("c", port)]}}
        server: Server
        async with running(doc, tmp_path) as server:
            quit_called: list[bool] = []
            admin = Admin(server, {"concurrency": 1}, lambda: server.stats,
                          lambda: quit_called.append(True))
            await admin.start()
            r, w = await asyncio.open_connection("127.0.0.1", lport)
            assert await roundtrip(r, w, b"1") == b"A:1"
            assert await http(aport, "GET", "/ready") == (200, "LIVE\n")
            status, body = await http(aport, "GET", "/config_dump?include_eds")
            assert status == 200
            dump = json.loads(body)
            types = [c["@type"].rsplit(".", 1)[1] for c in dump["configs"]]
            assert types == ["BootstrapConfigDump", "ClustersConfigDump", "EndpointsConfigDump",
                             "ListenersConfigDump", "RoutesConfigDump", "SecretsConfigDump"]
            listener = dump["configs"][3]["static_listeners"][0]["listener"]
            assert listener["@type"] == LISTENER and listener["name"] == "l"
            cluster = dump["configs"][1]["static_clusters"][0]["cluster"]
            assert cluster["name"] == "c" and cluster["@type"] == CLUSTER
            eps = dump["configs"][2]["static_endpoint_configs"][0]["endpoint_config"]
            assert eps["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
                "socket_address"]["port_value"] == port
            assert await http(aport, "GET", "/listeners") == (200, f"l::127.0.0.1:{lport}\n")
            _, stats = await http(aport, "GET", "/stats?filter=^cluster.c.upstream_cx_total")
            assert stats == "cluster.c.upstream_cx_total: 1\n"
            _, prom = await http(aport, "GET", "/stats/prometheus")
            assert 'envoy_cluster_upstream_cx_active{envoy_cluster_name="c"} 1' in prom
            _, clusters = await http(aport, "GET", "/clusters")
            assert f"c::127.0.0.1:{port}::cx_total::1" in clusters
            info = json.loads((await http(aport, "GET", "/server_info"))[1])
            assert info["state"] == "LIVE"
            assert (await http(aport, "GET", "/quitquitquit"))[0] == 405
            assert (await http(aport, "POST", "/drain_listeners"))[0] == 200
            assert (await http(aport, "GET", "/ready"))[0] == 503
            assert await roundtrip(r, w, b"2") == b"A:2"  # drained, not dropped
            try:
                await asyncio.open_connection("127.0.0.1", lport)
                raise AssertionError("still accepting after drain")
            except ConnectionRefusedError:
                pass
            assert (await http(aport, "POST", "/logging?level=debug"))[1].endswith("debug\n")
            assert (await http(aport, "POST", "/quitquitquit"))[0] == 200
            assert quit_called == [True]
            w.close()
            await admin.stop()
        srv.close()

    asyncio.run(main())
