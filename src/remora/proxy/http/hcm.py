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
import time
from collections.abc import Callable, Coroutine
from typing import Any

from remora.proxy import registry
from remora.proxy.config.strict import Fields
from remora.proxy.http import cors as _cors  # noqa: F401 - registers per-route parsers
from remora.proxy.http import fault as _fault  # noqa: F401
from remora.proxy.http.connection import Http1Connection
from remora.proxy.http.hcm_config import HCM_NAME, HCM_TYPE, HcmConfig, parse_hcm
from remora.proxy.http.route_config import Route
from remora.proxy.http.stream import ActiveStream
from remora.proxy.http2.codec_choice import choose_http2
from remora.proxy.interfaces import AccessLogger, Downstream, FactoryContext
from remora.proxy.server.drain import start_delay
from remora.proxy.stats import Counter, Gauge, Histogram, counter, declare, gauge, histogram

# http.<stat_prefix>.* that remora counts only when the event happens, listed at 0 from
# the start as Envoy lists them (ConnectionManagerNamedStats, the router's FilterStats)
HCM_COUNTED_WHEN_SEEN = (
    "downstream_cx_drain_close", "downstream_cx_idle_timeout", "downstream_cx_http2_total",
    "downstream_rq_http2_total", "downstream_cx_protocol_error",
    "downstream_rq_too_many_premature_resets", "downstream_cx_destroy_local",
    "downstream_cx_destroy_remote", "downstream_cx_destroy_active_rq",
    "downstream_cx_destroy_local_active_rq", "downstream_cx_destroy_remote_active_rq",
    "downstream_rq_idle_timeout", "downstream_rq_header_timeout",
    "downstream_rq_failed_path_normalization", "downstream_rq_non_relative_path",
    "downstream_rq_ws_on_non_ws_route", "downstream_cx_upgrades_total",
    "downstream_cx_delayed_close_timeout", "downstream_rq_rx_reset", "downstream_rq_tx_reset",
    "rq_reset_after_downstream_response_started", "downstream_rq_response_before_rq_complete",
    "no_route", "no_cluster", "rq_direct_response", "rq_total",
)
# ... and those only a feature remora refuses at config load could count: always 0 here,
# declared so that a dashboard or an alert on the name sees a series, as on Envoy
HCM_NEVER_COUNTED = (
    # HTTP/3 (codec_type HTTP3 and QUIC listeners are refused)
    "downstream_cx_http3_total", "downstream_rq_http3_total",
    # common_http_protocol_options max_connection_duration / max_requests_per_connection,
    # http1_safe_max_connection_duration and request_timeout are refused
    "downstream_cx_max_duration_reached", "downstream_cx_max_requests_reached",
    "downstream_cx_http1_soft_drain", "downstream_rq_timeout",
    # overload manager actions (only the connection-limit resource monitors are accepted)
    "downstream_cx_overload_disable_keepalive", "downstream_rq_overload_close",
    "rq_overload_local_reply",
    # original_ip_detection_extensions, path_with_escaped_slashes_action
    # UNESCAPE_AND_REDIRECT, redirect routes and internal redirects are refused
    "downstream_rq_rejected_via_ip_detection", "downstream_rq_redirected_with_normalized_path",
    "rq_redirect", "passthrough_internal_redirect_bad_location",
    "passthrough_internal_redirect_no_route", "passthrough_internal_redirect_predicate",
    "passthrough_internal_redirect_too_many_redirects",
    "passthrough_internal_redirect_unsafe_scheme",
    # a request or response over a buffering filter's limit: remora has no filter that
    # buffers a whole body
    "downstream_rq_too_large", "rs_too_large",
    # tracing is refused (an empty tracing block only)
    "tracing.client_enabled", "tracing.health_check", "tracing.not_traceable",
    "tracing.random_sampling", "tracing.service_forced",
)
_DRAINED = object()  # _codecless: closed by a drain before its first byte
HCM_GAUGES = ("downstream_cx_http1_active", "downstream_cx_http2_active",
              "downstream_cx_http3_active", "downstream_cx_ssl_active",
              "downstream_cx_upgrades_active")


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
        # (a slice, not reversed(): mypyc 2.4 fails with "AssertionError: Any" compiling
        # reversed() over this list of Any; docs/architecture.md "Native build")
        self.encoders = [f for f in cfg.http_filters[::-1] if hasattr(f, "encode_headers")]
        # per route (by id: routes live as long as this config): the filters that act on
        # its requests, worked out on its first request
        self._route_chains: dict[int, tuple[list[Any], list[Any]]] = {}
        self._last_route: Route | None = None  # the route of the last request, its chain
        self._last_chain: tuple[list[Any], list[Any]] = ([], [])
        # the last route's chain when it is the router alone: its start_http1 (start)
        self._last_start: Callable[[ActiveStream], Coroutine[Any, Any, Any] | None] | None = None
        self.sanitize_xfcc = cfg.sanitize_xfcc
        # the config's cached_property values as plain attributes: each request reads them
        # (stream.prepare), and a name that is a descriptor on the config's class is looked
        # up the slow way on every read
        self.request_policy = cfg.request_policy
        self.rewrites_path = cfg.rewrites_path
        # Envoy declares its counters up front, so /stats lists them at 0 before any
        # request; each stat's name is resolved to a handle once, here
        p = f"http.{cfg.stat_prefix}."
        stats = self.stats
        # Envoy's listener-scoped copies (ConnectionManagerListenerStats:
        # listener.<address>.http.<prefix>.downstream_rq_{1..5}xx and _completed): the
        # same increments folded into a second name, nothing more per request
        scope = getattr(ctx, "listener_scope", None)
        lp = f"{scope}{p}" if scope else ""
        self._rq_total = counter(stats, p + "downstream_rq_total", declared=True)
        self._cx_total = counter(stats, p + "downstream_cx_total", declared=True)
        self._rq_completed = counter(stats, p + "downstream_rq_completed", declared=True,
                                     also=(lp + "downstream_rq_completed",) if lp else ())
        self._rq_xx: tuple[Counter, ...] = tuple(  # 1xx..5xx
            counter(stats, f"{p}downstream_rq_{c}xx", declared=True,
                    also=(f"{lp}downstream_rq_{c}xx",) if lp else ()) for c in range(1, 6))
        self.rq_http1_total = counter(stats, p + "downstream_rq_http1_total", declared=True)
        # per connection: its codec, TLS, end and length (ConnectionManagerImpl's
        # constructor, onEvent and the codec's creation count these)
        self._cx_http1_total = counter(stats, p + "downstream_cx_http1_total", declared=True)
        self._cx_http1_active = gauge(stats, p + "downstream_cx_http1_active")
        self._cx_ssl_total = counter(stats, p + "downstream_cx_ssl_total", declared=True)
        self._cx_ssl_active = gauge(stats, p + "downstream_cx_ssl_active")
        self._cx_destroy = counter(stats, p + "downstream_cx_destroy", declared=True)
        self._cx_length = histogram(stats, p + "downstream_cx_length_ms", declared=True)
        # the bytes each connection reads and writes, as they move (HTTP/1.1 and HTTP/2)
        self.cx_rx_bytes = counter(stats, p + "downstream_cx_rx_bytes_total", declared=True)
        self.cx_tx_bytes = counter(stats, p + "downstream_cx_tx_bytes_total", declared=True)
        self.stat = p
        self._router_rq_total = counter(stats, p + "rq_total", declared=True)
        declare(stats, *(p + n for n in HCM_COUNTED_WHEN_SEEN + HCM_NEVER_COUNTED))
        for name in HCM_GAUGES:
            stats.gauge_add(p + name, 0)
        self._rq_time = histogram(stats, p + "downstream_rq_time")  # ms
        self.idle_timeout_stat = p + "downstream_cx_idle_timeout"
        # a stream ended by its max duration (route max_stream_duration / grpc-timeout):
        # Envoy's ActiveStream::onStreamMaxDurationReached counts it
        self.max_duration_reached = counter(stats, p + "downstream_rq_max_duration_reached",
                                            declared=True)
        self._rq_active = gauge(stats, p + "downstream_rq_active")
        self._cx_active = gauge(stats, p + "downstream_cx_active")
        # The store's own handles (StatsStore): a request's counters are added to the
        # handles' pending counts, its active gauge to the store's entry and its
        # downstream_rq_time to the histogram's pending values in place, five calls fewer
        # per request; over another Stats each change goes through the handle.
        # (not "_inline": mypyc names the C struct member after the attribute with one more
        # leading underscore, and __inline is a GCC keyword)
        self._inlined = (type(self._rq_total) is Counter and type(self._rq_active) is Gauge
                        and all(type(c) is Counter for c in (self._rq_completed, *self._rq_xx))
                        and type(self._rq_time) is Histogram)
        self._gauges = self._rq_active.values
        self._rq_active_name = self._rq_active.name
        self._node_ip: str | bool | None = False

    def count(self, name: str) -> None:
        """Count http.<stat_prefix>.NAME: the connection manager's counters of rare events
        (resets, timeouts, refused paths, the router's no_route), by name."""
        self.stats.inc(self.stat + name)

    async def on_connection(self, downstream: Downstream) -> None:
        self._cx_total.inc()
        self._cx_active.add(1)
        started = time.monotonic()
        ssl = downstream.writer.get_extra_info("ssl_object") is not None
        if ssl:
            self._cx_ssl_total.inc()
            self._cx_ssl_active.add(1)
        end: tuple[bool, bool] | None = None  # (the client closed first, mid-request)
        try:
            # codec_type AUTO: HTTP/2 by ALPN h2 or the client preface (http2/downstream.py)
            if self.cfg.codec_type == "AUTO" and not getattr(downstream.reader, "_buffer", 1):
                # no byte yet: it may wait here through a drain (_codecless)
                h2 = await self._codecless(downstream)
            else:
                h2 = await choose_http2(downstream, self.cfg.codec_type, self.cfg.idle_timeout)
            if h2 is None:  # not a byte within idle_timeout
                self.stats.inc(self.idle_timeout_stat)
                end = (False, False)
            elif h2 is _DRAINED:
                end = (False, False)  # closed by remora (_codecless)
            elif h2:
                # imported on the first HTTP/2 connection, not at start-up (codec_choice.py)
                from remora.proxy.http2.downstream import Http2Connection
                h2conn = Http2Connection(self, downstream)
                try:
                    await h2conn.run()
                finally:
                    end = h2conn.ended_by()
            else:
                # Envoy's downstream_cx_http1_* count from the codec's creation, on the
                # first bytes (ConnectionManagerImpl::onData): a connection closed before
                # it sent one has no codec (a health check's connect, a port probe)
                # (at_eof: the client's FIN came and nothing it sent is left unread)
                codec = not downstream.reader.at_eof()
                if codec:
                    self._cx_http1_total.inc()
                    self._cx_http1_active.add(1)
                conn = Http1Connection(self, downstream)
                try:
                    await conn.run()
                finally:
                    if codec:
                        self._cx_http1_active.add(-1)
                    end = conn.ended_by()
                    if conn.upgrades:
                        self.stats.gauge_add(self.stat + "downstream_cx_upgrades_active",
                                             -conn.upgrades)
        finally:
            self._cx_active.add(-1)
            if ssl:
                self._cx_ssl_active.add(-1)
            # ConnectionManagerImpl::onEvent: every end, and which side closed first, and
            # whether a request was still in progress then
            self._cx_destroy.inc()
            if end is not None:
                # (Envoy's downstream_cx_destroy_remote when the client closed first, else
                # _local, and their *_active_rq when a request was in progress)
                side = "downstream_cx_destroy_" + ("remote" if end[0] else "local")
                self.count(side)
                if end[1]:
                    self.count("downstream_cx_destroy_active_rq")
                    self.count(side + "_active_rq")
            self._cx_length.observe((time.monotonic() - started) * 1000)

    async def _codecless(self, downstream: Downstream) -> bool | object | None:
        """choose_http2 for a connection that has sent nothing yet (Envoy: no codec, it
        is created on the first bytes), told of a drain meanwhile: at the moment
        server/drain.py's start_delay picks (Envoy's "drain deadline approaching"), one
        still without a byte is closed at once, nothing written and no delayed close, and
        counted as downstream_cx_drain_close (observed on Envoy 1.40: the connections
        that sent nothing close then, test_h1_drain_envoy_parity.py). _DRAINED then."""
        loop = asyncio.get_running_loop()
        timer: list[asyncio.TimerHandle] = []
        drained = False

        def close() -> None:
            nonlocal drained
            if getattr(downstream.reader, "_buffer", b""):
                return  # its first bytes came as the timer fired: a codec's now
            drained = True
            self.count("downstream_cx_drain_close")
            downstream.close()  # the reader's EOF ends choose_http2

        def told(until: float, left: float) -> None:
            delay = start_delay(until, left, self.cfg.drain_timeout)
            if delay is not None and not timer:
                timer.append(loop.call_later(delay, close))
        off = downstream.drain.add_on_drain(told)
        try:
            h2 = await choose_http2(downstream, "AUTO", self.cfg.idle_timeout)
        finally:
            off()
            if timer:
                timer[0].cancel()
        return _DRAINED if drained else h2

    async def serve(self, stream: ActiveStream) -> None:
        """STREAM served as one coroutine (an HTTP/2 stream, a connection whose serve is
        replaced): ``start``, then what it left to wait for. A request ``start`` sent
        without a coroutine (in flight: ``Router.start_http1``) is waited for here as its
        coroutine, so this returns only once the stream is served."""
        rest = self.start(stream)
        if rest is None:
            conn = stream.conn
            flight = getattr(conn, "in_flight", None)
            if flight is not None:
                conn.in_flight = None
                rest = flight.resumed()
        if rest is not None:
            await rest

    def start(self, stream: ActiveStream) -> Coroutine[Any, Any, Any] | None:
        """``serve`` for an HTTP/1.1 request or an HTTP/2 stream, from the connection's
        read callback (connection.py ``_start``, http2/stream.py ``StreamConn.start``):
        what ``serve`` does, without a coroutine of its own.
        None when the stream ended here (a local reply) or went upstream without a
        coroutine (a chain of the router alone: ``Router.start``); otherwise the coroutine
        that goes on with the filters (or the router's own)."""
        if self._inlined:
            self._rq_total.pending += 1
            self._gauges[self._rq_active_name] += 1
        else:
            self._rq_total.inc()
            self._rq_active.add(1)
        if not stream.prepare():
            return None
        route = stream.route
        if route is None:
            decoders = self.decoders
        elif route is self._last_route:  # the usual case: one route takes the traffic
            decoders, stream.encoders = self._last_chain
            start = self._last_start
            if start is not None:
                # the router's rq_total (Router::Filter::decodeHeaders): a request that
                # reaches it, here the chain's only filter
                self._router_rq_total.pending += 1  # (any handle takes it: no call)
                return start(stream)
        else:
            chain = self._route_chains.get(id(route))
            if chain is None:
                chain = self._route_chain(route)
            self._last_route, self._last_chain = route, chain
            decoders, stream.encoders = chain
            self._last_start = _router_start(decoders)
        start = _router_start(decoders)
        if start is not None:
            self._router_rq_total.inc()
            return start(stream)
        return self._decode(stream, decoders)

    async def _decode(self, stream: ActiveStream, decoders: list[Any]) -> None:
        """The rest of ``serve`` after ``prepare``: the decoder filters in order."""
        try:
            for f in decoders:
                if getattr(f, "terminal", False):
                    self._router_rq_total.inc()  # the router's rq_total: it got the request
                if not await f.decode_headers(stream):
                    return
        except asyncio.CancelledError:
            reason = stream.conn.take_cancel()
            if reason is None:
                raise
            stream.interrupted(reason)

    def _route_chain(self, route: Route) -> tuple[list[Any], list[Any]]:
        """ROUTE's decoder and encoder filters: all of them but those that say they are
        inert there (``inert_for(route)``: fault without a fault configured, cors without
        an enabled policy); config alone decides that, so it is asked once per route."""
        inert = {id(f) for f in self.filters
                 if hasattr(f, "inert_for") and f.inert_for(route)}
        chain = ([f for f in self.decoders if id(f) not in inert],
                 [f for f in self.encoders if id(f) not in inert])
        self._route_chains[id(route)] = chain
        return chain

    def complete(self, stream: ActiveStream) -> None:
        """The stream is over (answered, failed or abandoned): log it."""
        info = stream.info
        req = stream.req
        info.bytes_received = req.body_bytes
        code = info.response_code
        if code is None:
            code = info.response_code = 0  # Envoy prints 0 when nothing was sent downstream
        end = info.end_monotonic
        if end is None:
            end = info.end_monotonic = time.monotonic()  # StreamInfo.finish
        # a stream that never decoded a request was not counted active
        if self._inlined:
            if req.method:
                self._gauges[self._rq_active_name] -= 1
            # downstream_rq_completed: a request that got a response (Envoy counts none
            # for a stream the client reset before anything was sent)
            if 100 <= code < 600:
                self._rq_completed.pending += 1
                self._rq_xx[code // 100 - 1].pending += 1
            pending = self._rq_time.pending  # Histogram.observe
            pending.append((end - info.start_monotonic) * 1000)
            if len(pending) >= Histogram.FOLD_AT:
                self._rq_time.fold()
        else:
            if req.method:
                self._rq_active.add(-1)
            if 100 <= code < 600:
                self._rq_completed.inc()
                self._rq_xx[code // 100 - 1].inc()
            self._rq_time.observe((end - info.start_monotonic) * 1000)
        for logger in self.loggers:
            logger.log(info)

    def node_ip(self) -> str | None:
        """The node's own address, which Envoy appends to XFF for a loopback peer when
        use_remote_address is set (Envoy's LocalInfo address: the first non-loopback
        interface address)."""
        if self._node_ip is False:
            self._node_ip = _first_non_loopback_ipv4()
        return self._node_ip if isinstance(self._node_ip, str) else None


def _router_start(decoders: list[Any]) -> Callable[[ActiveStream], Coroutine[Any, Any, Any]
                                                  | None] | None:
    """A chain of the router alone: its ``start_http1``, which handles the cancellations
    it waits through itself (``_Forward.run``), as ``serve`` would around it."""
    if len(decoders) == 1:
        start: Callable[[ActiveStream], Coroutine[Any, Any, Any] | None] | None = getattr(
            decoders[0], "start_http1", None)
        return start
    return None


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
