"""One downstream HTTP/1.1 connection: bytes are decoded into requests as they arrive
(protocol callbacks, no reader task), and requests are served one after another
(pipelining keeps order).

A request is served in the callback that completed it: its stream's coroutine
(``hcm.serve``) is driven from the callbacks (``_drive``) while it only waits for its
upstream response (the router's ``response_wait``), which the upstream connection's read
callback resolves and resumes at once; the next request starts in the same callback. No
task wakes up for a request on that path. Anything else the coroutine waits for (a new
upstream connection, a retry's backoff, a fault's delay, a tunnel) hands it over to the
connection's task, which drives it from there as an ordinary coroutine. The usual request
(the router alone, whole, on an idle pooled connection) has no coroutine at all: the
router begins it and the connection holds it as ``in_flight`` until its response's last
read ends it; anything else turns it into the router's coroutine at its wait
(``resume_in_flight``).

Cancellation is how the connection interrupts the request being served: a downstream
disconnect (Envoy: DC), a body that turns out malformed (DPE), the route timeout (UT), a
per-try or stream idle timeout cancel it with a reason (thrown into the coroutine where it
waits, or the task cancelled), and the router turns that reason into Envoy's response and
flags. No per-request task is created.

Drain (server/drain.py): as a response starts, the listener's drain decision is asked
(Envoy's ActiveStream::encodeHeaders); a yes, or a drain this connection was told of
unasked, gives the response ``connection: close``. A yes starts the drain sequence
(startDrainSequence): the connection stays, serving on with ``connection: close``, until
its ``drain_timeout`` closes it as below (_drain_keeps). Told of a drain (add_on_drain), the
connection starts its drain sequence at the moment server/drain.py's start_delay picks
(Envoy's "drain deadline approaching": ConnectionManagerImpl::startDrainSequence, counted
as downstream_cx_drain_close); the HCM's ``drain_timeout`` later (onDrainTimeout) an idle
connection is closed after Envoy's delayed close (FlushWriteAndDelay: the client gets
delayed_close_timeout, 1 s, to close first; what it sends meanwhile is dropped), and a
request in flight then is finished with ``connection: close`` before the connection
closes. Measured on Envoy 1.40: tests/unit/proxy/test_h1_drain_envoy_parity.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Protocol

from remora.proxy.deadline_timer import DeadlineTimer
from remora.proxy.deferred_write import DeferredOutput, batch_for
from remora.proxy.http.codec import CodecError, RequestDecoder
from remora.proxy.http.stream import ActiveStream
from remora.proxy.interfaces import Downstream
from remora.proxy.server.drain import start_delay
from remora.proxy.stream_info import StreamInfo
from remora.proxy.takeover import take_over

if TYPE_CHECKING:
    from remora.proxy.http.hcm import HttpConnectionManager


class InFlight(Protocol):
    """A request the router sent without a coroutine (router.py ``_Forward.start``): its
    response ends the stream from the upstream's read callback (``in_flight_ended``);
    anything else makes it a coroutine again, waiting at its attempt's outcome."""

    def resumed(self) -> Coroutine[Any, Any, Any]: ...

READ_SIZE = 65536
BUFFER_LIMIT = 1024 * 1024  # Envoy's per_connection_buffer_limit_bytes default
MAX_PIPELINED = 16
# Envoy's HttpConnectionManager delayed_close_timeout default (a connection it closes
# after a fatal codec error, or at a drain's drain_timeout, waits this long for the peer
# to close first)
DELAYED_CLOSE_S = 1.0
# the connection's drain state (Envoy's ConnectionManagerImpl::DrainState)
_NOT_DRAINING, _DRAINING, _CLOSING = 0, 1, 2


class _DownstreamProtocol(asyncio.Protocol):
    """Takes over the downstream transport from the core's StreamReader: bytes go straight
    into the HTTP decoder instead of through a buffer, a reader task and a future."""

    def __init__(self, conn: Http1Connection) -> None:
        self.conn = conn
        # the transport calls the connection's on_data itself (no frame in between): an
        # instance attribute, looked up when the transport takes this protocol
        self.data_received = conn.on_data  # type: ignore[method-assign]

    def data_received(self, data: bytes) -> None:
        self.conn.on_data(data)

    def eof_received(self) -> bool | None:
        # Envoy does not half-close HTTP/1 downstreams: the client's FIN ends the connection
        self.conn.on_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.on_eof()
        self.conn.on_writable(closed=True)

    def pause_writing(self) -> None:
        self.conn.write_paused = True

    def resume_writing(self) -> None:
        self.conn.on_writable()


class Http1Connection:
    # slots: its 50 attributes are more than CPython 3.11 shares in an instance's key
    # table (30), so without them every attribute would be a dict lookup
    __slots__ = (
        "_cancel_by_task",
        "_coro",
        "_drain",
        "_drain_notice",
        "_drain_off",
        "_drain_state",
        "_drain_timer",
        "_drain_waiters",
        "_ended",
        "_ending",
        "_error",
        "_handoff",
        "_handoff_cancel",
        "_headers_timer",
        "_idle_since",
        "_idle_timer",
        "_pending_cancel",
        "_read_paused",
        "_route_timer",
        "_running",
        "_serve_set",
        "_stream_timer",
        "_tail",
        "_taking_over",
        "_task",
        "_waiter",
        "_writable_callbacks",
        "active",
        "cancel_reason",
        "cfg",
        "decoder",
        "downstream",
        "drain_closed",
        "encoders",
        "eof",
        "hcm",
        "idle",
        "in_flight",
        "last_activity",
        "loop",
        "output",
        "response_wait",
        "route_deadline",
        "rx",
        "sanitize_xfcc",
        "scheme",
        "transport",
        "tunnel",
        "upgrades",
        "write_paused",
        "writer",
    )

    def __init__(self, hcm: HttpConnectionManager, downstream: Downstream) -> None:
        self.hcm = hcm
        self.cfg = hcm.cfg
        self.encoders = hcm.encoders
        self.sanitize_xfcc = hcm.sanitize_xfcc
        self.downstream = downstream
        self.writer = downstream.writer
        self.transport = downstream.writer.transport
        # x-forwarded-proto / :scheme follow the downstream's encryption, as in Envoy
        # (https once a tls transport socket terminated the connection)
        self.scheme = "https" if downstream.writer.get_extra_info("ssl_object") else "http"
        self.decoder = RequestDecoder(self.cfg.max_request_headers_kb * 1024,
                                      self.cfg.max_headers_count, BUFFER_LIMIT)
        self.eof = False
        self._drain = downstream.drain
        self._drain_state = _NOT_DRAINING
        # a drain told of unasked (add_on_drain): when our drain sequence starts, and
        # the drain_timeout after it
        self._drain_notice: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._drain_off: Callable[[], None] | None = None
        # the stream whose response said connection: close for the drain alone
        self.drain_closed: ActiveStream | None = None
        self.active: ActiveStream | None = None
        self.cancel_reason: str | None = None
        self.idle = False
        self.last_activity = 0.0  # loop time of the last byte moved for the active stream
        self.write_paused = False
        self.tunnel: Callable[[bytes], None] | None = None  # after a 101: raw bytes go here
        self._task: asyncio.Task[Any] | None = None
        self.loop = asyncio.get_running_loop()
        # every write to the downstream goes through here: written at the turn's end, as
        # Envoy's connection writes (deferred_write.py); flushed before the close
        self.output = DeferredOutput(self.transport, batch_for(self.loop), hcm.cx_tx_bytes)
        self.rx = hcm.cx_rx_bytes
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._writable_callbacks: list[Callable[[], None]] = []
        self._read_paused = False
        self._headers_timer: asyncio.TimerHandle | None = None  # request_headers_timeout
        self._idle_timer: asyncio.TimerHandle | None = None  # idle_timeout, lazily re-armed
        # stream_idle_timeout of the active stream, lazily re-armed (_stream_idle_check)
        self._stream_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        # the route timeout of the active stream (the router's, Envoy's response
        # timeout): its loop-time deadline, 0 when none runs, and one timer per connection
        # that is re-armed lazily (arm_route_timeout), not a timer per request
        self.route_deadline = 0.0
        self._route_timer = DeadlineTimer(self.loop, self._route_check)
        # the stream coroutine driven from callbacks (see the module's docstring): the one
        # suspended on the router's ``response_wait``, whether _drive runs it right now,
        # a cancellation that arrived while it ran, one handed over to the task (with the
        # reason to throw in first, if any), and a finished stream whose connection needs
        # the task (close after flushing, drain, end)
        self.response_wait: asyncio.Future[Any] | None = None
        self.in_flight: InFlight | None = None  # the active stream, sent without a coroutine
        # a connection manager whose per-stream entry point is not HttpConnectionManager's
        # own (a test's serve set on the instance, a subclass's) is served through it,
        # never through hcm.start; told by the bound method's function, without touching
        # the instance's __dict__ (asking for it turns every attribute of the manager into
        # a dict lookup on CPython 3.11)
        from remora.proxy.http.hcm import HttpConnectionManager  # hcm.py imports this module
        self._serve_set = (getattr(hcm.serve, "__func__", None)
                           is not HttpConnectionManager.serve)
        self._coro: Coroutine[Any, Any, Any] | None = None
        self._running = False
        self._pending_cancel = False
        self._handoff: tuple[Coroutine[Any, Any, Any], Any] | None = None
        self._handoff_cancel = False
        self._tail: ActiveStream | None = None
        self._error: BaseException | None = None
        self._cancel_by_task = False
        self._taking_over = False  # _take_over decodes what the StreamReader held
        # how the connection ended, for the connection manager's downstream_cx_destroy_*
        # (``ended_by``): whether the client closed first, whether a request was active
        self._ended = (False, False)
        self._ending = False  # run() is closing it: a later EOF is not the client's first
        self.upgrades = 0  # upgrade requests accepted (downstream_cx_upgrades_active)

    def node_ip(self) -> str | None:
        return self.hcm.node_ip()

    @property
    def draining(self) -> bool:
        """Asked as a response starts (stream.py): Envoy answers with connection: close
        once its listener's drain decision says so (server/drain.py)."""
        return self.drain_close()

    def drain_close(self) -> bool:
        """``draining`` as a method: what ActiveStream.encode_headers asks per response (a
        property is looked up the generic way on every read on CPython 3.11)."""
        if self._drain_state:
            # draining already (told of the drain): Envoy's encodeHeaders gives every
            # HTTP/1.1 response connection: close once drain_state_ != NotDraining
            return True
        if self._drain.drain_close():
            # ConnectionManagerImpl counts the connection it drains, and starts its drain
            # sequence (encodeHeaders: startDrainSequence): drain_timeout later,
            # onDrainTimeout closes it (after the stream then in flight)
            self.hcm.count("downstream_cx_drain_close")
            self._drain_state = _DRAINING
            notice = self._drain_notice
            if notice is not None:
                notice.cancel()
                self._drain_notice = None
            if self._drain_timer is None:
                self._drain_timer = self.loop.call_later(self.cfg.drain_timeout,
                                                         self._drain_timeout)
            return True
        return False

    def _drain_keeps(self, stream: ActiveStream) -> bool:
        """STREAM ended with connection: close for the drain alone, the connection
        Draining: Envoy 1.40 keeps it open (its encodeHeaders closes an HTTP/1.1
        connection after a connection: close response only when not draining already),
        serves what the client sends meanwhile, each response with connection: close,
        and closes it when the drain sequence's drain_timeout is over (onDrainTimeout,
        then the delayed close): observed, a response at 0.8 s closed at 2.6 s with a
        drain_timeout of 0.8 s (tests/unit/proxy/test_h1_drain_envoy_parity.py)."""
        if self.drain_closed is not stream:
            return False
        self.drain_closed = None
        return (self._drain_state == _DRAINING and self._drain_timer is not None
                and stream.response_complete and stream.req.complete and not self.eof
                and not self.decoder.upgraded and self.decoder.error is None)

    def _on_drain_notice(self, until: float, left: float) -> None:
        """A drain concerning this connection started (Envoy's drain-close callback):
        start our drain sequence at the moment start_delay picks, whether or not a
        request comes meanwhile (server/drain.py says when Envoy 1.40 does)."""
        if self.eof or self._drain_state:
            return
        delay = start_delay(until, left, self.cfg.drain_timeout)
        if delay is None:
            return
        when = self.loop.time() + delay
        notice = self._drain_notice
        if notice is not None:
            if notice.when() <= when:
                return
            notice.cancel()
        self._drain_notice = self.loop.call_at(when, self._start_drain)

    def _start_drain(self) -> None:
        """ConnectionManagerImpl::startDrainSequence, unasked ("drain deadline
        approaching"): from now on each response says connection: close; the idle
        connection is closed drain_timeout later (_drain_timeout)."""
        self._drain_notice = None
        if self.eof or self._drain_state or self._ending:
            return
        self.hcm.count("downstream_cx_drain_close")
        if not self.last_activity:
            # not a byte yet (Envoy: no codec): closed now, without drain_timeout or a
            # delayed close, as hcm.py's _codecless does before the codec is chosen
            self._drain_state = _CLOSING
            self._wake()
            return
        self._drain_state = _DRAINING
        self._drain_timer = self.loop.call_later(self.cfg.drain_timeout, self._drain_timeout)

    def _drain_timeout(self) -> None:
        """ConnectionManagerImpl::onDrainTimeout: the connection closes once no stream is
        left (checkForDeferredClose): at once when idle, else after the stream in
        flight, which ends with connection: close if its response has not started."""
        self._drain_timer = None
        if self.eof or self._ending:
            return
        self._drain_state = _CLOSING
        act = self.active
        if act is not None:
            act.closing = True  # _stream_ended hands it to the task, which closes
        else:
            self._wake()

    def _take_over(self) -> None:
        """Switch the transport to our protocol; what the core's StreamReader already
        buffered (it starts reading at accept) is decoded first. StreamReader keeps that
        buffer in ``_buffer``/``_eof`` (CPython's asyncio; uvloop uses the same class)."""
        buffered, at_eof = take_over(self.downstream.reader, self.transport,
                                     _DownstreamProtocol(self))
        # what was buffered is decoded, not served yet: the task serves it once the
        # end that came with it is known too (a request and its FIN read before the
        # take-over are served, then the connection closes)
        self._taking_over = True
        try:
            if buffered:
                self.on_data(buffered)
            if at_eof:
                self.on_eof()
        finally:
            self._taking_over = False

    # -- reading --------------------------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def on_data(self, data: bytes) -> None:
        self.rx.pending += len(data)  # downstream_cx_rx_bytes_total (Counter.inc, inlined)
        self.last_activity = self.loop.time()
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel(data)
            return
        dec = self.decoder
        if dec.error is not None:
            return
        if dec.upgraded:
            dec.upgrade_tail += data  # until the router opens the tunnel
            return
        try:
            dec.feed(data)
        except CodecError:
            self._pause_reading()
            self._on_codec_error()
            return
        if self.cfg.request_headers_timeout > 0:
            self._arm_headers_timer()
        if not dec.upgraded:
            # flow control: stop reading while requests pile up unserved, while a body has
            # nowhere to go yet (the router attaches a sink once connected), or while the
            # upstream is slower than the client
            cur = dec.current
            if len(dec.ready) >= MAX_PIPELINED or (
                    cur is not None and cur.sink is None and cur.body_limit_hit):
                self._pause_reading()
            elif cur is not None and cur.sink is not None and cur.sink.congested():
                self.hold_reading_until(cur.sink.wait())
        if dec.ready and self.active is None and not self._taking_over:
            self._serve_ready()

    def _arm_headers_timer(self) -> None:
        """request_headers_timeout runs from a request's first byte to its last header."""
        timer = self._headers_timer
        if self.decoder.head_in_progress:
            if timer is None:
                self._headers_timer = self.loop.call_later(
                    self.cfg.request_headers_timeout, self._headers_timeout)
        elif timer is not None:
            timer.cancel()
            self._headers_timer = None

    def _headers_timeout(self) -> None:
        self._headers_timer = None
        dec = self.decoder
        if dec.error is None and dec.head_in_progress:
            dec.error = CodecError(408, "request_header_timeout", "request header timeout",
                                   None)
            self.hcm.count("downstream_rq_header_timeout")  # ActiveStream::onRequestHeaderTimeout
            self._pause_reading()
            self._on_codec_error()

    def _pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            with contextlib.suppress(Exception):
                self.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        if self._read_paused and self.decoder.error is None:
            self._read_paused = False
            with contextlib.suppress(Exception):
                self.transport.resume_reading()  # type: ignore[attr-defined]

    def hold_reading_until(self, ready: Any) -> None:
        """Pause reading until the awaitable READY (an upstream writer's drain) is done."""
        self._pause_reading()

        async def wait() -> None:
            with contextlib.suppress(Exception):
                await ready
            self.resume_reading()
        self.loop.create_task(wait())

    def on_writable(self, closed: bool = False) -> None:
        self.write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)
        if self._writable_callbacks:
            callbacks, self._writable_callbacks = self._writable_callbacks, []
            for cb in callbacks:
                cb()

    def when_writable(self, callback: Callable[[], None]) -> None:
        """filter.StreamCallbacks: CALLBACK once the downstream drained (or closed)."""
        if not self.write_paused or self.transport.is_closing():
            callback()
        else:
            self._writable_callbacks.append(callback)

    def body_error(self) -> bool:
        return self.decoder.error is not None

    async def drain(self) -> None:
        """Wait while the downstream transport is above its high-water mark."""
        if self.write_paused and not self.transport.is_closing():
            fut = self.loop.create_future()
            self._drain_waiters.append(fut)
            await fut

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._waiter is None or self.active is not None:
            return  # a stream is active; the connection going idle re-arms the timer
        left = self._idle_since + self.cfg.idle_timeout - self.loop.time()
        if left > 0:
            self._idle_timer = self.loop.call_later(left, self._idle_check)
            return
        self.idle = True
        self._wake()

    def _stream_idle_check(self) -> None:
        """stream_idle_timeout: fires when neither side of the active stream moved a byte
        for that long. One timer per connection, not per stream: activity stamps are
        cheap, and the timer is re-armed lazily from the last one while a stream is
        active (a stream that starts sets the stamp, so a timer armed for an earlier
        stream only fires early and re-arms)."""
        self._stream_timer = None
        act = self.active
        if act is None or act.response_complete:
            return  # the next stream arms it again
        loop = self.loop
        left = self.last_activity + self.cfg.stream_idle_timeout - loop.time()
        if left > 0:
            self._stream_timer = loop.call_later(left, self._stream_idle_check)
        else:
            self.cancel_active("stream_idle")

    def arm_route_timeout(self, timeout: float) -> None:
        """The active stream's route timeout: cancel it with "timeout" TIMEOUT seconds
        from now unless the router clears ``route_deadline`` first. The connection's timer
        stays armed across streams; it is moved only when it would fire after the new
        deadline, and when it fires early (for an earlier stream) it re-arms itself."""
        deadline = self.route_deadline = self.loop.time() + timeout
        self._route_timer.arm(deadline)

    def _route_check(self) -> None:
        deadline = self.route_deadline
        if not deadline:
            return  # no stream is waiting on its route timeout; the next one re-arms
        if self.loop.time() < deadline:
            self._route_timer.arm(deadline)
            return
        self.route_deadline = 0.0
        self.cancel_active("timeout")

    def on_eof(self) -> None:
        if self.eof:
            return
        self.eof = True
        act = self.active
        if not self._ending:
            # the client closed first (downstream_cx_destroy_remote), mid-request or not
            self._ended = (True, act is not None and not act.response_complete)
        if act is not None and not act.response_complete:
            # the stream is reset by the client's close: ActiveStream::onResetStream
            self.hcm.count("downstream_rq_rx_reset")
            self.cancel_active("dc")
        self._wake()

    def _on_codec_error(self) -> None:
        act = self.active
        if act is not None and not act.req.complete:
            self.cancel_active("codec")
        self._wake()

    def cancel_active(self, reason: str) -> None:
        act = self.active
        if act is not None and act.response_complete:
            # the router completes a response from the upstream's read callback, before
            # the stream ends: a timer firing in between interrupts nothing
            return
        if self.cancel_reason is not None:
            return
        if self.in_flight is not None and not self._running:
            # a coroutine again, waiting for its response (while the stream starts, _start
            # does that with the pending cancellation once hcm.start returned)
            self.resume_in_flight()
        coro = self._coro
        if coro is not None:
            # suspended on the router's response wait: as Task.cancel, the awaited future
            # is cancelled and CancelledError thrown in where the coroutine waits
            self.cancel_reason = reason
            self._coro = None
            wait = self.response_wait
            if wait is not None:
                wait.cancel()
            self._drive(coro, asyncio.CancelledError())
            self._serve_ready()
        elif self._running:
            self.cancel_reason = reason  # thrown in where it suspends next
            self._pending_cancel = True
        elif self._handoff is not None:
            self.cancel_reason = reason  # thrown in first when the task takes it over
            self._handoff_cancel = True
        elif self._task is not None:
            self.cancel_reason = reason
            self._cancel_by_task = True
            self._task.cancel()

    # -- serving --------------------------------------------------------------------------
    def _serve_ready(self) -> None:
        """Serve the decoded requests, one after another, from this callback: each one's
        coroutine runs until it ends or waits; the next starts only once one ended."""
        dec = self.decoder
        while (dec.ready and self.active is None and not self._running
               and self._handoff is None and self._tail is None and self._error is None):
            req = dec.ready.popleft()
            if self._read_paused:
                self.resume_reading()
            stream = ActiveStream(self, req)
            self.active = stream
            self.hcm.rq_http1_total.pending += 1  # Envoy's downstream_rq_http1_total
            sit = self.cfg.stream_idle_timeout
            if sit > 0:
                self.last_activity = self.loop.time()
                if self._stream_timer is None:
                    self._stream_timer = self.loop.call_later(sit, self._stream_idle_check)
            self._start(stream)

    def _start(self, stream: ActiveStream) -> None:
        """Serve STREAM (``hcm.start``): ended at once (a local reply), in flight without
        a coroutine (the router's usual request), or a coroutine to drive."""
        if self._serve_set:
            self._drive(self.hcm.serve(stream), None)
            return
        self._running = True
        try:
            coro = self.hcm.start(stream)
        except BaseException as err:  # the task raises it, as if it ran the stream
            self._running = False
            self._error = err
            self._wake()
            return
        self._running = False
        if coro is not None:
            self._drive(coro, None)
        elif self.in_flight is None:
            self._stream_ended()
        elif self._pending_cancel:  # interrupted while it started: as _drive does
            self._pending_cancel = False
            self.resume_in_flight()
            coro = self._coro
            wait = self.response_wait
            if coro is not None:
                self._coro = None
                if wait is not None:
                    wait.cancel()
                self._drive(coro, asyncio.CancelledError())

    def resume_in_flight(self) -> None:
        """The request in flight becomes a coroutine, driven to its attempt's wait."""
        flight = self.in_flight
        assert flight is not None
        self.in_flight = None
        self._drive(flight.resumed(), None)

    def in_flight_ended(self) -> None:
        """The request in flight got its usual response: the stream ends, as it would
        when its coroutine returned, and the next request starts."""
        self.in_flight = None
        self._stream_ended()
        if self.decoder.ready:
            self._serve_ready()

    def resume(self, wait: asyncio.Future[Any]) -> None:
        """The router resolved WAIT (its response wait): a coroutine suspended on it here
        goes on at once, in the caller's callback, and then the next request."""
        coro = self._coro
        if coro is not None and wait is self.response_wait:
            self._coro = None
            self._drive(coro, None)
            if self.decoder.ready:
                self._serve_ready()

    async def in_task(self) -> None:
        """Awaited by the router before what needs the connection's task (a new upstream
        connection's asyncio.timeout, the HTTP/2 pool, a tunnel): a coroutine driven
        from a callback is handed over to the task there (one bare yield: sleep(0)); under
        the task it goes straight on. (An async def, not a @types.coroutine generator:
        compiled by mypyc, that generator cannot be awaited from Python, http2/upstream.py)"""
        if self._running:
            await asyncio.sleep(0)

    def _drive(self, coro: Coroutine[Any, Any, Any], exc: BaseException | None) -> None:
        """Run the stream's coroutine from a callback until it ends or suspends: on the
        router's response wait it stays here (``_coro``); on anything else it goes to the
        connection's task (``_handoff``)."""
        self._running = True
        try:
            while True:
                try:
                    yielded = coro.send(None) if exc is None else coro.throw(exc)
                except StopIteration:
                    self._stream_ended()
                    return
                except asyncio.CancelledError:
                    if self.take_cancel() is not None:
                        self._stream_ended()  # the stream handled what interrupted it
                        return
                    raise
                if self._pending_cancel:
                    self._pending_cancel = False
                    if isinstance(yielded, asyncio.Future):
                        yielded.cancel()
                    exc = asyncio.CancelledError()
                    continue
                break
        except BaseException as err:  # the task raises it, as if it ran the stream
            self._error = err
            self._wake()
            return
        finally:
            self._running = False
        wait = self.response_wait
        if wait is not None and yielded is wait:
            self._coro = coro
            return
        self._handoff = (coro, yielded)
        self._wake()

    def _stream_ended(self) -> None:
        """The active stream is over: log it; the task takes over when the connection
        must close, drain or end, otherwise the next request may start."""
        stream = self.active
        assert stream is not None
        self.active = None
        self.response_wait = None
        if self._pending_cancel:  # it ended before it could be interrupted
            self._pending_cancel = False
            self.cancel_reason = None
        self.hcm.complete(stream)
        if (stream.closing or not stream.response_complete or not stream.req.complete
                or self.decoder.upgraded or self.write_paused):
            self._tail = stream
            self._wake()
            return
        if self.cfg.idle_timeout > 0:  # _went_idle, inlined
            self._idle_since = self.loop.time()
            if self._idle_timer is None:
                self._idle_timer = self.loop.call_later(self.cfg.idle_timeout, self._idle_check)
        if self.eof or self.decoder.error is not None:
            self._wake()

    def _went_idle(self) -> None:
        """common_http_protocol_options.idle_timeout: no stream for that long closes the
        connection (Envoy's downstream_cx_idle_timeout). One timer per connection,
        re-armed lazily when it fires, not one per request."""
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.cfg.idle_timeout, self._idle_check)

    async def run(self) -> None:
        self._task = asyncio.current_task()
        self._take_over()
        if not self.eof:
            self._drain_off = self._drain.add_on_drain(self._on_drain_notice)
        try:
            await self._serve()
        finally:
            if self._drain_off is not None:
                self._drain_off()
            if self._drain_notice is not None:
                self._drain_notice.cancel()
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            # before the close below (whose connection_lost would set eof too): who ended
            # it, and whether mid-request (a client gone while its request was active
            # ended the stream through on_eof's cancel_active("dc"), so it is asked by the
            # eof a request was still active at)
            if not self.eof:  # (on_eof recorded the client's close)
                self._ended = (False, self.active is not None)
            self._ending = True
            if self.in_flight is not None:
                self.resume_in_flight()  # closed below like any stream's coroutine
            for coro in (self._coro, self._handoff[0] if self._handoff else None):
                if coro is not None:  # the connection's end ends the stream's coroutine too
                    if self.response_wait is not None:
                        self.response_wait.cancel()
                    coro.close()
            self._coro = self._handoff = None
            if self._headers_timer is not None:
                self._headers_timer.cancel()
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            if self._stream_timer is not None:
                self._stream_timer.cancel()
            self._route_timer.cancel()
            with contextlib.suppress(Exception):
                self.output.flush()
                self.writer.close()

    def ended_by(self) -> tuple[bool, bool]:
        """Once ``run`` returned: (whether the client closed first, whether a request was
        active then), the connection manager's downstream_cx_destroy_* (hcm.py)."""
        return self._ended

    async def _serve(self) -> None:
        dec = self.decoder
        loop = self.loop
        while True:
            err = self._error
            if err is not None:
                self._error = None
                raise err
            handoff = self._handoff
            if handoff is not None:
                self._handoff = None
                coro, yielded = handoff
                first: BaseException | None = None
                if self._handoff_cancel:
                    self._handoff_cancel = False
                    if isinstance(yielded, asyncio.Future):
                        yielded.cancel()
                    first = asyncio.CancelledError()
                try:
                    await _resume(coro, yielded, first)
                except asyncio.CancelledError:
                    if self.take_cancel() is None:
                        raise
                self._stream_ended()
                continue
            stream = self._tail
            if stream is not None:
                self._tail = None
                if (stream.closing or not stream.response_complete
                        or not stream.req.complete) and not self._drain_keeps(stream):
                    if not stream.response_complete and not self.eof:
                        # a response remora started and ends by closing the connection
                        # (the upstream's body cut short, a timeout after it began):
                        # Envoy resets the stream (downstream_rq_tx_reset), and its
                        # onResetStream counts every reset as downstream_rq_rx_reset too
                        self.hcm.count("downstream_rq_tx_reset")
                        self.hcm.count("downstream_rq_rx_reset")
                    elif not (stream.req.complete or stream.req.upgrade or self.eof):
                        # answered before the request was all read (a local reply, an
                        # early upstream answer): ConnectionManagerImpl::doEndStream
                        # counts it, and resets the stream whose request never ended
                        self.hcm.count("downstream_rq_response_before_rq_complete")
                        self.hcm.count("downstream_rq_rx_reset")
                    await self._flush()
                    if (self._drain_state == _CLOSING and stream.response_complete
                            and not self.eof):
                        # the stream a drain's drain_timeout waited for: Envoy's
                        # checkForDeferredClose closes with FlushWriteAndDelay
                        await self._delayed_close()
                    return
                if dec.upgraded:
                    return
                if self.write_paused:
                    try:
                        await self.drain()
                    except asyncio.CancelledError:
                        if self.take_cancel() is None:
                            raise
                        return
                if self.cfg.idle_timeout > 0:
                    self._went_idle()
                self._serve_ready()
                continue
            if self.active is None:
                if dec.ready:
                    self._serve_ready()
                    continue
                if dec.error is not None:
                    self._codec_error_reply(dec.error)
                    return
                if self.eof:
                    return
            try:
                self._waiter = loop.create_future()
                if self.active is None and self.cfg.idle_timeout > 0:
                    self._went_idle()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            except asyncio.CancelledError:
                if self.take_cancel() is None:
                    raise
                continue
            if self.idle and self.active is None and not dec.ready:
                self.hcm.stats.inc(self.hcm.idle_timeout_stat)
                return
            if self._drain_state == _CLOSING and self.active is None:
                if self.last_activity:  # (one that never sent a byte: closed at once)
                    await self._delayed_close()
                return

    async def _delayed_close(self) -> None:
        """Envoy's close(FlushWriteAndDelay) with nothing left to write (a drained idle
        connection): the client gets delayed_close_timeout to close first; what it sends
        meanwhile is not read as requests (Envoy reads no more). Closed by the caller
        (run) once the client closed or the timer fired, counted then as
        downstream_cx_delayed_close_timeout as Envoy's ConnectionImpl counts it."""
        self._ending = True  # remora closes first, whatever the client does meanwhile
        self.tunnel = _dropped
        deadline = self.loop.time() + DELAYED_CLOSE_S
        while not self.eof:
            left = deadline - self.loop.time()
            if left <= 0:
                self.hcm.count("downstream_cx_delayed_close_timeout")
                return
            self._waiter = self.loop.create_future()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._waiter
            finally:
                self._waiter = None

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    def take_cancel(self) -> str | None:
        """After a CancelledError: the reason if the connection caused it (and the task's
        cancellation undone), None for a real cancellation from outside."""
        reason = self.cancel_reason
        if reason is None:
            return None
        self.cancel_reason = None
        if self._cancel_by_task:
            self._cancel_by_task = False
            task = self._task
            if task is not None:
                task.uncancel()
        return reason

    def _codec_error_reply(self, err: CodecError) -> None:
        """A request that never became a stream (bad request line, bad header, oversize
        headers): Envoy logs it with "- -" for method and path, flag DPE, and with the
        connection's facts as any request on it (its stream exists from the first byte of
        the request, ConnectionManagerImpl::newStream): addresses, SNI, ALPN, the TLS
        connection's certificates and cipher, the connection's dynamic metadata."""
        if err.details != "request_header_timeout":
            # the codec's protocol error (ConnectionManagerImpl::onData: a codec status
            # that is not a timeout counts downstream_cx_protocol_error)
            self.hcm.count("downstream_cx_protocol_error")
        info = StreamInfo.for_request(self.downstream.info, "HTTP/1.1")
        info.request_headers = {}
        from remora.proxy.http.codec import Request
        stream = ActiveStream(self, Request())
        stream.info = info
        stream.local_reply(err.status, err.body.encode(), err.details, err.flag, close=True)
        self.hcm.complete(stream)

    async def _flush(self) -> None:
        try:
            await asyncio.wait_for(self.drain(), 30)
        except (TimeoutError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            if self.take_cancel() is None:
                raise


def _dropped(data: bytes) -> None:
    """Where the bytes a client sends during a delayed close go (nowhere)."""


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], yielded: Any,
            first: BaseException | None) -> Generator[Any, Any, None]:
    """Go on with CORO, suspended where it yielded YIELDED (FIRST: thrown in at once), as
    ``yield from`` would have from there: under the awaiting task, which sees what CORO
    yields and sends or throws back what it gets."""
    try:
        if first is not None:
            yielded = coro.throw(first)
        while True:
            try:
                value = yield yielded
            except BaseException as exc:  # the task's cancellation, GeneratorExit
                yielded = coro.throw(exc)
            else:
                yielded = coro.send(value)
    except StopIteration:
        return
