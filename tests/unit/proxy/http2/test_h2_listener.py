"""HTTP/2 through the proxy's real listener (no root, loopback): h2 negotiated by TLS ALPN
as Istio's sidecars do it (the client offers ``istio-h2, istio, h2``, the inbound chain's
DownstreamTlsContext ``h2, http/1.1``), HTTP/1.1 kept for a client that offers only that,
no GOAWAY when the proxy stops (as Envoy on SIGTERM); and the HCM's
http2_protocol_options read strictly."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from h2.errors import ErrorCodes

from remora.controlplane import ca
from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http2.options import parse_http2_options
from tests.unit.proxy.http2.h2client import H2Client
from tests.unit.proxy.proxy_helpers import addr, free_port, running, static_cluster, upstream

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
      "HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1: answers each request with its own head as the body."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(head), head))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


def bootstrap(port: int, app_port: int, certs: Path | None,
              alpn: list[str]) -> dict[str, Any]:
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": "in",
        "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER}}]}}
    chain: dict[str, Any] = {"filters": [hcm]}
    if certs is not None:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": TLS, "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": {"filename": str(certs / ca.CERT_CHAIN)},
                    "private_key": {"filename": str(certs / ca.KEY)}}],
                "alpn_protocols": alpn}}}
    return {"static_resources": {
        "listeners": [{"name": "l", "address": addr("127.0.0.1", port),
                       "filter_chains": [chain]}],
        "clusters": [static_cluster("app", app_port)]}}


def client_tls(alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(alpn)
    return ctx


def test_h2_by_alpn_as_istio_negotiates_it_and_http11_otherwise(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ca.CertificateAuthority(tmp_path / "ca").ensure_workload(certs, "demo")

    async def body() -> None:
        srv, app_port = await upstream(app)
        port = free_port()
        async with running(bootstrap(port, app_port, certs, ["h2", "http/1.1"]), tmp_path):
            c = await H2Client.connect(("127.0.0.1", port),
                                       ssl_ctx=client_tls(["istio-h2", "istio", "h2"]))
            sslobj = c.writer.get_extra_info("ssl_object")
            assert sslobj.selected_alpn_protocol() == "h2"
            r = await c.request("GET", "/over-tls", authority="srv.test")
            assert r.status == 200
            # the connection's TLS decides x-forwarded-proto, as in Envoy
            assert b"\r\nx-forwarded-proto: https\r\n" in r.body
            assert r.body.startswith(b"GET /over-tls HTTP/1.1\r\nhost: srv.test\r\n")
            await c.close()
            # a client offering only http/1.1 gets HTTP/1.1 on the same chain
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_tls(["http/1.1"]))
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
            writer.write(b"GET /h1 HTTP/1.1\r\nhost: a\r\n\r\n")
            assert (await asyncio.wait_for(reader.read(9), 5)) == b"HTTP/1.1 "
            writer.close()
        srv.close()
    asyncio.run(asyncio.wait_for(body(), 30))


def test_alpn_other_than_h2_keeps_http11_as_envoys_auto_codec(tmp_path: Path) -> None:
    """Envoy's AUTO codec takes a negotiated ALPN as the protocol: only ``h2`` is HTTP/2
    (a chain that negotiated ``istio-h2`` itself would speak HTTP/1.1, which is why
    Istio's server side offers plain ``h2``)."""
    certs = tmp_path / "certs"
    ca.CertificateAuthority(tmp_path / "ca").ensure_workload(certs, "demo")

    async def body() -> None:
        srv, app_port = await upstream(app)
        port = free_port()
        async with running(bootstrap(port, app_port, certs, ["istio-h2"]), tmp_path):
            c = await H2Client.connect(("127.0.0.1", port), ssl_ctx=client_tls(["istio-h2"]))
            await asyncio.wait_for(c.closed.wait(), 5)
            assert c.settings == {}  # no HTTP/2 server spoke
            await c.close()
        srv.close()
    asyncio.run(asyncio.wait_for(body(), 30))


def test_no_goaway_when_the_proxy_stops(tmp_path: Path) -> None:
    """Envoy 1.40 closes its HTTP/2 connections without a GOAWAY when it stops
    (test_h2_drain_envoy_parity.py: SIGTERM); so does remora."""
    async def body() -> None:
        srv, app_port = await upstream(app)
        port = free_port()
        async with running(bootstrap(port, app_port, None, []), tmp_path):
            c = await H2Client.connect(("127.0.0.1", port))
            assert (await c.request("GET", "/")).status == 200
        await asyncio.wait_for(c.closed.wait(), 5)
        assert c.goaway is None
        await c.close()
        srv.close()
    asyncio.run(asyncio.wait_for(body(), 30))


def test_http2_protocol_options_read_strictly() -> None:
    opts = parse_http2_options(Fields({
        "max_concurrent_streams": 100, "initialStreamWindowSize": 65535,
        "initial_connection_window_size": {"value": 1048576}, "hpack_table_size": 0,
        "use_oghttp2_codec": True}, "x"))
    assert (opts.max_concurrent_streams, opts.initial_stream_window_size,
            opts.initial_connection_window_size, opts.hpack_table_size) == (
        100, 65535, 1048576, 0)
    with pytest.raises(ConfigError) as err:
        parse_http2_options(Fields({"allow_connect": True}, "hcm.http2_protocol_options"))
    assert err.value.path == "hcm.http2_protocol_options.allow_connect"
    with pytest.raises(ConfigError) as err:
        parse_http2_options(Fields({"initial_stream_window_size": 1000}, "h"))
    assert err.value.path == "h.initial_stream_window_size"
    assert "65535 to 2147483647" in err.value.one_line()
    with pytest.raises(ConfigError) as err:
        parse_http2_options(Fields({"max_concurrent_streams": 0}, "h"))
    assert err.value.path == "h.max_concurrent_streams"


def test_streams_reset_while_connecting_give_their_connection_slot_back(
        tmp_path: Path) -> None:
    """Each stream reset before its upstream connect finished abandons that connect; the
    cluster's max_connections slot comes back (before: kept for good, so after as many
    resets as max_connections every request got 503 UO)."""
    async def body() -> None:
        srv, app_port = await upstream(app)
        port = free_port()
        boot = bootstrap(port, app_port, None, [])
        boot["static_resources"]["clusters"][0]["circuit_breakers"] = {
            "thresholds": [{"max_connections": 10}]}
        async with running(boot, tmp_path) as server:
            c = await H2Client.connect(("127.0.0.1", port))
            for _ in range(40):
                sid = c.start("GET", "/reset-me")
                c.conn.reset_stream(sid, ErrorCodes.CANCEL)
            c.flush()
            await asyncio.sleep(0.5)
            r = await c.request("GET", "/after")
            assert r.status == 200, r.body
            await c.close()
            await asyncio.sleep(0.2)
            # (streams started together overflow while ten connects are under way; what
            # matters is that every slot came back)
            assert server.stats.gauges["cluster.app.circuit_breakers.default.cx_open"] == 0
        srv.close()
    asyncio.run(asyncio.wait_for(body(), 30))
