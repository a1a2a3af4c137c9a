"""A complete HTTP/2 response before the whole request (RFC 9113 8.1): the client gets
the whole response, then RST_STREAM(NO_ERROR) for the rest of its request.

grpcio answers an unknown method (UNIMPLEMENTED) as soon as the request's HEADERS came,
and a unary call as soon as its message came, without waiting for END_STREAM; behind
remora's inbound sidecar the client's END_STREAM often arrives a read later. The sidecar
then ends the stream with RST_STREAM(NO_ERROR), as Envoy does, and nghttp2 sends a
RST_STREAM ahead of the stream's frames still queued in it and drops them: the client
got the reset alone, and an outbound sidecar answered its caller 503 UR
(``upstream_reset_before_response_started{remote_reset}``, grpc-status 14), where Envoy
(whose codec defers that reset until END_STREAM went out) answers every time. Seen in
tests/netns/test_explain_live_grpc.py's remora lab; reproduced here on loopback with
the request's END_STREAM simply never sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

from remora.proxy.upstream.config import HttpProtocolOptions
from tests.unit.proxy.http.fakes import (
    FakeCluster,
    FakeClusterManager,
    FakeContext,
    build_hcm,
    hcm_config,
    proxy,
)
from tests.unit.proxy.http2 import upstream_setup as us
from tests.unit.proxy.http2.h2client import H2Client, H2Response
from tests.unit.proxy.native_mode import pure_only
from tests.unit.proxy.proxy_helpers import free_port

pytestmark = pure_only  # it patches a compiled class (native_mode.py)

NO_ERROR = 0
GRPC = [("content-type", "application/grpc"), ("te", "trailers")]


async def _reset_after_end(c: H2Client, r: H2Response, timeout: float = 5.0) -> None:
    """Wait for the response's end, then for the RST_STREAM that follows it."""
    await asyncio.wait_for(r.done.wait(), timeout)
    for _ in range(int(timeout / 0.01)):
        if r.reset is not None or c.closed.is_set():
            return
        await asyncio.sleep(0.01)


def _hcm_answering_at_once() -> Any:
    """An HCM whose streams answer (headers, a message, trailers) without reading the
    request body: what the router does with an upstream that answered early."""
    ctx = FakeContext(FakeClusterManager(FakeCluster("app", [("127.0.0.1", 9)])))
    hcm = build_hcm(hcm_config(), ctx)

    async def serve(stream: Any) -> None:
        assert stream.prepare()
        stream.encode_headers(200, [("content-type", "application/grpc")], chunked=True)
        stream.encode_data(b"\x00\x00\x00\x00\x02hi")
        stream.encode_trailers([("grpc-status", "0")])

    hcm.serve = serve
    return hcm


def test_response_before_the_request_ended_arrives_whole_then_no_error_reset() -> None:
    async def body() -> None:
        async with proxy(_hcm_answering_at_once()) as addr:
            c = await H2Client.connect(addr)
            sid = c.start("POST", "/pkg.Svc/Call", headers=GRPC,
                          body=b"\x00\x00\x00\x00\x00", end=False)
            r = c.responses[sid]
            await _reset_after_end(c, r)
            assert (r.status, r.body, r.trailers, r.ended) == (
                200, b"\x00\x00\x00\x00\x02hi", [("grpc-status", "0")], True), r
            assert r.reset == NO_ERROR  # the rest of the request is not wanted
            # the connection goes on: the next request is answered
            r2 = await c.request("POST", "/pkg.Svc/Call", headers=GRPC,
                                 body=b"\x00\x00\x00\x00\x00")
            assert (r2.status, r2.trailers, r2.reset) == (200, [("grpc-status", "0")], None)
            await c.close()
    asyncio.run(asyncio.wait_for(body(), 20))


def test_local_reply_before_the_request_ended_arrives() -> None:
    """A local reply (here: no route, 404 NR) to a request whose body is still coming."""
    async def body() -> None:
        ctx = FakeContext(FakeClusterManager(FakeCluster("app", [("127.0.0.1", 9)])))
        hcm = build_hcm(hcm_config(domains=["elsewhere.test"]), ctx)
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            sid = c.start("POST", "/upload", body=b"part of a body", end=False)
            r = c.responses[sid]
            await _reset_after_end(c, r)
            assert (r.status, r.ended, r.reset) == (404, True, NO_ERROR), r
            await c.close()
    asyncio.run(asyncio.wait_for(body(), 20))


class _H2Cluster(FakeCluster):
    """A loopback cluster whose requests go upstream over HTTP/2 (the router reads
    ``config.http_protocol_options`` as from a parsed cluster)."""

    class _Config:
        http_protocol_options = HttpProtocolOptions(protocol="http2")

    config = _Config()


def test_grpc_server_answering_before_end_stream_through_the_router() -> None:
    """The netns lab's case on loopback: grpcio (remora.apps.grpc_server) answers an
    unknown method with UNIMPLEMENTED before the call's END_STREAM; through the router's
    HTTP/2 upstream and the HTTP/2 downstream the client gets that answer (grpc-status
    12 in a trailers-only response), not a bare RST_STREAM."""
    port = free_port()
    with us.grpc_server(port):
        async def body() -> None:
            ctx = FakeContext(FakeClusterManager(_H2Cluster("app", [("127.0.0.1", port)])))
            async with proxy(build_hcm(hcm_config(), ctx)) as addr:
                c = await H2Client.connect(addr)
                for path in ("/grpc.health.v1.Health/Check", "/remora.demo.Simple/Nope"):
                    sid = c.start("POST", path, headers=GRPC, body=b"\x00\x00\x00\x00\x00",
                                  end=False)
                    r = c.responses[sid]
                    await _reset_after_end(c, r)
                    assert (r.status, r.header("grpc-status"), r.ended) == (200, "12", True), r
                    assert r.reset == NO_ERROR
                # and a whole call still gets its reply on the same connection
                r = await c.request("POST", "/remora.demo.Simple/Sauth", headers=GRPC,
                                    body=b"\x00\x00\x00\x00\x00")
                assert (r.status, dict(r.trailers).get("grpc-status")) == (200, "0"), r
                assert b'"test_common"' in r.body
                await c.close()
        asyncio.run(asyncio.wait_for(body(), 30))
