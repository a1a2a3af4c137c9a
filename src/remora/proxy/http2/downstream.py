"""A downstream HTTP/2 connection: one asyncio.Protocol feeding an ``ngh2``
Connection (libnghttp2, Role.SERVER); each stream is served by the connection manager
(hcm.serve), driven from the connection's and its upstream's callbacks and handed to a task
only when it waits for anything else than its response (stream.py), so streams are
multiplexed and cancelled one by one.

Codec choice (``choose_http2``) follows Envoy's AUTO codec
(ConnectionManagerUtility::determineNextProtocol): the TLS ALPN if one was negotiated
(``h2`` means HTTP/2, anything else HTTP/1.1), otherwise the first bytes: the client
preface ``PRI * HTTP/2`` (prior knowledge, h2c) means HTTP/2. Istio's mTLS client offers
``istio-h2, istio, h2``: its ``istio-h2`` picks the inbound filter chain (tls_inspector),
and the chain's DownstreamTlsContext (``h2, http/1.1``) negotiates ``h2``.

Flow control: the SETTINGS Envoy sends (http2_protocol_options: max_concurrent_streams,
initial_stream_window_size, initial_connection_window_size; Envoy 1.40's defaults 1024,
16 MiB, 24 MiB). A request body is acknowledged (WINDOW_UPDATE) as the upstream accepts
it, so what the proxy holds of request bodies is bounded by the connection window (a
client sending beyond it is a flow-control connection error); reading from the client is
never paused for it (the client's WINDOW_UPDATEs and RST_STREAMs must still arrive). A
response body is queued per stream and sent as the peer's windows allow, the router
stopping its upstream reads above STREAM_HIGH_WATER.

Abuse, as Envoy's codec and connection manager bound it: malformed frames and headers
end the connection with GOAWAY (nghttp2's checks, as in Envoy; nghttp2 alone would
reset just the stream, Envoy's default without override_stream_error_on_invalid_http_message
makes it a connection error, and so does ``_on_closed`` here); a header list beyond
max_request_headers_kb / max_headers_count resets the stream; many streams reset by the
client early (rapid reset: Envoy's premature_reset_total_stream_count, 500: 250 premature
resets, or half of the closed streams once 500 closed) and control-frame floods
(max_outbound_control_frames while the client does not read;
max_consecutive_inbound_frames_with_empty_payload) close the connection after GOAWAY.
idle_timeout sends GOAWAY too; the proxy stopping closes without one, as Envoy does.

Drain (server/drain.py): as a response starts, the listener's drain decision is asked, as
Envoy's ActiveStream::encodeHeaders asks it; a yes starts the connection's drain sequence
(ConnectionManagerImpl::startDrainSequence): a GOAWAY with last stream id 2^31-1 (the
client should open no more streams, those in flight go on), then after the HCM's
``drain_timeout`` (default 5 s) the final GOAWAY with the last stream taken up
(onDrainTimeout); streams after it are refused, and the connection closes once the last
stream ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import ngh2
from ngh2 import ErrorCode as ErrorCodes
from ngh2 import Setting as SettingCodes

from remora.proxy.deadline_timer import DeadlineTimer
from remora.proxy.deferred_write import batch_for
from remora.proxy.http.codec import Request, note_repeated
from remora.proxy.http.connection import BUFFER_LIMIT, DELAYED_CLOSE_S
from remora.proxy.http.header_map import INLINE_REQUEST, set_first
from remora.proxy.http2.header_names import TO_STR, encode_fields, learn_str
from remora.proxy.http2.keepalive import PING_DATA, Keepalive
from remora.proxy.http2.stream import (
    DONE,
    DRIVEN,
    TAIL,
    TASK,
    Http2Stream,
    StreamConn,
    resume_in_task,
)
from remora.proxy.interfaces import Downstream
from remora.proxy.server.drain import start_delay
from remora.proxy.stats import Counter, counter
from remora.proxy.takeover import take_over

if TYPE_CHECKING:
    from remora.proxy.http.hcm import HttpConnectionManager

# Envoy's connection manager: overload.premature_reset_total_stream_count and
# overload.premature_reset_min_stream_lifetime_seconds (runtime defaults)
PREMATURE_RESET_TOTAL = 500
PREMATURE_RESET_LIFETIME = 1.0
# the reset codes of nghttp2's own stream errors (_on_closed), as plain ints: an enum
# member's lookup costs more than the test, once per stream
_CODEC_RESETS = frozenset({int(ErrorCodes.PROTOCOL_ERROR), int(ErrorCodes.FLOW_CONTROL_ERROR)})


class _Protocol(asyncio.Protocol):
    def __init__(self, conn: Http2Connection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn.on_data(data)

    def eof_received(self) -> bool | None:
        self.conn.on_lost(peer=True)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.on_lost(peer=True)

    def pause_writing(self) -> None:
        self.conn.write_paused = True

    def resume_writing(self) -> None:
        self.conn.on_writable()


class Http2Connection:
    # slots: its 48 attributes are past what CPython 3.11 keeps in a shared-key dict, and
    # the per-stream paths read them all the time
    __slots__ = ("_batch", "_closed_streams", "_control_frames", "_done", "_drain", "_drain_notice",
                 "_drain_off", "_drain_timer", "_empty_frames", "_ended", "_handlers",
                 "_idle_since", "_idle_timer", "_keepalive", "_max_header_bytes", "_pending_out",
                 "_premature_resets", "_requested", "_reset_ids", "_route_timer", "_rq_http2_total",
                 "_rx", "_serve_set", "_silenced", "_starting", "_stat", "_stream_timer",
                 "_streams_gone", "_tx", "_write_scheduled", "buffer_limit", "cfg", "closed",
                 "downstream", "draining", "goaway_received", "goaway_sent", "h2", "hcm", "loop",
                 "opts", "scheme", "streams", "tasks", "transport", "unacked_total", "write_paused",
                 "writer")

    def __init__(self, hcm: HttpConnectionManager, downstream: Downstream) -> None:
        self.hcm = hcm
        self.cfg = cfg = hcm.cfg
        self.opts = cfg.http2
        self.downstream = downstream
        self.writer = downstream.writer
        self.transport = downstream.writer.transport
        self.scheme = "https" if downstream.writer.get_extra_info("ssl_object") else "http"
        self.loop = asyncio.get_running_loop()
        self.buffer_limit = BUFFER_LIMIT
        self._max_header_bytes = cfg.max_request_headers_kb * 1024
        # the codec's own ceilings on a decoded header list sit beyond the configured
        # limits (which reset just the stream, below) by a margin, so only a grossly
        # oversized block ends the connection; window updates are sent as the upstream
        # takes the body (acknowledge); PING/SETTINGS answers are bounded by
        # max_outbound_control_frames here (_control_frame), not by nghttp2's own count
        self.h2 = ngh2.Connection(ngh2.Role.SERVER, ngh2.Configuration(
            auto_window_update=False,
            max_inbound_header_list_size=cfg.max_request_headers_kb * 1024 + 65536,
            max_inbound_header_count=cfg.max_headers_count + 1024,
            max_outbound_ack=1_000_000))
        self._pending_out = b""  # serialised ahead of the loop's write (on_data)
        self._requested: set[int] = set()  # streams whose HEADERS became a request
        # streams the client reset (its StreamClosed follows in the same batch)
        self._reset_ids: set[int] = set()
        self.streams: dict[int, Http2Stream] = {}
        # the tasks streams were handed over to (stream.py), and waits for a body sink
        self.tasks: set[asyncio.Task[Any]] = set()
        self._starting: list[Http2Stream] = []  # request blocks of this read, to serve
        self._streams_gone: asyncio.Future[None] | None = None  # run's end waits for it
        self.write_paused = False
        self._write_scheduled = False  # queued in the loop's write batch for this turn
        self._batch = batch_for(self.loop)
        self.unacked_total = 0
        self.closed = False
        # how it ended (downstream_cx_destroy_*: ``ended_by``): by the peer first, with
        # streams still active
        self._ended: tuple[bool, bool] | None = None
        self._rx, self._tx = hcm.cx_rx_bytes, hcm.cx_tx_bytes  # as the bytes move
        self.goaway_sent = False
        self.goaway_received = False
        self._drain = downstream.drain
        self.draining = False  # the drain sequence started (its first GOAWAY is out)
        self._drain_timer: asyncio.TimerHandle | None = None  # drain_timeout
        # a drain told of unasked (server/drain.py add_on_drain): when it starts ours
        self._drain_notice: asyncio.TimerHandle | None = None
        self._drain_off: Callable[[], None] | None = None
        self._silenced = False  # closing without flushing: nothing more is written
        self._keepalive: Keepalive | None = None  # connection_keepalive
        self._done: asyncio.Future[None] = self.loop.create_future()
        self._control_frames = 0  # control frames answered while the client does not read
        self._empty_frames = 0
        self._closed_streams = 0
        self._premature_resets = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._stream_timer: asyncio.TimerHandle | None = None  # stream_idle_timeout
        self._route_timer = DeadlineTimer(self.loop, self._route_check)  # streams' route timeouts
        self._idle_since = self.loop.time()
        p = f"http.{cfg.stat_prefix}."
        self._stat = p
        # the events of every stream, by their exact class (ngh2 makes no subclasses): one
        # lookup instead of _dispatch's isinstance chain; any other event goes there
        self._handlers: dict[type[ngh2.Event], Callable[[Any], None]] = {
            ngh2.DataReceived: self._on_data_frame, ngh2.RequestReceived: self._on_request,
            ngh2.StreamClosed: self._on_closed}
        self._rq_http2_total = counter(hcm.stats, p + "downstream_rq_http2_total")
        # a connection manager whose per-stream entry point is not HttpConnectionManager's
        # own (a test's serve set on the instance) is served through it, never through
        # hcm.start (as http/connection.py decides it)
        from remora.proxy.http.hcm import HttpConnectionManager  # hcm.py imports us lazily
        self._serve_set = (getattr(hcm.serve, "__func__", None)
                           is not HttpConnectionManager.serve)

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self) -> None:
        stats = self.hcm.stats
        stats.inc(self._stat + "downstream_cx_http2_total")
        stats.gauge_add(self._stat + "downstream_cx_http2_active", 1)
        opts = self.opts
        self.h2.initiate_connection({
            SettingCodes.MAX_CONCURRENT_STREAMS: min(opts.max_concurrent_streams, 2**31 - 1),
            SettingCodes.INITIAL_WINDOW_SIZE: opts.initial_stream_window_size,
            SettingCodes.HEADER_TABLE_SIZE: opts.hpack_table_size,
        })
        if opts.initial_connection_window_size > 65535:
            self.h2.set_local_window_size(opts.initial_connection_window_size)
        self._take_over()
        self._write()
        self._arm_idle()
        if not self.closed:
            self._drain_off = self._drain.add_on_drain(self._on_drain_notice)
        if opts.keepalive_timeout > 0 and not self.closed:
            self._keepalive = Keepalive(opts.keepalive_interval, opts.keepalive_timeout,
                                        opts.keepalive_jitter, self._ping,
                                        self._keepalive_timeout)
            self._keepalive.start()
        try:
            # cancelled when the proxy stops or an LDS drain time is over: closed without
            # a last GOAWAY, as Envoy 1.40 closes then (NoFlush; observed on SIGTERM and at
            # a drain's end: test_h2_drain_envoy_parity.py); the drain's GOAWAYs came
            # earlier (_on_drain_notice)
            await self._done
        except asyncio.CancelledError:
            # Envoy's close(NoFlush): neither a GOAWAY nor the resets of the streams
            # cancelled below go out
            self.closed = self._silenced = True
            raise
        finally:
            if self._drain_off is not None:
                self._drain_off()
            if self._drain_notice is not None:
                self._drain_notice.cancel()
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            if self._stream_timer is not None:
                self._stream_timer.cancel()
            self._route_timer.cancel()
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            if self._keepalive is not None:
                self._keepalive.stop()
            for stream in list(self.streams.values()):
                if not stream.response_complete:
                    stream.scon.cancel_active("dc")
            if self.streams:
                # streams driven from callbacks end at their cancellation's turn, or when
                # their response left (stream.py), not in a task the gather below awaits
                gone = self._streams_gone = self.loop.create_future()
                with contextlib.suppress(BaseException):
                    await gone
            if self.tasks:
                with contextlib.suppress(BaseException):
                    await asyncio.gather(*self.tasks, return_exceptions=True)
            stats.gauge_add(self._stat + "downstream_cx_http2_active", -1)
            with contextlib.suppress(Exception):
                self.writer.close()

    def _take_over(self) -> None:
        buffered, at_eof = take_over(self.downstream.reader, self.transport, _Protocol(self))
        if buffered:
            self.on_data(buffered)
        if at_eof:
            self.on_lost(peer=True)

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    def on_lost(self, peer: bool = False) -> None:
        """PEER: the client's EOF or its connection's loss (else remora closed it)."""
        if self._ended is None:
            self._ended = (peer and not self.closed, any(
                not st.response_complete for st in self.streams.values()))
        self.closed = True
        for stream in list(self.streams.values()):
            stream.scon.wake()
            if not stream.response_complete or not stream.sent_all:
                stream.scon.cancel_active("dc")
        self._finish()

    def _delayed_close_timeout(self) -> None:
        """The delayed close's timer: the client did not close within it
        (downstream_cx_delayed_close_timeout, ConnectionImpl's delayed close timer)."""
        if self._ended is None:
            self.hcm.count("downstream_cx_delayed_close_timeout")
        self.on_lost()

    def ended_by(self) -> tuple[bool, bool] | None:
        """Once ``run`` returned: (whether the client closed first, whether a stream was
        active then), the connection manager's downstream_cx_destroy_* (hcm.py)."""
        return self._ended

    def goaway(self, code: ErrorCodes) -> None:
        if self.goaway_sent or self.closed:
            return
        self.goaway_sent = True
        # (the codec may be terminating already: it queued its own GOAWAY)
        with contextlib.suppress(ngh2.NGH2Error):
            self.h2.terminate_connection(code)
        self._write_now()  # the connection may close right after

    # -- drain --------------------------------------------------------------------------
    def start_drain(self) -> None:
        """Envoy's ConnectionManagerImpl::startDrainSequence: the graceful GOAWAY (last
        stream id 2^31-1, nghttp2's shutdown notice), the final one drain_timeout later."""
        if self.draining or self.goaway_sent or self.closed:
            return
        self.draining = True
        self.hcm.count("downstream_cx_drain_close")
        with contextlib.suppress(ngh2.NGH2Error):
            self.h2.send_shutdown_notice()
        self._write()
        self._drain_timer = self.loop.call_later(self.cfg.drain_timeout, self._drain_timeout)

    def _on_drain_notice(self, until: float, left: float) -> None:
        """A drain concerning this connection started (Envoy's drain-close callback):
        start our drain sequence at a moment start_delay picks, whether or not a response
        starts meanwhile (server/drain.py says when Envoy 1.40 does)."""
        if self.closed or self.draining or self.goaway_sent:
            return
        delay = start_delay(until, left, self.cfg.drain_timeout)
        if delay is None:
            return
        when = self.loop.time() + delay
        if self._drain_notice is not None:
            if self._drain_notice.when() <= when:
                return
            self._drain_notice.cancel()
        self._drain_notice = self.loop.call_at(when, self.start_drain)

    def _drain_timeout(self) -> None:
        """ConnectionManagerImpl::onDrainTimeout: the final GOAWAY names the last stream
        taken up; the connection closes once no stream is left."""
        self._drain_timer = None
        if self.closed or self.goaway_sent:
            return
        self.goaway_sent = True
        with contextlib.suppress(ngh2.NGH2Error):
            self.h2.send_goaway(ErrorCodes.NO_ERROR)
        self._write_now()
        if not self.streams:
            self._close_drained()

    # -- connection_keepalive ---------------------------------------------------------
    def _ping(self) -> None:
        if not self.closed:
            with contextlib.suppress(ngh2.NGH2Error):
                self.h2.ping(PING_DATA)
            self._write()

    def _keepalive_timeout(self) -> None:
        """No PING ACK within the timeout: Envoy's onKeepaliveResponseTimeout counts
        http2.keepalive_timeout and closes without flushing; the streams under way end
        as disconnects."""
        if self.closed:
            return
        self.hcm.stats.inc("http2.keepalive_timeout")
        with contextlib.suppress(Exception):
            self.transport.abort()
        self.on_lost()

    def _close_drained(self) -> None:
        self._write_now()  # the last stream's frames, then the FIN
        with contextlib.suppress(Exception):
            self.transport.close()
        self.on_lost()

    def _abort(self, code: ErrorCodes, stat: str) -> None:
        """An abuse bound was crossed: GOAWAY, then the connection is closed. STAT is
        Envoy's name: the codec's floods are rooted at ``http2.``, the connection
        manager's under ``http.<stat_prefix>.``."""
        self.hcm.stats.inc(stat if stat.startswith("http2.") else self._stat + stat)
        self.goaway(code)
        with contextlib.suppress(Exception):
            self.transport.close()
        self.on_lost()

    # -- idle_timeout ---------------------------------------------------------------------
    def _arm_idle(self) -> None:
        if self.cfg.idle_timeout > 0 and self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.cfg.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self.closed:
            return
        if self.streams:
            self._idle_since = self.loop.time()
        left = self._idle_since + self.cfg.idle_timeout - self.loop.time()
        if self.streams or left > 0:
            self._idle_timer = self.loop.call_later(max(left, 0.05) if not self.streams
                                                    else self.cfg.idle_timeout,
                                                    self._idle_check)
            return
        # Envoy: downstream_cx_idle_timeout, GOAWAY then close
        self.hcm.stats.inc(self.hcm.idle_timeout_stat)
        self.goaway(ErrorCodes.NO_ERROR)
        with contextlib.suppress(Exception):
            self.transport.close()
        self.on_lost()

    # -- reading --------------------------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        self._rx.pending += len(data)  # downstream_cx_rx_bytes_total (Counter.inc)
        if self.closed:
            return
        try:
            self._on_read(data)
        finally:
            # the streams whose request blocks this read completed start now, once all
            # its frames are taken in (what a stream's task saw when it started, too)
            if self._starting:
                self._start_streams()

    def _on_read(self, data: bytes) -> None:
        ka = self._keepalive
        if ka is not None and ka.waiting:
            ka.on_frame()
        conn = self.h2
        try:
            conn.receive_data(data)
            events = conn.events()
        except ngh2.NGH2Error as exc:
            # a fatal input error (one of the codec's own resource bounds, e.g. a header
            # block far beyond max_request_headers_kb): the codec is unusable
            self._codec_error(header=False, fatal=exc)
            return
        handlers = self._handlers
        for ev in events:
            handler = handlers.get(type(ev))
            if handler is None:
                self._dispatch(ev)
            else:
                handler(ev)
            if self.closed:
                return
        # serialised now rather than at the loop's write: what nghttp2 decided on its own
        # (RST_STREAM of a malformed stream, GOAWAY of a connection error) surfaces as
        # events (StreamClosed, ConnectionClosed) only once its frames are serialised
        try:
            self._pending_out += conn.data_to_send()
            events = conn.events()
        except ngh2.NGH2Error:
            events = []
        for ev in events:
            handler = handlers.get(type(ev))
            if handler is None:
                self._dispatch(ev)
            else:
                handler(ev)
            if self.closed:
                return
        # also when there is nothing to send yet: the turn holds its HTTP/1.1 writes (the
        # upstream requests of the streams this read started go out together at its end)
        self._write()

    def _codec_error(self, header: bool, fatal: Exception | None = None,
                     oversized: bool = False) -> None:
        """A connection error (RFC 9113 5.4.1): GOAWAY, the streams under way end as codec
        errors, the connection is closed. Envoy counts it, and logs a malformed header
        block as a request that never started. OVERSIZED (or FATAL, not a flood): a header
        block the codec gave up on, far beyond max_request_headers_kb (nghttp2's
        COMPRESSION_ERROR, or an error out of its input)."""
        self.hcm.count("downstream_cx_protocol_error")
        if header:
            self._log_refused("http2.invalid.header.field", "DPE")
        dos = isinstance(fatal, ngh2.DenialOfServiceError)
        oversized = oversized or (fatal is not None and not dos)
        if oversized:
            # Envoy 1.40 logs it as a request that never started (observed with a 140 KB
            # and a 600 KB block)
            self._log_refused("codec_error:The_user_callback_function_failed", "DPE")
        for stream in list(self.streams.values()):
            # Envoy logs the streams under way on a connection its codec refused as
            # codec errors (DPE), not as disconnects
            stream.scon.cancel_active("h2_codec")
        if fatal is not None:
            # the codec can serialise nothing more: its GOAWAY is written here (RFC 9113
            # 6.8: last stream id, error code), ENHANCE_YOUR_CALM for a resource bound
            code = ErrorCodes.ENHANCE_YOUR_CALM if dos else ErrorCodes.PROTOCOL_ERROR
            last = max(self._requested, default=0)
            self._pending_out += (b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"
                                  + last.to_bytes(4, "big") + int(code).to_bytes(4, "big"))
        elif not self.goaway_sent:
            with contextlib.suppress(ngh2.NGH2Error):
                self.h2.terminate_connection(ErrorCodes.PROTOCOL_ERROR)
        self.goaway_sent = True
        self._write_now()
        if oversized:
            # Envoy's delayed close (delayed_close_timeout, 1 s): the GOAWAY is flushed and
            # the client gets that long to close first; what it still sends is read and
            # dropped (on_data: closed), so closing does not turn into a reset that loses
            # the GOAWAY (a client still sending a 600 KB header block saw ECONNRESET).
            # Its EOF or the timer ends the connection (on_lost).
            self.closed = True
            self.loop.call_later(DELAYED_CLOSE_S, self._delayed_close_timeout)
            return
        with contextlib.suppress(Exception):
            self.transport.close()
        self.on_lost()

    def _dispatch(self, ev: ngh2.Event) -> None:
        if isinstance(ev, ngh2.DataReceived):
            self._on_data_frame(ev)
        elif isinstance(ev, ngh2.RequestReceived):
            self._on_request(ev)
        elif isinstance(ev, ngh2.StreamClosed):
            self._on_closed(ev)
        elif isinstance(ev, ngh2.TrailersReceived):
            # trailers end the request; they are dropped on an HTTP/1.1 upstream, as
            # Envoy does
            s = self.streams.get(ev.stream_id)
            if s is not None:
                s.on_request_end()
        elif isinstance(ev, ngh2.StreamReset):
            self._on_reset(ev)
        elif isinstance(ev, (ngh2.WindowUpdated, ngh2.SettingsReceived)):
            if isinstance(ev, ngh2.SettingsReceived):
                self._control_frame()
            for s in list(self.streams.values()):
                self.pump(s)
        elif isinstance(ev, ngh2.PingReceived):
            self._control_frame()
        elif isinstance(ev, ngh2.PingAcknowledged):
            if self._keepalive is not None:
                self._keepalive.on_ack()
        elif isinstance(ev, ngh2.GoAwayReceived):
            # the client sends no new stream; the ones under way finish
            self.goaway_received = True
            if not self.streams:
                self._finish()
        elif isinstance(ev, ngh2.ConnectionClosed) and ev.error_code and not self.closed:
            # nghttp2 found a connection error (e.g. more streams than
            # max_concurrent_streams) and queued its GOAWAY
            self.goaway_sent = True
            self._codec_error(header=False,
                              oversized=ev.error_code == ErrorCodes.COMPRESSION_ERROR)

    def _on_closed(self, ev: ngh2.StreamClosed) -> None:
        """nghttp2 resets a malformed stream itself (PROTOCOL_ERROR: an invalid header
        field, a body that contradicts its content-length); Envoy's codec makes that a
        connection error (its default without override_stream_error_on_invalid_http_message),
        and so does this. A header block that never became a request is logged as
        Envoy logs it (DPE, http2.invalid.header.field)."""
        sid = ev.stream_id
        requested = sid in self._requested
        self._requested.discard(sid)
        if sid in self._reset_ids:
            self._reset_ids.discard(sid)
            return
        if ev.error_code in _CODEC_RESETS and not self.closed:
            self._codec_error(header=not requested)

    def _control_frame(self) -> None:
        """nghttp2 answers PING and SETTINGS itself; while the client does not read, those
        answers pile up: Envoy's max_outbound_control_frames bounds them."""
        if not self.write_paused:
            self._control_frames = 0
            return
        self._control_frames += 1
        if self._control_frames > self.opts.max_outbound_control_frames:
            self._abort(ErrorCodes.ENHANCE_YOUR_CALM, "http2.outbound_control_flood")

    def _on_data_frame(self, ev: ngh2.DataReceived) -> None:
        sid = ev.stream_id
        data = ev.data
        # what the client's window is given back: the payload (nghttp2 accounts for
        # padding itself)
        flow = len(data)
        end = ev.end_stream
        if not data and not end:
            self._empty_frames += 1
            if self._empty_frames > self.opts.max_consecutive_inbound_frames_with_empty_payload:
                self._abort(ErrorCodes.ENHANCE_YOUR_CALM, "http2.inbound_empty_frames_flood")
                return
        else:
            self._empty_frames = 0
        s = self.streams.get(sid)
        if s is None or s.reset or s.response_complete:
            # nobody takes it any more: give the window back at once
            if flow:
                with contextlib.suppress(ngh2.NGH2Error, ValueError):
                    self.h2.acknowledge_received_data(flow, sid)
            if s is not None and end:
                s.on_request_end()
            return
        s.on_body(data, flow)
        if end:
            s.on_request_end()

    def _on_request(self, ev: ngh2.RequestReceived) -> None:
        sid = ev.stream_id
        raw = ev.headers
        self._requested.add(sid)
        if self.goaway_sent:
            self._reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        size = 0
        req = Request()
        headers = req.headers
        hmap: dict[str, str] = {}
        method = url = ""
        authority: str | None = None
        host: str | None = None
        cookies: list[str] | None = None
        to_str = TO_STR
        # one pass: nghttp2 has checked the block (RFC 9113 8.2: lower-case names, no
        # connection-specific field, pseudo headers first and well-formed), so names are
        # taken as they are; values and names as latin-1, as the HTTP/1.1 side reads them
        for name_b, value_b in raw:
            size += len(name_b) + len(value_b)
            name = to_str.get(name_b) or learn_str(name_b)
            value = value_b.decode("latin-1")
            if name_b[0] == 58:  # ":", a pseudo header
                if name == ":method":
                    method = value
                elif name == ":path":
                    url = value
                elif name == ":authority":
                    # the Host first, as Envoy's HTTP/1 codec writes it: pseudo headers
                    # come before any other (nghttp2 refuses the block otherwise), so the
                    # map is still empty here
                    authority = value
                    hmap["host"] = value
                elif name == ":scheme":
                    # kept for what Envoy builds from the request's URL (a direct
                    # response's location); the rest uses the connection's
                    req.scheme = value
                # else :protocol
            elif name == "cookie":
                # RFC 9113 8.2.3: joined for HTTP/1.1, last
                if cookies is None:
                    cookies = [value]
                else:
                    cookies.append(value)
            elif name == "host":
                host = value
            else:
                prev = hmap.get(name)
                if prev is None:
                    hmap[name] = value
                    headers.append((name, value))
                elif name in INLINE_REQUEST:
                    # Envoy's header map joins a repeated inline header into its first
                    # field, as on HTTP/1.1 (proxy/http/codec.py on_header, header_map.py)
                    if value:
                        value = f"{prev},{value}" if prev else value
                        hmap[name] = value
                        set_first(headers, name, value)
                else:
                    headers.append((name, value))
                    hmap[name] = f"{prev},{value}"
                    note_repeated(req, name, prev, value)
        cfg = self.cfg
        if size > self._max_header_bytes or len(raw) > cfg.max_headers_count:
            # Envoy's codec refuses the header block and resets the stream; the log shows
            # a request that never started, flag DR (checked against Envoy 1.40)
            self.hcm.stats.inc("http2.header_overflow")  # Envoy's codec stat root
            self._reset(sid, ErrorCodes.INTERNAL_ERROR)
            self._log_refused("http2.header_list_size_too_large"
                              if size > cfg.max_request_headers_kb * 1024
                              else "http2.too_many_headers", "DR")
            return
        req.method = method
        req.url = url
        if authority is None and host is not None:
            # no :authority: the host header is the Host, first as well
            hmap = {"host": host, **hmap}
        req.hmap = hmap
        if cookies is not None:
            cookie = "; ".join(cookies)
            headers.append(("cookie", cookie))
            hmap["cookie"] = cookie
        if method == "CONNECT":
            req.upgrade = True  # refused by prepare (no CONNECT support): 403
        if ev.end_stream:
            req.complete = True
        else:
            cl = hmap.get("content-length")
            if cl is not None and cl.isdigit():
                req.content_length = int(cl)
            else:
                # a body of unknown length goes to the HTTP/1.1 upstream chunked (Envoy)
                req.chunked = True
        scon = StreamConn(self, sid)
        stream = Http2Stream(scon, req)
        self.streams[sid] = stream
        total = self._rq_http2_total  # (Counter.inc inline on the store's own handle)
        if type(total) is Counter:
            total.pending += 1
        else:
            total.inc()
        if "expect" in hmap and hmap["expect"].lower() == "100-continue":
            # the connection manager answers 100-continue itself and strips Expect
            del hmap["expect"]
            self.h2.send_informational_response(sid, [(b":status", b"100")])
        self._starting.append(stream)  # started at the end of the read (on_data)

    def _log_refused(self, details: str, flag: str) -> None:
        """An access-log line for a header block refused before it became a request
        (method and path "-", response code 0), as Envoy writes one."""
        stream = Http2Stream(StreamConn(self, 0), Request())
        stream.info.request_headers = {}
        stream.info.set_flag(flag)
        stream.info.response_code_details = details
        self.hcm.complete(stream)

    def _on_reset(self, ev: ngh2.StreamReset) -> None:
        self._reset_ids.add(ev.stream_id)
        s = self.streams.get(ev.stream_id)
        if s is None:
            return
        s.reset = True
        s.reset_by_peer = True
        self._release(s)
        s.scon.wake()
        if not (s.response_complete and s.sent_all):
            # the client reset a stream in progress: ActiveStream::onResetStream
            self.hcm.count("downstream_rq_rx_reset")
            s.scon.cancel_active("dc")

    def _reset(self, sid: int, code: ErrorCodes) -> None:
        # (remora's own codes are never PROTOCOL_ERROR or FLOW_CONTROL_ERROR, so its
        # resets are not taken for nghttp2's in _on_closed)
        with contextlib.suppress(ngh2.NGH2Error):
            self.h2.reset_stream(sid, code)
        s = self.streams.get(sid)
        if s is not None:
            if not s.reset:
                # remora resets a stream in progress (downstream_rq_tx_reset); Envoy's
                # onResetStream counts every reset as downstream_rq_rx_reset too
                self.hcm.count("downstream_rq_tx_reset")
                self.hcm.count("downstream_rq_rx_reset")
            s.reset = True
            self._release(s)
            s.scon.wake()

    # -- request body flow control --------------------------------------------------------
    def acknowledge(self, s: Http2Stream) -> None:
        """Give the client back the window of what the stream's body sink took (or of
        what nobody will take any more: a closed stream credits the connection)."""
        n, s.unacked = s.unacked, 0
        self.unacked_total -= n
        if n and not self.closed:
            with contextlib.suppress(ngh2.NGH2Error, ValueError):
                self.h2.acknowledge_received_data(n, s.sid)
            self._write()

    def ack_when_drained(self, s: Http2Stream, ready: Awaitable[None]) -> None:
        async def wait() -> None:
            with contextlib.suppress(Exception):
                await ready
            s.ack_waiting = False
            if s.req.sink is None or s.reset:
                self.acknowledge(s)  # nobody takes more: give it all back
            else:
                s.body_accepted()  # still congested: wait again, else acknowledge
        task = self.loop.create_task(wait())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _release(self, s: Http2Stream) -> None:
        """The stream takes no more body: its unacknowledged bytes are given back (the
        connection's window would shrink for good otherwise)."""
        self.acknowledge(s)

    # -- writing --------------------------------------------------------------------------
    def _write(self) -> None:
        """Send what the codec queued at the end of the loop turn: the frames of all
        streams that moved in this turn (HEADERS, DATA, END_STREAM, WINDOW_UPDATEs) go out
        in one write instead of one per frame group, flushed by the loop's write batch
        with the turn's HTTP/1.1 writes (proxy/deferred_write.py). Never at once, unlike
        an HTTP/1.1 turn's first write: a client multiplexing streams keeps this
        connection busy, and each write is a syscall and a wake-up of the client."""
        if not self._write_scheduled:
            self._write_scheduled = True
            self._batch.defer(self, hold=True)

    def flush(self) -> None:
        """The write batch's end-of-turn call."""
        if self._write_scheduled:
            self._write_now()

    def _write_now(self) -> None:
        self._write_scheduled = False
        out, self._pending_out = self._pending_out, b""
        try:  # (no contextlib.suppress: this runs every loop turn)
            out += self.h2.data_to_send()
        except ngh2.NGH2Error:
            out += b""  # the codec is unusable: what was serialised before still goes
        if out and not self._silenced and not self.transport.is_closing():
            self._tx.pending += len(out)  # downstream_cx_tx_bytes_total (Counter.inc)
            self.transport.write(out)

    def on_writable(self) -> None:
        self.write_paused = False
        self._control_frames = 0
        for s in list(self.streams.values()):
            s.scon.wake()

    def pump(self, s: Http2Stream) -> None:
        """Send the stream's queued DATA as far as the windows allow, then its end."""
        if s.reset or s.ended or self.closed:
            self._write()
            return
        conn = self.h2
        sid = s.sid
        try:
            block = s.head_block
            if block is not None:
                s.head_block = None
                end = not s.out and s.end_queued and not s.trailers
                conn.send_response(sid, block, end_stream=end)
                if end:
                    s.ended = True
            if s.out:
                # what the peer's windows take now, less what the codec holds already
                # (its windows shrink only as it serialises the DATA)
                window = min(conn.stream_remote_window_size(sid) - conn.queued_body_size(sid),
                             conn.remote_window_size - conn.queued_body_size())
                while s.out and window > 0:
                    chunk = s.out[0]
                    if len(chunk) <= window:
                        s.out.pop(0)
                    else:
                        s.out[0] = chunk[window:]
                        chunk = chunk[:window]
                    window -= len(chunk)
                    s.out_bytes -= len(chunk)
                    # the last DATA carries END_STREAM when the end is known by then (a
                    # local reply), as Envoy sends it
                    last = not s.out and s.end_queued and not s.trailers
                    conn.send_data(sid, chunk, end_stream=last)
                    if last:
                        s.ended = True
            if not s.out and s.end_queued and not s.ended:
                # (headers, when still pending, went out above)
                if s.trailers:
                    conn.send_trailers(sid, encode_fields(s.trailers))
                else:
                    conn.end_stream(sid)
                s.ended = True
        except (ngh2.NGH2Error, ValueError):
            s.reset = True
        if not self._write_scheduled:  # (_write, inline)
            self._write_scheduled = True
            self._batch.defer(self, hold=True)
        scon = s.scon
        if scon._drain_waiters or scon._writable_callbacks or scon.tail:
            scon.wake()  # drain() and the end-of-stream wait re-check their condition

    # -- one stream -----------------------------------------------------------------------
    def _start_streams(self) -> None:
        starting, self._starting = self._starting, []
        sit = self.cfg.stream_idle_timeout
        if self._stream_timer is None and sit > 0:
            self._stream_timer = self.loop.call_later(sit, self._stream_idle_check)
        serve = self.hcm.serve
        serve_set = self._serve_set
        for stream in starting:
            scon = stream.scon
            if scon.cancel_reason is None:
                # driven from here while it only waits for its response (stream.py); the
                # router's usual request goes upstream without a coroutine (in flight)
                if serve_set:
                    scon.state = DRIVEN
                    scon._drive(serve(stream), None)
                else:
                    scon.start(stream)
            else:
                # reset (or the connection gone) before it started: the request is taken
                # up and cancelled at its first wait, like any other (counted and logged
                # with what it asked for), in a task as before
                scon.state = TASK
                task = self.loop.create_task(self._serve_cancelled(stream))
                scon.task = task
                self.tasks.add(task)

    async def _serve_cancelled(self, stream: Http2Stream) -> None:
        scon = stream.scon
        try:
            try:
                assert scon.task is not None
                scon._cancel_by_task = True
                scon.task.cancel()
                await self.hcm.serve(stream)
                await asyncio.sleep(0)  # serve never waited: the cancellation lands
            except asyncio.CancelledError:
                if scon.take_cancel() is None:
                    raise
            await self._sent(stream)
        finally:
            self.stream_done(stream)

    async def serve_handed(self, scon: StreamConn, coro: Coroutine[Any, Any, None],
                           yielded: Any) -> None:
        """The task a stream's coroutine was handed over to (StreamConn._hand_over): it
        goes on where it waits (YIELDED), then waits until its response left."""
        stream = scon.stream
        assert stream is not None
        scon._handoff_pending = False
        first: BaseException | None = None
        if scon._handoff_cancel:
            scon._handoff_cancel = False
            if isinstance(yielded, asyncio.Future):
                yielded.cancel()
            first = asyncio.CancelledError()
        try:
            try:
                await resume_in_task(coro, yielded, first)
            except asyncio.CancelledError:
                if scon.take_cancel() is None:
                    raise
            await self._sent(stream)
        finally:
            self.stream_done(stream)

    async def _sent(self, stream: Http2Stream) -> None:
        """In a stream's task: the response is queued; wait until it left (or the stream
        was reset), so the access log's duration and flags are the stream's."""
        scon = stream.scon
        while (stream.response_complete and not (stream.ended or stream.reset)
               and not self.closed):  # (sent_all, inline)
            fut = self.loop.create_future()
            scon._drain_waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                reason = scon.take_cancel()
                if reason is None:
                    raise
                stream.interrupted(reason)
                break

    def served(self, scon: StreamConn, tail: bool, err: BaseException | None) -> None:
        """A stream's coroutine driven from callbacks ended (ERR: it failed). Unless its
        response is still queued (TAIL: wait until it left, StreamConn.tail), the stream
        is over."""
        stream = scon.stream
        assert stream is not None
        pending = scon._pending_cancel
        if pending:
            scon._pending_cancel = False
        if (tail and stream.response_complete and not (stream.ended or stream.reset)
                and not self.closed):  # (sent_all, inline)
            scon.state = TAIL
            scon.tail = True
            if pending and scon.cancel_reason is not None:
                # cancelled as it ended: lands on the wait, as in the task before
                scon._tail_scheduled = True
                self.loop.call_soon(scon._tail_check)
            return
        self.stream_done(stream)
        if err is not None:
            self.loop.call_exception_handler({
                "message": "HTTP/2 stream failed", "exception": err})

    def stream_done(self, stream: Http2Stream) -> None:
        """The stream is over: reset what did not end cleanly, count premature resets
        (rapid reset), forget the stream; then it is logged."""
        scon = stream.scon
        scon.state = DONE
        scon.tail = False
        task = scon.task
        if task is not None:
            self.tasks.discard(task)
        # (what a method of its own did before the log: once per stream)
        sid = stream.sid
        if not (stream.ended or stream.reset) and not self.closed:  # (not sent_all)
            # the response could not be completed (upstream reset after the headers,
            # a timeout after they were sent): the stream is reset, as Envoy does
            self._reset(sid, ErrorCodes.INTERNAL_ERROR)
            self._write()
        elif not stream.req.complete and not stream.reset and not self.closed:
            # RFC 9113 8.1: a complete response before the whole request; the rest of
            # the request is not wanted. nghttp2 sends a RST_STREAM ahead of the stream's
            # frames still queued in it and then drops them, so the response is
            # serialised first: Envoy's codec defers this reset until the frame with
            # END_STREAM went out (codec_impl.cc StreamImpl::resetStream, deferred_reset_)
            with contextlib.suppress(ngh2.NGH2Error):
                self._pending_out += self.h2.data_to_send()
            self._reset(sid, ErrorCodes.NO_ERROR)
            self._write()
        if stream.unacked:
            self._release(stream)
        streams = self.streams
        streams.pop(sid, None)
        if not streams:  # (while streams are open, _idle_check refreshes it itself)
            self._idle_since = self.loop.time()
            gone = self._streams_gone
            if gone is not None and not gone.done():
                gone.set_result(None)
        self._closed_streams += 1
        if stream.reset_by_peer and (self.loop.time() - stream.started_at
                                     < PREMATURE_RESET_LIFETIME):
            self._premature_resets += 1
        # Envoy's ConnectionManagerImpl::maybeDrainDueToPrematureResets: below the total,
        # half the total in premature resets is enough; from there on, half of all
        # closed streams (observed on Envoy 1.40: closed after 250 resets); none yet
        # (the usual case) is never enough
        closed = self._closed_streams
        premature = self._premature_resets * 2
        if premature and not self.closed and (
                premature >= PREMATURE_RESET_TOTAL if closed < PREMATURE_RESET_TOTAL
                else premature >= closed):
            self._abort(ErrorCodes.ENHANCE_YOUR_CALM,
                        "downstream_rq_too_many_premature_resets")
        elif self.goaway_received and not self.streams:
            self._finish()
        elif self.draining and self.goaway_sent and not self.streams:
            self._close_drained()
        self.hcm.complete(stream)
        # the stream and its StreamConn refer to each other: unlinked, the stream's
        # objects (request, StreamInfo) go by reference counting now instead of piling
        # up for the cyclic GC (whose passes cost every request)
        scon.stream = None

    def arm_route_timeout(self, scon: StreamConn, timeout: float) -> None:
        """SCON's route timeout: cancel it with "timeout" TIMEOUT seconds from now unless
        the router clears ``scon.route_deadline`` first. One timer for the connection's
        streams, as for stream_idle_timeout: it is moved only when it would fire after the
        new deadline (streams usually share one route timeout, so a later stream's
        deadline is later), and on firing it re-arms for the earliest deadline left."""
        deadline = scon.route_deadline = self.loop.time() + timeout
        self._route_timer.arm(deadline)

    def _route_check(self) -> None:
        if self.closed:
            return
        now = self.loop.time()
        earliest = 0.0
        for stream in list(self.streams.values()):
            scon = stream.scon
            deadline = scon.route_deadline
            if not deadline:
                continue
            if deadline <= now:
                scon.route_deadline = 0.0
                scon.cancel_active("timeout")
            elif not earliest or deadline < earliest:
                earliest = deadline
        if earliest:
            self._route_timer.arm(earliest)

    def _stream_idle_check(self) -> None:
        """stream_idle_timeout: a stream neither side moved a byte of for that long is
        cancelled (Envoy: 408 SI, or the reset once its response started). One timer per
        connection, not per stream: activity stamps are cheap, and the timer is re-armed
        for the earliest deadline of the streams still in progress (a stream that starts
        later has a later deadline, so it is never missed). A stream whose response is
        complete and only waits for the client's window is not timed out (as before)."""
        self._stream_timer = None
        if self.closed:
            return
        sit = self.cfg.stream_idle_timeout
        now = self.loop.time()
        earliest: float | None = None
        for stream in list(self.streams.values()):
            if stream.response_complete or stream.reset:
                continue
            scon = stream.scon
            left = scon.last_activity + sit - now
            if left <= 0:
                scon.cancel_active("stream_idle")
            elif earliest is None or left < earliest:
                earliest = left
        if earliest is not None:
            self._stream_timer = self.loop.call_later(earliest, self._stream_idle_check)
