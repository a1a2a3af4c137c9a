"""Upstream HTTP/2: a multiplexed connection pool and the router's attempt on it.

A cluster whose protocol options resolve to HTTP/2 (upstream/config.py
``HttpProtocolOptions.upstream_http2``: explicit ``http2_protocol_options``, the legacy
cluster field, or ``use_downstream_protocol_config`` for an HTTP/2 downstream) sends its
requests here instead of the HTTP/1.1 pool. As Envoy's HTTP/2 connection pool
(source/common/http/http2/conn_pool.cc) does, one connection per pool key carries streams
up to the smaller of the cluster's ``max_concurrent_streams`` and the peer's SETTINGS; a new
connection is opened only when every connection of the key is full, draining (GOAWAY) or
gone. Streams that arrive while a connection is still connecting wait for it, as Envoy
attaches pending requests to a connecting client.

The HTTP/2 framing, HPACK and flow-control bookkeeping are libnghttp2's, through the
``ngh2`` binding (sans-IO, Role.CLIENT): this module feeds it the bytes the transport
delivers and writes what it has to send. The transport ``Cluster.connect`` opened is taken over with
``set_protocol`` (what the core's StreamReader already buffered, such as the server's
SETTINGS, is fed first), and the core's ``TrackedProtocol`` is still told when the
connection ends (its cx_active / rx bytes accounting).

Failures map to Envoy's answers (router.cc, checked against Envoy 1.40 in
tests/unit/proxy/http2/test_upstream_envoy_parity.py), retried or answered here
(``_abort``) and charged to the cluster as Envoy's chargeUpstreamAbort does: a RST_STREAM
before the response is 503 UR ``upstream_reset_before_response_started{remote_reset}``
(REFUSED_STREAM: ``remote_refused_stream_reset``, retriable by ``retry_on:
refused-stream`` as well as ``reset``), the connection closing under a stream is 503 UC
``connection_termination``, a protocol error 502 UPE; after the response started the
downstream connection is closed with the flag and
``upstream_reset_after_response_started{...}``. nghttp2 resets a malformed response (a
malformed header, a body longer or shorter than its content-length) as a stream error:
that stream fails as a protocol error (502 UPE), the others of the connection go on;
a connection error (GOAWAY from nghttp2) fails all of them alike.

The router's side of the contract (``Forward``) is what router.py's ``_Forward`` has; its
one dispatch hunk in ``_attempt`` calls ``forward_h2`` with its failure class.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import ngh2
from ngh2 import ErrorCode, Setting

from remora.proxy.deferred_write import batch_for
from remora.proxy.http.connection import BUFFER_LIMIT
from remora.proxy.http.filter import HttpStream
from remora.proxy.http.header_mutation import apply_to_request
from remora.proxy.http.pool import PoolKey, limits_of
from remora.proxy.http.retry import RetryPolicy
from remora.proxy.http.route_config import Route
from remora.proxy.http.stream import (
    grpc_host_outcome,
    hcm_count,
    host_outcome,
    is_grpc_content_type,
)
from remora.proxy.http.upstream_failure import LocalAnswer, failure_answer
from remora.proxy.http.upstream_request import expected_timeout_ms
from remora.proxy.http2.keepalive import PING_DATA, Keepalive
from remora.proxy.http2.upstream_messages import (
    REFUSED_STREAM,
    request_headers,
    reset_reason,
    response_head,
    trailer_fields,
)
from remora.proxy.interfaces import Cluster, HostCounts, Stats, Upstream, UpstreamError
from remora.proxy.stats import Counter, Histogram, counter
from remora.proxy.takeover import take_over
from remora.proxy.upstream.auto_host import TlsOverride
from remora.proxy.upstream.config import (
    DEFAULT_H2,
    Http2Options,
    protocol_options,
)

PROTOCOL = "HTTP/2"
_RESET_BODY = "upstream connect error or disconnect/reset before headers. "


def http2_upstream(cluster: object, downstream_protocol: str | None) -> bool:
    """Whether the router sends this request over HTTP/2 (the dispatch in router.py)."""
    opts = protocol_options(cluster)
    return opts is not None and opts.upstream_http2(downstream_protocol)


# -- one connection -----------------------------------------------------------------------

class _TurnEnd:
    """What the write batch flushes for an upstream connection at the turn's end (its
    own ``flush`` schedules that)."""

    __slots__ = ("flush",)

    def __init__(self, flush: Callable[[], None]) -> None:
        self.flush = flush

class _Protocol(asyncio.Protocol):
    """The transport's protocol once the HTTP/2 client owns it. PREVIOUS (the core's
    TrackedProtocol) still hears of the bytes received and of the end."""

    def __init__(self, client: H2Client, previous: asyncio.BaseProtocol) -> None:
        self.client = client
        self.previous = previous

    def data_received(self, data: bytes) -> None:
        # upstream_cx_rx_bytes_total as the bytes come (PREVIOUS adds what it read
        # before the client took over when the connection ends)
        self.client.rx.pending += len(data)
        self.client.on_data(data)

    def eof_received(self) -> bool | None:
        return None  # close: HTTP/2 has no half-closed connections

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.on_lost()
        with contextlib.suppress(Exception):
            self.previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self.client.write_paused = True

    def resume_writing(self) -> None:
        self.client.on_writable()


class H2Stream:
    """One request/response exchange on an H2Client; also the request body's
    ``codec.Sink``. Events from the connection are queued for the router's attempt,
    which handles them in order (so it can wait for the downstream between them).

    A DRIVER (the downstream's HTTP/1.1 connection or HTTP/2 stream, which drive the
    attempt's coroutine from their callbacks) is told the attempt waits for these events
    (its ``response_wait``, as the router's HTTP/1.1 attempt announces its own), and is
    resumed once the read that brought them has queued them all (``H2Client.on_data``),
    as the HTTP/1.1 upstream's read callback resumes it: no done callback, no loop
    iteration in between."""

    __slots__ = ("_drain", "_waiter", "client", "closed", "driver", "end_on_headers",
                 "end_pending", "ended", "events", "headers", "id", "pending", "unacked")

    def __init__(self, client: H2Client, driver: _Driver | None) -> None:
        self.client = client
        self.driver = driver
        self.id = 0
        self.events: list[tuple[Any, ...]] = []
        self._waiter: asyncio.Future[None] | None = None
        self.headers: list[tuple[bytes, bytes]] = []  # the request head, until it is sent
        self.end_on_headers = False
        self.unacked = 0  # response bytes received, not yet given back to the windows
        self.pending = bytearray()  # request body not yet within the flow-control window
        self.end_pending = False
        self.ended = False  # END_STREAM sent
        self.closed = False  # reset or complete: nothing more is sent
        self._drain: asyncio.Future[None] | None = None

    # events, from the connection
    def push(self, *event: Any) -> None:
        self.events.append(event)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
            driver = self.driver
            if driver is not None:
                client = self.client
                if client.reading:
                    client.woken.append((driver, w))  # resumed once the read is taken in
                else:
                    client.loop.call_soon(driver.resume, w)  # (as a done callback would)

    # codec.Sink: the request body
    def data(self, chunk: bytes) -> None:
        if self.closed or not chunk:
            return
        self.pending += chunk
        self.client.pump(self)

    def end(self) -> None:
        if self.closed:
            return
        self.end_pending = True
        self.client.pump(self)

    def congested(self) -> bool:
        return len(self.pending) > BUFFER_LIMIT or self.client.write_paused

    async def wait(self) -> None:
        """Until the body queued so far fits the window again and the socket drained."""
        while not self.closed and self.congested():
            self._drain = self.client.loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    def wake_writer(self) -> None:
        d = self._drain
        if d is not None and not d.done():
            d.set_result(None)

    def reset(self, code: int = ErrorCode.CANCEL) -> None:
        """Abandon the exchange (timeout, retry, downstream gone): RST_STREAM."""
        if self.closed:
            return
        self.closed = True
        self.wake_writer()
        self.client.reset_stream(self, code)


class H2Client:
    """One upstream HTTP/2 connection and its streams."""

    # slots: past 30 attributes CPython 3.11 gives instances no shared-key dict, and every
    # attribute access on them is slower (as StreamConn, http2/stream.py)
    __slots__ = ("_batch", "_flush_scheduled", "_handlers", "_idle_timer", "_keepalive",
                 "_pending_out", "_turn_end", "closed", "conn", "created", "error", "goaway",
                 "host_counts", "idle_timeout", "key", "loop", "max_duration", "max_requests",
                 "on_idle",
                 "options", "owner", "peer_max_streams", "reading", "ready", "reserved",
                 "rx", "settings_received", "stat", "stats", "streams", "total", "tx", "upstream",
                 "waiting", "woken", "write_paused")

    def __init__(self, key: PoolKey, owner: object, options: Http2Options,
                 max_requests: int, idle_timeout: float, stats: Stats, stat: str,
                 on_idle: Callable[[H2Client], None], max_duration: float = 0.0) -> None:
        self.key = key
        self.owner = owner
        self.options = options
        self.max_requests = max_requests  # max_requests_per_connection (0: unlimited)
        self.idle_timeout = idle_timeout
        # common_http_protocol_options.max_connection_duration: then drained, as Envoy
        # drains a connection past it (no new streams, closed once the last one ends)
        self.max_duration = max_duration
        self.created = time.monotonic()
        self.stats = stats
        self.stat = stat
        # upstream_cx_{tx,rx}_bytes_total, as the bytes move (as Envoy counts them)
        self.tx = counter(stats, stat + "upstream_cx_tx_bytes_total")
        self.rx = counter(stats, stat + "upstream_cx_rx_bytes_total")
        self.on_idle = on_idle
        self.loop = asyncio.get_running_loop()
        self.upstream: Upstream | None = None
        # the host's stats (OWNER's host_counts of the upstream's host), once a stream
        # asked for them: kept here as on an HTTP/1.1 pooled connection (no call per stream)
        self.host_counts: HostCounts | None = None
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.ready.add_done_callback(_consume)
        self.error: UpstreamError | None = None
        self.streams: dict[int, H2Stream] = {}
        # streams admitted before the peer's SETTINGS lowered the limit: sent once an open
        # stream ends (nghttp2 queues such requests in Envoy the same way)
        self.waiting: deque[H2Stream] = deque()
        self.reserved = 0  # streams admitted (waiting for the connection or open)
        self.total = 0  # streams ever admitted (max_requests_per_connection)
        self.goaway = False  # no new streams (GOAWAY received, or draining)
        self.closed = False
        self.write_paused = False
        self.settings_received = False  # the peer's first SETTINGS frame arrived
        # the peer's SETTINGS_MAX_CONCURRENT_STREAMS; until it arrives, nghttp2's
        # assumption (peer_max_concurrent_streams: 100, RFC 9113's recommended minimum)
        self.peer_max_streams = 100
        self._idle_timer: asyncio.TimerHandle | None = None
        self._keepalive: Keepalive | None = None  # connection_keepalive
        self._pending_out = b""  # serialised, written by the next flush (_flush_now)
        self._flush_scheduled = False
        self._batch = batch_for(self.loop)
        self._turn_end = _TurnEnd(self._flush_turn)  # what the batch flushes
        # a read's events are being taken in: the streams they woke (driver, wait) are
        # resumed at its end (H2Stream)
        self.reading = False
        self.woken: list[tuple[_Driver, asyncio.Future[None]]] = []
        # headers cross as bytes: the HTTP/1.1 side reads and writes them as latin-1, so
        # what a client sent reaches the upstream byte for byte (as through Envoy)
        # window updates follow what the downstream took (acknowledge)
        self.conn = ngh2.Connection(ngh2.Role.CLIENT,
                                    ngh2.Configuration(auto_window_update=False))
        # the events of every stream, by their exact class (ngh2 makes no subclasses): one
        # lookup instead of _event's isinstance chain; any other event goes there
        self._handlers: dict[type[ngh2.Event], Callable[[Any], None]] = {
            ngh2.DataReceived: self._on_data_frame, ngh2.ResponseReceived: self._on_response,
            ngh2.StreamClosed: self._on_closed}

    @property
    def host(self) -> str:
        return self.upstream.host if self.upstream is not None else ""

    def limit(self) -> int:
        """Streams this connection may carry at once: the cluster's max_concurrent_streams,
        lowered by the peer's SETTINGS_MAX_CONCURRENT_STREAMS once it arrived."""
        return min(self.options.max_concurrent_streams, self.peer_max_streams)

    def has_capacity(self) -> bool:
        if self.closed or self.goaway or self.error is not None:
            return False
        if self.max_requests and self.total >= self.max_requests:
            return False
        if self.max_duration > 0 and time.monotonic() - self.created >= self.max_duration:
            if not self.goaway:  # Envoy's max duration timer: drained from now on
                self.stats.inc(self.stat + "upstream_cx_max_duration_reached")
            self.goaway = True
            if self.reserved == 0:
                self.close()
            return False
        # (limit, inline: asked once per stream)
        return self.reserved < min(self.options.max_concurrent_streams, self.peer_max_streams)

    def admit(self) -> None:
        self.reserved += 1
        self.total += 1
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def release(self) -> None:
        self.reserved -= 1
        if self.reserved <= 0:
            self.reserved = 0
            if self.goaway or (self.max_requests and self.total >= self.max_requests):
                if not self.goaway and not self.closed:
                    # the connection served its max_requests_per_connection
                    self.stats.inc(self.stat + "upstream_cx_max_requests")
                self.close()
            elif self.idle_timeout > 0 and not self.closed:
                self._idle_timer = self.loop.call_later(self.idle_timeout, self._idle_close)

    def _idle_close(self) -> None:
        self._idle_timer = None
        if self.reserved == 0:
            if not self.closed:
                self.stats.inc(self.stat + "upstream_cx_idle_timeout")
            self.close()

    # -- connection ----------------------------------------------------------------------
    def start(self, upstream: Upstream) -> None:
        """Take UPSTREAM's transport over and send the connection preface with Envoy's
        settings: its stream window, push disabled, and a WINDOW_UPDATE that opens the
        connection window to initial_connection_window_size."""
        self.upstream = upstream
        opts = self.options
        conn = self.conn
        # the SETTINGS Envoy 1.40's client sends (checked side by side in
        # test_upstream_envoy_parity's client-settings case): the HPACK table and
        # extended CONNECT at their defaults stated, push off, its window and limit
        conn.initiate_connection({
            Setting.HEADER_TABLE_SIZE: 4096,
            Setting.ENABLE_PUSH: 0,
            Setting.MAX_CONCURRENT_STREAMS: min(opts.max_concurrent_streams, 2**31 - 1),
            Setting.INITIAL_WINDOW_SIZE: opts.initial_stream_window_size,
            Setting.ENABLE_CONNECT_PROTOCOL: 0,
        })
        if opts.initial_connection_window_size > 65535:
            conn.set_local_window_size(opts.initial_connection_window_size)
        transport = upstream.writer.transport
        buffered, at_eof = take_over(upstream.reader, transport,
                                     _Protocol(self, transport.get_protocol()))
        self.stats.inc(self.stat + "upstream_cx_http2_total")
        if opts.keepalive_timeout > 0:
            self._keepalive = Keepalive(opts.keepalive_interval, opts.keepalive_timeout,
                                        opts.keepalive_jitter, self._ping,
                                        self._keepalive_timeout)
            self._keepalive.start()
        self.flush()
        if not self.ready.done():
            self.ready.set_result(None)
        if buffered:
            self.on_data(buffered)
        if at_eof or transport.is_closing():
            self.on_lost()

    def _ping(self) -> None:
        if not self.closed:
            with contextlib.suppress(ngh2.NGH2Error):
                self.conn.ping(PING_DATA)
            self.flush()

    def _keepalive_timeout(self) -> None:
        """No PING ACK within the timeout (http2/keepalive.py): Envoy counts
        cluster.<name>.http2.keepalive_timeout and closes without flushing; the streams
        on it end as a connection termination (503 UC before the response started)."""
        if self.closed:
            return
        self.stats.inc(self.stat + "http2.keepalive_timeout")
        if self.upstream is not None:
            with contextlib.suppress(Exception):
                self.upstream.writer.transport.abort()
        self.on_lost()

    def fail(self, err: UpstreamError) -> None:
        """Connecting failed: every stream waiting for this connection fails alike."""
        self.error = err
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(err)

    def flush(self) -> None:
        """Send what the codec queued, once per loop iteration: the frames of every stream
        that moved in this iteration (the HEADERS of a burst of requests, their
        WINDOW_UPDATEs) go out in one write instead of one per stream, as Envoy's codec
        writes once per dispatch."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # the loop's write batch (proxy/deferred_write.py): one end-of-turn call for
            # every connection's writes
            self._batch.defer(self._turn_end)

    def _serialise(self) -> None:
        """Serialise now what the codec queued (written by the next flush): what nghttp2
        decided on its own surfaces as events only once its frames are serialised."""
        # (closed or unusable: nothing more; no contextlib.suppress: every read)
        try:  # noqa: SIM105
            self._pending_out += self.conn.data_to_send()
        except ngh2.NGH2Error:
            pass

    def _flush_turn(self) -> None:
        if self._flush_scheduled:
            self._flush_now()

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        out, self._pending_out = self._pending_out, b""
        try:  # noqa: SIM105 - no contextlib.suppress: every turn with something to send
            out += self.conn.data_to_send()
        except ngh2.NGH2Error:
            pass
        if out and self.upstream is not None and not self.closed:
            self.tx.pending += len(out)
            self.upstream.writer.transport.write(out)

    def close(self) -> None:
        if self.closed:
            return
        if self._keepalive is not None:
            self._keepalive.stop()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        with contextlib.suppress(Exception):
            self.conn.terminate_connection(ErrorCode.NO_ERROR)
        with contextlib.suppress(Exception):
            self._flush_now()  # the GOAWAY (and anything queued) before the close
        self.closed = True
        if self.upstream is not None:
            with contextlib.suppress(Exception):
                self.upstream.writer.close()
        self.on_idle(self)

    def on_lost(self) -> None:
        """The connection ended: streams still open see a connection termination."""
        was_closed = self.closed
        self.closed = True
        if self._keepalive is not None:
            self._keepalive.stop()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        streams, self.streams = self.streams, {}
        waiting, self.waiting = list(self.waiting), deque()
        for st in [*streams.values(), *waiting]:
            st.closed = True
            st.wake_writer()
            st.push("lost", "reset")
        if not was_closed:
            self.on_idle(self)

    def on_writable(self) -> None:
        self.write_paused = False
        for st in self.streams.values():
            st.wake_writer()

    def on_data(self, data: bytes) -> None:
        if self.closed and not self.streams:
            return
        self.reading = True
        try:
            self._on_read(data)
        finally:
            self.reading = False
            woken = self.woken
            if woken:
                # the streams whose events this read brought go on now, in the order
                # they were woken (each one's whole read at once)
                self.woken = []
                for driver, wait in woken:
                    driver.resume(wait)

    def _on_read(self, data: bytes) -> None:
        ka = self._keepalive
        if ka is not None and ka.waiting:
            ka.on_frame()
        conn = self.conn
        try:
            conn.receive_data(data)
            events = conn.events()
        except ngh2.NGH2Error:
            # a fatal input error (one of the codec's resource bounds): the codec is
            # unusable
            self._protocol_error()
            return
        handlers = self._handlers
        for ev in events:
            handler = handlers.get(type(ev))
            if handler is None:
                self._event(ev)
            else:
                handler(ev)
            if self.closed and not self.streams:
                return
        self._start_waiting()
        # what nghttp2 decided itself (RST_STREAM of a malformed response, GOAWAY of a
        # connection error) surfaces once its frames are serialised
        self._serialise()
        try:
            events = conn.events()
        except ngh2.NGH2Error:
            events = []
        for ev in events:
            handler = handlers.get(type(ev))
            if handler is None:
                self._event(ev)
            else:
                handler(ev)
            if self.closed and not self.streams:
                return
        self._start_waiting()
        self.flush()

    def _protocol_error(self) -> None:
        """A connection error (RFC 9113 5.4.1; nghttp2 queued the GOAWAY): every stream
        fails as a protocol error (Envoy: upstream_cx_protocol_error)."""
        self.stats.inc(self.stat + "upstream_cx_protocol_error")
        self._flush_now()
        streams, self.streams = self.streams, {}
        waiting, self.waiting = list(self.waiting), deque()
        for st in [*streams.values(), *waiting]:
            st.closed = True
            st.wake_writer()
            st.push("lost", "protocol")
        self.close()

    def _on_data_frame(self, ev: ngh2.DataReceived) -> None:
        sid = ev.stream_id
        data = ev.data
        flow = len(data)  # nghttp2 accounts for padding itself
        st = self.streams.get(sid)
        if st is not None:
            st.unacked += flow
            st.push("data", data, flow)
            if ev.end_stream:
                self._ended(st)
        elif flow:
            # data for a stream we gave up: the connection window still counts it
            with contextlib.suppress(ngh2.NGH2Error, ValueError):
                self.conn.acknowledge_received_data(flow, sid)

    def _on_response(self, ev: ngh2.ResponseReceived) -> None:
        st = self.streams.get(ev.stream_id)
        if st is not None:
            st.push("headers", ev.headers, ev.end_stream)
            if ev.end_stream:
                self._ended(st)

    def _on_closed(self, ev: ngh2.StreamClosed) -> None:
        if ev.error_code:
            self._event(ev)  # nghttp2 reset it (below); a stream's usual end is nothing here

    def _event(self, ev: ngh2.Event) -> None:
        """Any event (the usual per-stream ones come by their class: _handlers)."""
        if isinstance(ev, ngh2.DataReceived):
            self._on_data_frame(ev)
        elif isinstance(ev, ngh2.ResponseReceived):
            self._on_response(ev)
        elif isinstance(ev, ngh2.TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.push("trailers", ev.headers)
                self._ended(st)  # trailers end the stream
        elif isinstance(ev, ngh2.StreamClosed):
            st = self.streams.get(ev.stream_id)
            if st is not None and ev.error_code:
                # nghttp2 reset it (no RST_STREAM came from the peer: that one popped it):
                # a malformed response is a protocol error of this stream
                self.streams.pop(ev.stream_id, None)
                st.closed = True
                st.wake_writer()
                if ev.error_code in (ErrorCode.PROTOCOL_ERROR, ErrorCode.FLOW_CONTROL_ERROR):
                    st.push("lost", "protocol")
                else:
                    st.push("reset", int(ev.error_code))
        elif isinstance(ev, ngh2.StreamReset):
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                st.closed = True
                st.wake_writer()
                st.push("reset", int(ev.error_code))
        elif isinstance(ev, ngh2.PingAcknowledged):
            if self._keepalive is not None:
                self._keepalive.on_ack()
        elif isinstance(ev, ngh2.GoAwayReceived):
            # GOAWAY: no new streams here; streams above last_stream_id were never
            # processed (refused, retriable), the others may still complete
            if not self.goaway:  # the peer's close notice (CodecClient's onGoAway)
                self.stats.inc(self.stat + "upstream_cx_close_notify")
            self.goaway = True
            self.on_idle(self)
            last = ev.last_stream_id
            refused = [self.streams.pop(s) for s in list(self.streams) if s > last]
            refused += self.waiting  # never sent: refused as well
            self.waiting = deque()
            for st in refused:
                st.closed = True
                st.wake_writer()
                st.push("reset", REFUSED_STREAM)
            if not self.streams and self.reserved == 0:
                self.close()  # nothing left to finish on it
        elif isinstance(ev, ngh2.ConnectionClosed):
            if ev.error_code and not self.closed:
                self._protocol_error()
        elif isinstance(ev, ngh2.SettingsReceived):
            self.settings_received = True  # _start_waiting after this batch
            limit = ev.settings.get(Setting.MAX_CONCURRENT_STREAMS)
            if limit is not None:
                self.peer_max_streams = limit
        elif isinstance(ev, ngh2.WindowUpdated):
            for st in list(self.streams.values()):
                if st.pending or st.end_pending:
                    self.pump(st)

    def _ended(self, st: H2Stream) -> None:
        st.push("end")
        if st.ended or st.closed:
            self.streams.pop(st.id, None)

    # -- streams -------------------------------------------------------------------------
    def open_stream(self, st: H2Stream, headers: list[tuple[bytes, bytes]],
                    end_stream: bool) -> None:
        st.headers = headers
        st.end_on_headers = end_stream
        # (_room, inline: once per stream)
        if self.waiting or len(self.streams) >= (self.peer_max_streams
                                                 if self.settings_received else 1):
            self.waiting.append(st)
            return
        self._send_headers(st)

    def _room(self) -> bool:
        """Whether one more stream may be opened now. Until the peer's SETTINGS arrived
        only one stream is sent: its limit is unknown (unlimited per RFC 9113 6.5.2), and
        a peer that enforces a lower one strictly (h2's server: a connection error)
        would take every stream of a burst down with the connection. Envoy 1.40 sends
        them all and loses them (503 UC); the first stream costs no round trip here."""
        limit = self.peer_max_streams if self.settings_received else 1
        return len(self.streams) < limit

    def _send_headers(self, st: H2Stream) -> None:
        try:
            sid = self.conn.send_request(st.headers,
                                         end_stream=st.end_on_headers)
        except (ngh2.NGH2Error, ValueError):
            # the connection is going away under it (GOAWAY, no stream ids left)
            st.closed = True
            st.wake_writer()
            st.push("lost", "reset")
            return
        st.id = sid
        self.streams[sid] = st
        st.headers = []
        if st.end_on_headers:
            st.ended = True
            if not self._flush_scheduled:  # (flush, inline: once per stream)
                self._flush_scheduled = True
                self._batch.defer(self._turn_end)
            return
        # a body follows: nghttp2 opens the stream (its windows, which pump reads) only
        # once its HEADERS are serialised
        self._serialise()
        self.flush()
        if st.pending or st.end_pending:
            self.pump(st)

    def _start_waiting(self) -> None:
        while self.waiting and not self.closed and self._room():
            st = self.waiting.popleft()
            if not st.closed:
                self._send_headers(st)

    def pump(self, st: H2Stream) -> None:
        """Send what the flow-control windows allow of ST's pending body, then END_STREAM
        once the body is complete."""
        if st.closed or st.id == 0 or self.closed:
            return
        conn = self.conn
        try:
            if st.pending:
                # what the peer's windows take now, less what the codec holds already
                # (its windows shrink only as it serialises the DATA)
                sid = st.id
                n = min(len(st.pending),
                        conn.stream_remote_window_size(sid) - conn.queued_body_size(sid),
                        conn.remote_window_size - conn.queued_body_size())
                if n > 0:
                    conn.send_data(sid, bytes(st.pending[:n]))
                    del st.pending[:n]
            if not st.pending and st.end_pending and not st.ended:
                conn.end_stream(st.id)
                st.ended = True
        except (ngh2.NGH2Error, ValueError):
            st.pending.clear()
            st.closed = True
        self.flush()
        if not st.congested():
            st.wake_writer()

    def acknowledge(self, st: H2Stream, n: int) -> None:
        st.unacked -= n
        if n and not self.closed:
            try:  # noqa: SIM105 - no contextlib.suppress: once per response with a body
                self.conn.acknowledge_received_data(n, st.id)
            except (ngh2.NGH2Error, ValueError):
                pass
            if not self._flush_scheduled:  # (flush, inline)
                self._flush_scheduled = True
                self._batch.defer(self._turn_end)

    def finish(self, st: H2Stream) -> None:
        """The exchange is over: an END_STREAM we have not sent (the response ended
        before the request body) becomes RST_STREAM(NO_ERROR) as RFC 9113 8.1 allows."""
        if not st.ended and not st.closed and st.id:
            st.reset(ErrorCode.NO_ERROR)
        if st.unacked > 0 and not self.closed:
            # bytes not acknowledged yet: the usual response's DATA (its "end" event ends
            # _exchange before its acknowledge), or bytes never relayed (the exchange was
            # abandoned); the connection window still counts them, so it gets them back
            try:  # noqa: SIM105 - no contextlib.suppress: once per response with a body
                self.conn.acknowledge_received_data(st.unacked, st.id)
            except (ngh2.NGH2Error, ValueError):
                pass
            st.unacked = 0
            if not self._flush_scheduled:  # (flush, inline)
                self._flush_scheduled = True
                self._batch.defer(self._turn_end)
        st.closed = True
        self.streams.pop(st.id, None)
        if self.waiting:
            self._start_waiting()

    def reset_stream(self, st: H2Stream, code: int) -> None:
        self.streams.pop(st.id, None)
        if st in self.waiting:
            self.waiting.remove(st)
        if st.id and not self.closed:
            with contextlib.suppress(ngh2.NGH2Error, ValueError):
                self.conn.reset_stream(st.id, code)
            self.flush()
            self._start_waiting()


def _consume(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: a failed connect nobody waited for is not an error


# -- the pool -------------------------------------------------------------------------------
class H2Pool:
    """Per pool key (http/pool.py ``pool_key``: cluster, the picked host, original_src)
    the HTTP/2 connections, newest last."""

    def __init__(self) -> None:
        self._clients: dict[PoolKey, list[H2Client]] = {}

    def acquire(self, key: PoolKey, exclude: frozenset[str],
                owner: object) -> H2Client | None:
        """A connection of KEY with room for one more stream (connecting or connected),
        not to an EXCLUDEd host; None when a new connection is needed. Connections of an
        older version of the cluster (OWNER differs) take no new streams."""
        clients = self._clients.get(key)
        if not clients:
            return None
        for client in clients:
            if client.owner is not owner and not client.goaway:
                client.goaway = True
                if client.reserved == 0:
                    client.close()
        for client in clients:
            if not client.has_capacity():
                continue
            if exclude and (client.upstream is None or client.host in exclude):
                continue
            client.reserved += 1  # (admit, inline: once per stream)
            client.total += 1
            if client._idle_timer is not None:
                client._idle_timer.cancel()
                client._idle_timer = None
            return client
        return None

    def open(self, client: H2Client) -> None:
        client.admit()
        self._clients.setdefault(client.key, []).append(client)

    def forget(self, client: H2Client) -> None:
        clients = self._clients.get(client.key)
        if clients is not None and client in clients and (client.closed or client.goaway):
            clients.remove(client)
            if not clients:
                del self._clients[client.key]

    def drop_hosts(self, owner: object, hosts: set[tuple[str, int]]) -> None:
        """OWNER's connections to HOSTS, which left the cluster (an EDS update), take no
        new stream and close once their streams are done (Envoy drains a removed host's
        pools); idle ones close now."""
        for key, clients in list(self._clients.items()):
            if (key[1], key[2]) not in hosts:
                continue
            for client in list(clients):
                if client.owner is owner and not client.goaway:
                    client.goaway = True
                    if client.reserved == 0:
                        client.close()

    def connections(self, key: PoolKey | None = None) -> list[H2Client]:
        if key is not None:
            return list(self._clients.get(key, ()))
        return [c for cs in self._clients.values() for c in cs]

    def close_all(self) -> None:
        for clients in list(self._clients.values()):
            for c in list(clients):
                c.close()
        self._clients.clear()


_POOLS: weakref.WeakKeyDictionary[Any, H2Pool] = weakref.WeakKeyDictionary()
# the last (cluster manager, pool) h2_pool_for answered: a process has one cluster
# manager, and a WeakKeyDictionary lookup makes a weak reference each time (~1 k
# instructions per stream); a cluster manager that went away is let go with its pool
# by the next lookup of another one
_last_pool: list[Any] = [None, None]


def h2_pool_for(cluster_manager: Any) -> H2Pool:
    """One HTTP/2 pool per cluster manager, like http/pool.py ``pool_for``."""
    try:
        pool = _POOLS.get(cluster_manager)
        if pool is None:
            pool = _POOLS[cluster_manager] = H2Pool()
    except TypeError:
        return H2Pool()
    _last_pool[0] = cluster_manager
    _last_pool[1] = pool
    return pool


def drop_removed_hosts(cluster_manager: Any, owner: object,
                       hosts: set[tuple[str, int]]) -> None:
    """http/pool.py ``drop_removed_hosts`` for the HTTP/2 pool."""
    try:
        pool = _POOLS.get(cluster_manager)
    except TypeError:
        return
    if pool is not None:
        pool.drop_hosts(owner, hosts)


class _CodecFailure(Exception):
    """The request body was malformed as it arrived (400 DPE from the router)."""


class _Retry(Exception):
    """A retriable response status: withheld, the attempt is retried."""


class _Lost(Exception):
    """The connection ended under the stream: KIND "reset" (UC) or "protocol" (UPE)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class _Reset(Exception):
    """RST_STREAM from the upstream before the response started."""

    def __init__(self, code: int, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.detail = detail


# -- the router's attempt -------------------------------------------------------------------
class _Router(Protocol):
    cluster_manager: Any
    stats: Stats
    suppress: bool


class _StatusCounters(Protocol):
    def inc(self) -> None: ...


class _ClusterStats(Protocol):
    """The cluster's router stats, resolved to handles once (router.py ``ClusterStats``)."""

    @property
    def rq_total(self) -> Counter: ...
    @property
    def rq_time(self) -> Histogram: ...
    @property
    def cx_none_healthy(self) -> Counter: ...
    @property
    def by_status(self) -> Mapping[int, _StatusCounters]: ...
    @property
    def plain(self) -> bool: ...

    def status(self, status: int) -> _StatusCounters: ...


class _Driver(Protocol):
    """A connection that drives its streams' coroutines from callbacks (HTTP/1.1's
    connection, an HTTP/2 stream's StreamConn): awaiting ``in_task`` hands the coroutine
    over to a task, which asyncio.timeout (connecting) needs; a coroutine suspended on
    ``response_wait`` stays with the driver and goes on when ``resume`` is called with
    that future, done."""

    response_wait: asyncio.Future[Any] | None

    def in_task(self) -> Awaitable[None]: ...
    def resume(self, wait: asyncio.Future[Any]) -> None: ...


class Forward(Protocol):
    """What the router's per-request state (router.py ``_Forward``) gives an attempt."""

    @property
    def router(self) -> _Router: ...
    @property
    def stream(self) -> HttpStream: ...
    @property
    def route(self) -> Route: ...
    @property
    def cluster(self) -> Cluster: ...
    @property
    def policy(self) -> RetryPolicy | None: ...
    @property
    def started(self) -> float: ...
    @property
    def stat(self) -> str: ...
    @property
    def cs(self) -> _ClusterStats: ...
    @property
    def reselections(self) -> int: ...
    @property
    def h1(self) -> _Driver | None: ...
    tried: set[str]
    host: str | None
    # the request's auto_sni / auto_san_validation (upstream/auto_host.py), set by the
    # router before the attempt
    tls: TlsOverride | None

    def _take_retry(self) -> bool: ...
    def _charge(self, stat: str) -> None: ...


FailureFactory = Callable[[str, UpstreamError | None], Exception]


async def forward_h2(fw: Forward, exclude: frozenset[str], failure: FailureFactory) -> None:
    """One attempt of FW's request over HTTP/2. Raises FAILURE(kind, err) for what the
    router's loop handles as for HTTP/1.1 (connect, reset, protocol, truncated, and
    "status" for an outcome this function already decided to retry); answers the
    HTTP/2-only outcomes (stream resets) itself."""
    stream, cluster, router = fw.stream, fw.cluster, fw.router
    info = stream.info
    facts = stream.conn.downstream.facts
    # the host first, then a connection to it (Envoy's router: chooseHost, then that
    # host's pool), so multiplexed connections do not bypass the load balancer
    p = fw.policy
    # (fw.reselections, inline: once per attempt)
    reselections = p.host_selection_retry_max_attempts if p is not None else 1
    target = cluster.choose(facts, exclude, reselections)
    if target is None:
        fw.cs.cx_none_healthy.inc()  # Envoy's router counts it on no host
        info.upstream_cluster = cluster.name
        raise failure("connect", UpstreamError("UH", ""))
    src = facts.original_src  # (pool_key, inline: once per stream)
    ov = fw.tls  # auto_sni / auto_san_validation: a pool per host, as Envoy's hash key
    key = (cluster.name if ov is None else cluster.name + ov.key, target[0], target[1],
           src.ip if src is not None else None)
    cm = router.cluster_manager
    pool = _last_pool[1] if _last_pool[0] is cm else h2_pool_for(cm)
    client = pool.acquire(key, exclude, cluster)
    if client is None:
        if not cluster.try_acquire("pending_requests"):
            raise failure("connect", UpstreamError("UO", ""))
        # a request that waits for a new connection (the pool's newPendingStream)
        router.stats.inc(fw.stat + "upstream_rq_pending_total")
        opts = protocol_options(cluster)
        h2opts = opts.http2 if opts is not None else DEFAULT_H2
        limits = limits_of(cluster)
        client = H2Client(key, cluster, h2opts, limits.max_requests_per_connection,
                          limits.idle_timeout, router.stats, fw.stat, pool.forget,
                          limits.max_connection_duration)
        pool.open(client)
        try:
            driver = fw.h1
            if driver is not None:  # connecting needs a task (asyncio.timeout)
                await driver.in_task()
            up = await (cluster.connect(facts, info, exclude,
                                        host_selection_retry_max_attempts=reselections,
                                        target=target)
                        if ov is None else
                        cluster.connect(facts, info, exclude,
                                        host_selection_retry_max_attempts=reselections,
                                        tls_override=ov, target=target))
        except UpstreamError as err:
            client.fail(err)
            pool.forget(client)
            if err.host:
                fw.tried.add(err.host)
                fw.host = err.host
            raise failure("connect", err) from None
        except BaseException:
            client.fail(UpstreamError("UF", ""))
            pool.forget(client)
            raise
        finally:
            cluster.release("pending_requests")
        client.start(up)
    elif not client.ready.done():
        # a connection still connecting: wait for it, as a pending request
        if not cluster.try_acquire("pending_requests"):
            client.release()
            raise failure("connect", UpstreamError("UO", ""))
        try:
            await asyncio.shield(client.ready)
        except UpstreamError as err:
            client.release()
            info.upstream_cluster = cluster.name
            info.upstream_host = err.host
            info.upstream_transport_failure_reason = err.reason or None
            if err.host:
                fw.tried.add(err.host)
                fw.host = err.host
            raise failure("connect", err) from None
        except BaseException:
            client.release()
            raise
        finally:
            cluster.release("pending_requests")
    try:
        if client.closed or client.upstream is None:
            # it went away between its SETTINGS and this stream: a connection failure
            raise failure("reset", None)
        await _exchange(fw, client)
    except _CodecFailure:
        raise failure("codec", None) from None
    except _Retry:
        raise failure("status", None) from None  # decided and charged here
    except _Lost as lost:
        retried = info.upstream_request_attempt_count > 1
        _abort(fw, failure, p is not None and p.retry_on_reset(True),
               failure_answer(lost.kind, None, retried))
    except _Reset as r:
        again = "retried and the latest " if info.upstream_request_attempt_count > 1 else ""
        _abort(fw, failure, p is not None and (p.retry_on_reset(True) or (
                   r.code == REFUSED_STREAM and "refused-stream" in p.retry_on)),
               LocalAnswer(503, f"{_RESET_BODY}{again}reset reason: {r.reason}".encode(),
                           f"upstream_reset_before_response_started{{{r.detail}}}", "UR"))
    finally:
        client.release()


def _abort(fw: Forward, failure: FailureFactory, retriable: bool,
           answer: LocalAnswer) -> None:
    """The stream failed before its response started: retried when the policy says so
    (and a retry is left), else answered locally and charged to the cluster like a
    response (Envoy's Filter::onUpstreamReset -> chargeUpstreamAbort)."""
    fw._charge("rq_error")
    if retriable and fw._take_retry():
        raise failure("status", None)  # charged here already, retried by the router
    stats, stat = fw.router.stats, fw.stat
    _retry_success(fw, retriable)
    stats.inc(f"{stat}upstream_rq_{answer.status // 100}xx")
    stats.inc(f"{stat}upstream_rq_{answer.status}")
    stats.inc(stat + "upstream_rq_completed")
    fw.stream.local_reply(answer.status, answer.body, answer.details, answer.flag)


async def _exchange(fw: Forward, client: H2Client) -> None:
    stream, cluster = fw.stream, fw.cluster
    info = stream.info
    up = client.upstream
    assert up is not None
    info.upstream_cluster = cluster.name
    info.upstream_host = up.host
    info.upstream_local_address = up.local_address
    info.upstream_protocol = PROTOCOL
    host = up.host
    fw.tried.add(host)
    fw.host = host
    cs = fw.cs
    cs.rq_total.pending += 1  # Counter.inc without the call, as the router counts it
    # (the connection's owner is this cluster: H2Pool.acquire hands out no other's)
    hs = client.host_counts
    if hs is None:
        hs = client.host_counts = cluster.host_counts(host)
    hs.rq_total += 1
    hs.rq_active += 1
    st = H2Stream(client, fw.h1)
    req = stream.req
    try:
        if not req.complete and stream.conn.body_error():
            raise _CodecFailure()
        headers = _request_headers(fw)
        body_now = not req.complete or (any(req.body) if req.body else False)
        client.open_stream(st, headers, end_stream=not body_now)
        if body_now:
            for chunk in req.body:
                st.data(chunk)
            if req.complete:
                st.end()
            else:
                req.attach(st, BUFFER_LIMIT if fw.policy is not None else -1)
                stream.conn.resume_reading()
        # the response, relayed as its events arrive
        conn = stream.conn
        loop = conn.loop
        status = 0
        deferred = False  # a gRPC response's host stat waits for its trailers
        trailers: list[tuple[str, str]] | None = None
        driver = st.driver
        while True:
            # the stream's next events (the relay inline here, and the wait for them: no
            # coroutine frames of their own to resume at each wake-up)
            while not st.events:
                w = st._waiter = loop.create_future()
                if driver is not None:
                    driver.response_wait = w  # resumed by push, not by a done callback
                try:
                    await w
                finally:
                    st._waiter = None
            events = st.events
            st.events = []
            conn.last_activity = loop.time()
            acked = 0
            for ev in events:
                kind = ev[0]
                if kind == "headers":
                    s, head = response_head(ev[1])
                    if 100 <= s < 200:
                        continue  # 1xx: an HTTP/1.1 client gets only the final response
                    status = s
                    relayed = _on_headers(fw, status, head, bool(ev[2]), hs)
                    if relayed == _RETRY:
                        raise _Retry()
                    deferred = relayed == _DEFERRED
                elif kind == "data":
                    stream.encode_data(ev[1])
                    acked += ev[2]
                elif kind == "trailers":
                    trailers = trailer_fields(ev[1])
                    stream.info.response_trailers = dict(trailers)
                    if deferred:  # Envoy's Filter::onUpstreamTrailers
                        deferred = False
                        fw._charge(grpc_host_outcome(
                            next((v for n, v in trailers if n == "grpc-status"), None)))
                elif kind == "end":
                    if deferred:  # a gRPC response without trailers: no grpc-status
                        deferred = False
                        fw._charge("rq_error")
                    if trailers is not None:
                        stream.encode_trailers(trailers)
                    else:
                        stream.encode_end()
                    ms = (time.monotonic() - fw.started) * 1000
                    if cs.plain:  # Histogram.observe, inline (as the router records it)
                        pending = cs.rq_time.pending
                        pending.append(ms)
                        if len(pending) >= Histogram.FOLD_AT:
                            cs.rq_time.fold()
                    else:
                        cs.rq_time.observe(ms)
                    return
                elif kind == "reset":
                    stream.flush()
                    if deferred:  # Envoy's chargeUpstreamAbort after the response started
                        fw._charge("rq_error")
                        hcm_count(stream, "rq_reset_after_downstream_response_started")
                    _reset(fw, int(ev[1]))
                    return
                else:  # "lost": the connection went away ("reset") or broke ("protocol")
                    stream.flush()
                    if deferred:
                        fw._charge("rq_error")
                        hcm_count(stream, "rq_reset_after_downstream_response_started")
                    _lost(fw, str(ev[1]))
                    return
            stream.flush()
            if conn.write_paused:
                await conn.drain()
            if acked:
                # the window opens again only once the downstream took the bytes
                client.acknowledge(st, acked)
    except BaseException:
        # timeouts, retries and a downstream gone cancel the attempt: the stream is reset
        # (RST_STREAM CANCEL, as Envoy's UpstreamRequest::resetStream), the connection stays
        st.reset()
        raise
    finally:
        client.finish(st)
        if hs.rq_active > 0:
            hs.rq_active -= 1
        if req.sink is st and req.complete:
            req.sink = None


def _request_headers(fw: Forward) -> list[tuple[bytes, bytes]]:
    """The forwarded request as HTTP/2 headers: the same header list and additions the
    HTTP/1.1 path writes (route request mutations, x-envoy-expected-rq-timeout-ms)."""
    stream = fw.stream
    extra = None
    route = fw.route
    if not fw.router.suppress:
        # Envoy's FilterUtility::setTimeoutHeaders, as the HTTP/1.1 path sends it
        if stream.info.upstream_request_attempt_count > 1:
            elapsed = int((time.monotonic() - fw.started) * 1000)
            per_try = fw.policy.per_try_timeout if fw.policy is not None else 0.0
            expected = expected_timeout_ms(route.timeout, per_try, elapsed)
            if expected:
                extra = ("x-envoy-expected-rq-timeout-ms", str(expected))
        else:  # the first attempt's value depends on the route alone (as router.py's)
            extra = route.expected_timeout_header
    headers = stream.upstream_headers
    mutations = route.request_mutations
    if mutations.add or mutations.remove:  # (its __bool__, inline)
        # after the router's timeout header, as on HTTP/1.1 (router.py _mutated)
        headers = apply_to_request([*headers, extra] if extra is not None else headers,
                                   mutations, stream.info.request_headers)
        extra = None
    scheme = (stream.info.request_headers or {}).get(":scheme", "http")
    url = stream.req.url  # an HTTP/1.1 absolute-form target (an HTTP/2 one: its path)
    return request_headers(stream.method, scheme, stream.path, headers, extra,
                           "://" in url and not url.startswith("/"))


# what _on_headers did with a response head
_RETRY = 0  # nothing: the status is to be retried
_RELAYED = 1
_DEFERRED = 2  # relayed; a gRPC request's host stat waits for the trailers


def _on_headers(fw: Forward, status: int, headers: list[tuple[str, str]],
                ended: bool, hs: HostCounts) -> int:
    """Relay the response head (ENDED: it ended the stream); _RETRY when the status is to
    be retried instead (then nothing was sent downstream and the stream is reset). HS:
    the attempt's host stats (fw.host's), charged with the outcome."""
    stream = fw.stream
    p = fw.policy
    wanted = False
    if p is not None and not stream.response_started:
        grpc = next((v for n, v in headers if n == "grpc-status"), None)
        wanted = p.retry_on_status(status, grpc)
        if wanted and fw._take_retry():
            fw._charge("rq_error")
            return _RETRY
    ct = stream.req.hmap.get("content-type")  # (no call for a request without one)
    if ct is not None and is_grpc_content_type(ct):
        outcome = host_outcome(status, True, headers, ended)
    else:  # (host_outcome of any other request, inline)
        outcome = "rq_error" if status >= 500 else "rq_success"
    # (fw._charge, inline: HS is fw.host's, counted as Cluster.host_stat counts it)
    if outcome == "rq_success":
        hs.rq_success += 1
    elif outcome is not None:
        hs.rq_error += 1
    # the response code is charged when the headers arrive (Envoy's chargeUpstreamCode
    # in onUpstreamHeaders), so a stream reset mid-body still counts its 200
    # upstream_rq_Nxx, upstream_rq_NNN and upstream_rq_completed, as one call
    cs = fw.cs
    (cs.by_status.get(status) or cs.status(status)).inc()
    info = stream.info
    if info.upstream_request_attempt_count > 1 and not wanted:  # (_retry_success, inline)
        fw.router.stats.inc(fw.stat + "upstream_rq_retry_success")
    info.response_code_details = "via_upstream"
    has_length = False
    for h in headers:
        if h[0] == "content-length":
            has_length = True
            break
    may_have_body = status >= 200 and status not in (204, 304) and not stream.head
    # a body of unknown length is chunked for an HTTP/1.1 client; a response that ended
    # with its headers (gRPC trailers-only) gets content-length: 0 last, as Envoy's
    # HTTP/1 encoder writes it (observed on Envoy 1.40)
    tail: tuple[tuple[str, str], ...] = ()
    # (an HTTP/2 client gets the headers as they came: END_STREAM says it all)
    if ended and not has_length and may_have_body and stream.info.protocol != "HTTP/2":
        tail = (("content-length", "0"),)
    chunked = not has_length and may_have_body and not ended
    ms = int((time.monotonic() - fw.started) * 1000)
    stream.encode_headers(status, headers, chunked=chunked, tail=tail,
                          mutations=fw.route.response_mutations,
                          service_time_ms=None if fw.router.suppress else ms)
    return _RELAYED if outcome is not None else _DEFERRED


def _retry_success(fw: Forward, wanted: bool) -> None:
    """Envoy's RetryStateImpl::shouldRetry counts upstream_rq_retry_success when a request
    that was retried ends an attempt with an outcome its policy would not retry, whatever
    that outcome is (a refused-stream policy whose retry meets a closed connection counts;
    running out of retries does not). Checked side by side with Envoy 1.40."""
    if fw.stream.info.upstream_request_attempt_count > 1 and not wanted:
        fw.router.stats.inc(fw.stat + "upstream_rq_retry_success")


def _reset(fw: Forward, code: int) -> None:
    """RST_STREAM (or a GOAWAY that refused the stream) from the upstream."""
    stream = fw.stream
    reason, detail = reset_reason(code)
    info = stream.info
    if stream.response_started:
        info.set_flag("UR")
        info.response_code_details = f"upstream_reset_after_response_started{{{detail}}}"
        stream.closing = True
        return
    raise _Reset(code, reason, detail)


def _lost(fw: Forward, kind: str) -> None:
    """The connection ended (or broke) under the stream."""
    stream = fw.stream
    if not stream.response_started:
        raise _Lost(kind)
    # after the response started: the downstream is closed with the reason, as Envoy's
    # upstream_reset_after_response_started (UC for a closed connection, UPE broken)
    detail, flag = (("protocol_error", "UPE") if kind == "protocol"
                    else ("connection_termination", "UC"))
    stream.info.set_flag(flag)
    stream.info.response_code_details = f"upstream_reset_after_response_started{{{detail}}}"
    stream.closing = True
