"""``envoy.filters.network.tcp_proxy``: relay bytes between downstream and one upstream.

https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto
- Half-close is honoured both ways: a FIN from one side is passed on with shutdown(SHUT_WR)
  and the other direction keeps flowing until it ends too. Over TLS the end of stream is
  a close_notify, received and sent as Envoy's SslSocket does (tls._HalfClose): a TLS
  downstream's close_notify is a FIN to a plain upstream, a plain downstream's FIN a
  close_notify to a TLS upstream, and the answer still comes back.
- ``idle_timeout`` (default 1h, 0 disables) closes both sides when no byte moved for that long.
- A refused upstream gives flags UF,URX and the transport failure reason, as Envoy 1.40
  logs it (``"delayed_connect_error:_Connection_refused"``); no host gives UH; a circuit
  breaker overflow UO; an unknown cluster NC.
Stats: tcp.<stat_prefix>.* (https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/network_filters/tcp_proxy_filter#statistics).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.interfaces import (
    AccessLogger,
    ConnectionFacts,
    Downstream,
    FactoryContext,
    Upstream,
    UpstreamError,
)
from remora.proxy.network_filters import plain_relay
from remora.proxy.registry import register
from remora.proxy.stats import stat_name_part
from remora.proxy.stream_info import StreamInfo
from remora.proxy.transport import handshake, tls

CHUNK = 256 * 1024


class _Relay:
    """Both directions of one proxied connection, with a lazily re-armed idle timer."""

    __slots__ = ("last", "rx", "timed_out", "tx")

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.rx = 0  # downstream -> upstream
        self.tx = 0  # upstream -> downstream
        self.timed_out = False


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                relay: _Relay, downstream_to_upstream: bool) -> None:
    read = reader.read
    write = writer.write
    drain = writer.drain
    while True:
        data = await read(CHUNK)
        if not data:
            break
        write(data)
        relay.last = time.monotonic()
        if downstream_to_upstream:
            relay.rx += len(data)
        else:
            relay.tx += len(data)
        await drain()
    if writer.is_closing():
        return
    if writer.can_write_eof():
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
    else:
        # a TLS connection: its close_notify, after what was relayed (tls.write_eof)
        tls.write_eof(writer.transport)


# tcp.<stat_prefix>.* that only a feature remora refuses at config load could count
# (TcpProxyStats): always 0 here, listed as Envoy lists them
TCP_NEVER_COUNTED = (
    # max_downstream_connection_duration, receive_before_connect / max_early_data_bytes
    # (early data, a delayed route) and overload actions are refused
    "max_downstream_connection_duration", "early_data_received_count_total",
    "route_delayed_total", "downstream_cx_overload_close",
    # remora's listener drain does not close a tcp_proxy connection before its end
    "downstream_cx_drain_close",
)


class TcpProxy:
    # Envoy's TcpProxy::Filter enables half-close on the downstream connection
    # (initializeReadFilterCallbacks) and on the upstream one: the listener sets up a TLS
    # downstream for it before the handshake (tls.accept_downstream)
    half_close = True

    def __init__(self, context: FactoryContext, stat_prefix: str, cluster: str,
                 idle_timeout: float, max_connect_attempts: int,
                 access_loggers: list[AccessLogger]) -> None:
        self.context = context
        self.prefix = f"tcp.{stat_name_part(stat_prefix)}."
        self.cluster_name = cluster
        self.idle_timeout = idle_timeout
        self.max_connect_attempts = max_connect_attempts
        self.access_loggers = access_loggers
        for name in ("downstream_cx_total", "downstream_cx_no_route",
                     "downstream_cx_rx_bytes_total", "downstream_cx_tx_bytes_total",
                     "idle_timeout", *TCP_NEVER_COUNTED):
            context.stats.inc(self.prefix + name, 0)  # listed at 0, as Envoy does

    async def on_connection(self, downstream: Downstream) -> None:
        await self._serve(downstream.facts, downstream.info, _ready(downstream))

    async def on_new_tls_connection(self, facts: ConnectionFacts, info: StreamInfo,
                                    established: Awaitable[Downstream | None]) -> None:
        """A TLS connection whose handshake is under way (ESTABLISHED: the downstream once
        it ends, None when it failed): Envoy runs the network filters' onNewConnection
        when the connection is created, before its handshake, so tcp_proxy counts it
        and connects upstream at once, and a failed handshake (a plain-text client, no
        shared cipher, a refused certificate) still makes an upstream connection that
        is closed, and its access log line (observed on 1.40)."""
        await self._serve(facts, info, established)

    async def _serve(self, facts: ConnectionFacts, info: StreamInfo,
                     established: Awaitable[Downstream | None]) -> None:
        self.context.stats.inc(self.prefix + "downstream_cx_total")
        try:
            await self._proxy(facts, info, established)
        finally:
            info.finish()
            for logger in self.access_loggers:
                logger.log(info)

    async def _proxy(self, facts: ConnectionFacts, info: StreamInfo,
                     established: Awaitable[Downstream | None]) -> None:
        stats = self.context.stats
        cluster = self.context.cluster_manager.get(self.cluster_name)
        if cluster is None:
            info.upstream_cluster = self.cluster_name
            info.set_flag("NC")
            stats.inc(self.prefix + "downstream_cx_no_route")
            return
        upstream = None
        cprefix = f"cluster.{cluster.name}."
        for attempt in range(1, self.max_connect_attempts + 1):
            info.upstream_request_attempt_count = attempt
            # Envoy's TCP pool counts each attempt as a pending request and a connection
            # handed to the filter as a request (cluster upstream_rq_total).
            stats.inc(cprefix + "upstream_rq_pending_total")
            token = handshake.HALF_CLOSE.set(True)  # a TLS upstream half-closes
            try:
                upstream = await cluster.connect(facts, info)
                stats.inc(cprefix + "upstream_rq_total")
                break
            except UpstreamError as err:
                info.set_flag(err.flag)
                info.upstream_transport_failure_reason = err.reason or None
                if err.host:
                    info.upstream_host = err.host
                if err.flag != "UF":
                    return
                if attempt == self.max_connect_attempts:
                    info.set_flag("URX")  # connect attempts exhausted
                    stats.inc(cprefix + "upstream_cx_connect_attempts_exceeded")
                    return
            finally:
                handshake.HALF_CLOSE.reset(token)
        assert upstream is not None
        info.clear_flag("UF")
        # the host's side of upstream_rq_total: the connection is the request, active
        # until it closes (Envoy's TCP pool attaches the stream to it)
        host = upstream.host
        cluster.host_stat(host, "rq_total")
        cluster.host_stat(host, "rq_active")
        relay: _Relay | plain_relay.PlainRelay = _Relay()
        try:
            downstream = await established
            if downstream is None:  # its TLS handshake failed: the upstream closes
                return
            down_fd = plain_relay.plain_socket_fd(downstream.writer)
            up_fd = plain_relay.plain_socket_fd(upstream.writer)
            # a TLS side's close_notify reaches _pipe as an end of stream (a plain one's
            # FIN does already)
            tls.half_close(downstream.writer.transport)
            tls.half_close(upstream.writer.transport)
            if down_fd is not None and up_fd is not None:
                # no TLS on either side: the sockets are read and written directly from
                # the event loop's callbacks, each read up to that side's buffer limit
                relay = plain_relay.PlainRelay(down_fd, up_fd, downstream.buffer_limit,
                                               cluster.buffer_limit)
                cancel_timer = self._arm_idle(relay, relay.stop)
                try:
                    await relay.run(downstream.reader, downstream.writer,
                                    upstream.reader, upstream.writer)
                finally:
                    cancel_timer()
                    # what came from the upstream passed no protocol that counts it
                    # (open_upstream's on_lost counts the bytes a stream reader got)
                    stats.inc(cprefix + "upstream_cx_rx_bytes_total", relay.tx)
            else:
                relay = _Relay()
                await self._stream_relay(downstream, upstream, relay)
        finally:
            upstream.writer.close()
            cluster.host_stat(host, "rq_active", -1)
            info.bytes_received += relay.rx
            info.bytes_sent += relay.tx
            stats.inc(self.prefix + "downstream_cx_rx_bytes_total", relay.rx)
            stats.inc(self.prefix + "downstream_cx_tx_bytes_total", relay.tx)
            stats.inc(cprefix + "upstream_cx_tx_bytes_total", relay.rx)
            if relay.timed_out:
                stats.inc(self.prefix + "idle_timeout")

    async def _stream_relay(self, downstream: Downstream, upstream: Upstream,
                            relay: _Relay) -> None:
        """The relay through asyncio streams (a TLS transport on either side)."""
        up = asyncio.ensure_future(_pipe(downstream.reader, upstream.writer, relay, True))
        down = asyncio.ensure_future(_pipe(upstream.reader, downstream.writer, relay, False))

        def stop() -> None:
            up.cancel()
            down.cancel()
        cancel_timer = self._arm_idle(relay, stop)
        try:
            done, pending = await asyncio.wait((up, down), return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:  # one side failed (reset): stop the other
                task.cancel()
            for task in (*done, *pending):
                with contextlib.suppress(BaseException):
                    await task
        finally:
            cancel_timer()
            up.cancel()
            down.cancel()

    def _arm_idle(self, relay: _Relay | plain_relay.PlainRelay,
                  stop: Callable[[], None]) -> Callable[[], None]:
        """One timer per connection, re-armed only when it fires (no per-read cost);
        returns the function that cancels whichever timer is current."""
        if self.idle_timeout <= 0:
            return lambda: None
        loop = asyncio.get_running_loop()
        holder: list[asyncio.TimerHandle] = []

        def check() -> None:
            remaining = relay.last + self.idle_timeout - time.monotonic()
            if remaining > 0:
                holder[0] = loop.call_later(remaining, check)
                return
            relay.timed_out = True
            stop()

        holder.append(loop.call_later(self.idle_timeout, check))
        return lambda: holder[0].cancel()


def _ready(downstream: Downstream) -> asyncio.Future[Downstream | None]:
    """A plain connection's downstream, established already: a done future (a coroutine
    would be left unawaited, with Python's RuntimeWarning, when no upstream is found)."""
    ready: asyncio.Future[Downstream | None] = asyncio.get_running_loop().create_future()
    ready.set_result(downstream)
    return ready


@register("network", "envoy.filters.network.tcp_proxy",
          "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")
def _factory(typed: Fields, context: FactoryContext) -> TcpProxy:
    stat_prefix = typed.string("stat_prefix", required=True)
    cluster = typed.string("cluster")
    idle = typed.duration("idle_timeout", 3600.0)
    attempts = typed.integer("max_connect_attempts", 1)
    logs = typed.items("access_log")
    typed.done()
    if not cluster:
        raise ConfigError(typed.at("cluster"), "required field is missing",
                          "remora's tcp_proxy needs `cluster` (weighted_clusters is not supported)")
    if attempts is not None and attempts < 1:
        raise ConfigError(typed.at("max_connect_attempts"), "must be at least 1")
    loggers = context.access_loggers(logs, typed.at("access_log"))
    return TcpProxy(context, stat_prefix, cluster, idle, attempts or 1, loggers)
