"""``envoy.filters.network.http_connection_manager``: the network filter that speaks HTTP/1.1
or HTTP/2 (proxy/http2/) on a downstream connection, runs the HTTP filter chain per request
and logs each request.

Envoy reference: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/http_conn_man
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct

from remora.proxy import registry
from remora.proxy.config.strict import Fields
from remora.proxy.http import cors as _cors  # noqa: F401 - registers per-route parsers
from remora.proxy.http import fault as _fault  # noqa: F401
from remora.proxy.http.connection import Http1Connection
from remora.proxy.http.hcm_config import HCM_NAME, HCM_TYPE, HcmConfig, parse_hcm
from remora.proxy.http.stream import ActiveStream
from remora.proxy.http2.downstream import Http2Connection, choose_http2
from remora.proxy.interfaces import AccessLogger, Downstream, FactoryContext


@registry.register("network", HCM_NAME, HCM_TYPE)
def _factory(f: Fields, ctx: FactoryContext) -> HttpConnectionManager:
    cfg = parse_hcm(f, ctx)
    loggers = ctx.access_loggers(cfg.access_log, f.at("access_log")) if cfg.access_log else []
    return HttpConnectionManager(cfg, ctx, loggers)


class HttpConnectionManager:
    """interfaces.NetworkFilter; one per filter chain, shared by its connections."""

    def __init__(self, cfg: HcmConfig, ctx: FactoryContext, loggers: list[AccessLogger]) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.stats = ctx.stats
        self.loggers = loggers
        self.filters = cfg.http_filters
        self.decoders = [f for f in cfg.http_filters if hasattr(f, "decode_headers")]
        # encoders run in reverse filter order, as Envoy's encoder filter chain does
        self.encoders = [f for f in reversed(cfg.http_filters) if hasattr(f, "encode_headers")]
        # x-forwarded-client-cert from a connection without a client certificate is removed
        # unless ALWAYS_FORWARD_ONLY (Envoy's mutateXfccRequestHeader). remora's HTTP
        # downstreams carry no peer certificate, so that is every mode but that one.
        self.sanitize_xfcc = cfg.forward_client_cert_details != "ALWAYS_FORWARD_ONLY"
        p = f"http.{cfg.stat_prefix}."
        self._rq_total = p + "downstream_rq_total"
        self._rq_active = p + "downstream_rq_active"
        self._rq_xx = {c: f"{p}downstream_rq_{c}xx" for c in range(1, 6)}
        self._rq_completed = p + "downstream_rq_completed"
        self._rq_time = p + "downstream_rq_time"  # histogram, ms
        self._cx_total = p + "downstream_cx_total"
        self.idle_timeout_stat = p + "downstream_cx_idle_timeout"
        self._cx_active = p + "downstream_cx_active"
        self._node_ip: str | bool | None = False
        # Envoy declares its counters up front, so /stats lists them at 0 before any request
        for name in (self._rq_total, self._cx_total, p + "downstream_rq_completed",
                     *self._rq_xx.values()):
            self.stats.inc(name, 0)

    async def on_connection(self, downstream: Downstream) -> None:
        stats = self.stats
        stats.inc(self._cx_total)
        stats.gauge_add(self._cx_active, 1)
        try:
            # codec_type AUTO: HTTP/2 by ALPN h2 or the client preface (http2/downstream.py)
            h2 = await choose_http2(downstream, self.cfg.codec_type, self.cfg.idle_timeout)
            if h2 is None:  # not a byte within idle_timeout
                stats.inc(self.idle_timeout_stat)
            elif h2:
                await Http2Connection(self, downstream).run()
            else:
                await Http1Connection(self, downstream).run()
        finally:
            stats.gauge_add(self._cx_active, -1)

    async def serve(self, stream: ActiveStream) -> None:
        self.stats.inc(self._rq_total)
        self.stats.gauge_add(self._rq_active, 1)
        try:
            if not stream.prepare():
                return
            for f in self.decoders:
                if not await f.decode_headers(stream):
                    return
        except asyncio.CancelledError:
            reason = stream.conn._take_cancel()
            if reason is None:
                raise
            stream.interrupted(reason)

    def complete(self, stream: ActiveStream) -> None:
        """The stream is over (answered, failed or abandoned): log it."""
        info = stream.info
        if stream.req.method:  # a stream that never decoded a request was not counted
            self.stats.gauge_add(self._rq_active, -1)
        info.bytes_received = stream.req.body_bytes
        if info.response_code is None:
            info.response_code = 0  # Envoy prints 0 when nothing was sent downstream
        info.finish()
        self.stats.inc(self._rq_completed)
        self.stats.observe(self._rq_time,
                           ((info.end_monotonic or 0) - info.start_monotonic) * 1000)
        code = info.response_code // 100
        if code in self._rq_xx:
            self.stats.inc(self._rq_xx[code])
        for logger in self.loggers:
            logger.log(info)

    def node_ip(self) -> str | None:
        """The node's own address, which Envoy appends to XFF for a loopback peer when
        use_remote_address is set (Envoy's LocalInfo address: the first non-loopback
        interface address)."""
        if self._node_ip is False:
            self._node_ip = _first_non_loopback_ipv4()
        return self._node_ip if isinstance(self._node_ip, str) else None


def _first_non_loopback_ipv4() -> str | None:
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                req = struct.pack("256s", name.encode()[:15])
                ip = socket.inet_ntoa(fcntl.ioctl(s.fileno(), siocgifaddr, req)[20:24])
                if not ip.startswith("127."):
                    return ip
    return None
