"""``encode_trailers`` on both stream classes, driven the way the router ends a response
with trailers (gRPC's grpc-status): HTTP/2 sends them as a trailing HEADERS frame with
END_STREAM; HTTP/1.1 ends the chunked body without them (Envoy's HTTP/1 codec without
enable_trailers)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.unit.proxy.http.fakes import (
    Client,
    FakeCluster,
    FakeClusterManager,
    FakeContext,
    build_hcm,
    hcm_config,
    proxy,
)
from tests.unit.proxy.http2.h2client import H2Client
from tests.unit.proxy.native_mode import pure_only

pytestmark = pure_only  # it patches a compiled class (native_mode.py)


def _hcm_answering_with_trailers() -> Any:
    ctx = FakeContext(FakeClusterManager(FakeCluster("app", [("127.0.0.1", 9)])))
    hcm = build_hcm(hcm_config(), ctx)

    async def serve(stream: Any) -> None:
        # what the router does for an upstream response with trailers
        assert stream.prepare()
        stream.encode_headers(200, [("content-type", "application/grpc")], chunked=True)
        stream.encode_data(b"\x00\x00\x00\x00\x02hi")
        stream.flush()
        await asyncio.sleep(0)
        stream.encode_trailers([("grpc-status", "0"), ("grpc-message", "ok")])

    hcm.serve = serve  # the connection manager's per-stream entry point
    return hcm


def test_http2_stream_sends_trailers() -> None:
    async def body() -> None:
        async with proxy(_hcm_answering_with_trailers()) as addr:
            c = await H2Client.connect(addr)
            r = await c.request("POST", "/pkg.Svc/Call", headers=[("te", "trailers")])
            assert r.status == 200 and r.ended
            assert r.body == b"\x00\x00\x00\x00\x02hi"
            assert r.trailers == [("grpc-status", "0"), ("grpc-message", "ok")]
            assert r.header("content-type") == "application/grpc"
            await c.close()
    asyncio.run(asyncio.wait_for(body(), 10))


def test_http11_stream_ends_the_chunked_body_without_trailers() -> None:
    async def body() -> None:
        async with proxy(_hcm_answering_with_trailers()) as addr:
            c = await Client.connect(addr)
            c.send(b"POST /pkg.Svc/Call HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n")
            raw = b""
            while not raw.endswith(b"\r\n0\r\n\r\n"):
                raw += await asyncio.wait_for(c.reader.read(65536), 5)
            head, _, chunks = raw.partition(b"\r\n\r\n")
            assert b"transfer-encoding: chunked" in head
            assert chunks == b"7\r\n\x00\x00\x00\x00\x02hi\r\n0\r\n\r\n"
            assert b"grpc-status" not in raw
            c.close()
    asyncio.run(asyncio.wait_for(body(), 10))
