"""tls_inspector / http_inspector on a live listener: they choose the chain by what they
peeked, the chain still relays every byte, and listener_filters_timeout behaves."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

from tests.unit.proxy.proxy_helpers import (
    TCP_PROXY,
    addr,
    free_port,
    running,
    static_cluster,
    until,
    upstream,
)

INSPECTORS = [
    {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3."
                 "TlsInspector"}},
    {"name": "envoy.filters.listener.http_inspector", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3."
                 "HttpInspector"}},
]


def chain(name: str, match: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "filter_chain_match": match, "filters": [{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP_PROXY, "stat_prefix": name, "cluster": "c"}}]}


def listener(port: int, **extra: Any) -> dict[str, Any]:
    return {"name": "l", "address": addr("127.0.0.1", port), "listener_filters": INSPECTORS,
            "filter_chains": [
                chain("tls-sni", {"transport_protocol": "tls", "server_names": ["svc.local"]}),
                chain("tls", {"transport_protocol": "tls"}),
                chain("http", {"application_protocols": ["http/1.1", "http/1.0"]}),
                chain("raw", {})], **extra}


def client_hello(sni: str) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def test_chain_chosen_by_peeked_bytes_which_all_reach_the_upstream(tmp_path: Path) -> None:
    got: list[bytes] = []

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.read())
        writer.close()

    async def main() -> None:
        srv, port = await upstream(app)
        lport = free_port()
        doc = {"static_resources": {"listeners": [listener(lport)],
                                    "clusters": [static_cluster("c", port)]}}
        async with running(doc, tmp_path) as server:
            payloads = [client_hello("svc.local"), client_hello("other.local"),
                        b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n", b"\x00\x01binary"]
            for data in payloads:
                reader, writer = await asyncio.open_connection("127.0.0.1", lport)
                writer.write(data)
                writer.write_eof()
                await reader.read()
                writer.close()
            await until(lambda: len(got) == 4)
            assert sorted(got) == sorted(payloads)  # nothing consumed by the peeking
            c = server.stats.counters
            assert [c[f"tcp.{n}.downstream_cx_total"] for n in ("tls-sni", "tls", "http", "raw")] \
                == [1, 1, 1, 1]
        srv.close()

    asyncio.run(main())


def test_listener_filters_timeout(tmp_path: Path) -> None:
    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"server speaks first")
        await writer.drain()
        writer.close()

    async def main() -> None:
        srv, port = await upstream(app)
        cont, close = free_port(), free_port()
        l1 = listener(cont, listener_filters_timeout="0.2s",
                      continue_on_listener_filters_timeout=True)
        l2 = {**listener(close, listener_filters_timeout="0.2s"), "name": "l2"}
        doc = {"static_resources": {"listeners": [l1, l2],
                                    "clusters": [static_cluster("c", port)]}}
        async with running(doc, tmp_path) as server:
            # A server-first protocol: the client sends nothing. With continue_on..., the
            # connection goes on after the timeout to the chain that needs no inspection.
            reader, writer = await asyncio.open_connection("127.0.0.1", cont)
            assert await asyncio.wait_for(reader.read(), 3) == b"server speaks first"
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", close)
            assert await asyncio.wait_for(reader.read(), 3) == b""
            writer.close()
            c = server.stats.counters
            assert c[f"listener.127.0.0.1_{cont}.downstream_pre_cx_timeout"] == 1
            assert c[f"listener.127.0.0.1_{close}.downstream_pre_cx_timeout"] == 1
            assert c["tcp.raw.downstream_cx_total"] == 1
        srv.close()

    asyncio.run(main())
