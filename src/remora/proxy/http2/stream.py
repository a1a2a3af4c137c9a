"""One HTTP/2 stream on a downstream connection, served by the same connection manager,
HTTP filters and router as an HTTP/1.1 request.

``Http2Stream`` is an ``ActiveStream`` whose decode side (prepare: routing, XFF, request
id, header sanitizing) is HTTP/1.1's, fed a ``Request`` built from the stream's pseudo
headers as Envoy maps them (``:authority`` becomes ``host``, the first header upstream);
its encode side writes HEADERS/DATA/trailers through the connection's flow control
instead of HTTP/1.1 bytes. ``StreamConn`` is the per-stream ``conn`` the router drives:
cancellation with a reason (route timeout, downstream reset), write back-pressure
(``write_paused``/``drain``), and ``resume_reading`` (the upstream accepted the body so far:
its bytes are acknowledged to the client with WINDOW_UPDATE).

A stream is served without a task of its own, as an HTTP/1.1 request is (http/connection.py):
its coroutine (``hcm.serve``) is driven from the read callback that completed the request
block (``Http2Connection._start_streams``). While it waits for its upstream response (the router's
``response_wait``; on an HTTP/2 upstream, the wait for the stream's events) it stays on the
StreamConn, resumed by the router (or the HTTP/2 client) in the upstream's read callback
(``resume``); while it waits for any other future (a connecting HTTP/2 connection, a
retry's backoff, a fault's delay, a body sink's drain) it is resumed by that future's done
callback, as a task would be woken, but without a task. Only what needs a task (a new
upstream connection's asyncio.timeout: the router's ``in_task``) hands it over to one,
created then, which drives it from there as an ordinary coroutine. Cancellation (client
reset, route or stream idle timeout, the connection's end, a codec error) lands where the
coroutine waits one loop iteration later, as a task's cancellation would: the awaited
future is cancelled at once and CancelledError raised where it is awaited at the next
turn. Once the response is queued, the wait until it left the proxy (the stream's
access-log line is written then) is a callback on the StreamConn (``tail``), not a
future.

The usual stream (its request ended with its HEADERS, the router alone, an idle pooled
HTTP/1.1 upstream connection) has no coroutine at all, as HTTP/1.1's usual request
(http/connection.py ``in_flight``): ``StreamConn.start`` runs ``hcm.start``, the router
sends the request and the StreamConn holds it as ``in_flight`` until the response's last
read ends it (``in_flight_ended``); anything else (a failure, a retried status, a
cancellation of any kind) first turns it into the router's coroutine suspended at its
response wait (``resume_in_flight``), so those paths are the coroutine's own.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, ClassVar

from remora.proxy.http.codec import CodecError, Request
from remora.proxy.http.header_map import repeated_response_view
from remora.proxy.http.header_mutation import HeaderMutations
from remora.proxy.http.header_mutation import apply as apply_mutations
from remora.proxy.http.stream import ActiveStream, http_date_text
from remora.proxy.http2.header_names import TO_BYTES, learn_bytes

if TYPE_CHECKING:
    from remora.proxy.http.connection import InFlight
    from remora.proxy.http.hcm import HttpConnectionManager
    from remora.proxy.http2.downstream import Http2Connection
    from remora.proxy.interfaces import Downstream

# RFC 9113 8.2.2: connection-specific header fields never appear in HTTP/2; Envoy's codec
# drops them from a response converted from HTTP/1.1
CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection",
                                 "transfer-encoding", "upgrade"})
# a stream's response bytes queued beyond the peer's window before the router stops
# reading its upstream (Envoy's per-stream buffer high watermark, 1 MiB by default:
# per_connection_buffer_limit_bytes)
STREAM_HIGH_WATER = 1024 * 1024
# response headers encode_headers looks at (besides pseudo headers); any other is passed
# on as it is
_RESPONSE_SPECIAL = CONNECTION_SPECIFIC | {"te", "content-length", "server",
                                           "x-envoy-upstream-service-time"}
_STATUS = {code: str(code).encode() for code in range(100, 600)}  # :status values


class _NoDecoderError:
    """The router asks ``conn.decoder.error`` whether the body turned out malformed in
    the same read as its headers (HTTP/1.1); an HTTP/2 frame error resets the stream or
    the connection instead, so there never is one."""

    error: CodecError | None = None


_NO_DECODER = _NoDecoderError()  # shared: it holds nothing

# StreamConn.state: who drives the stream's coroutine
PENDING = 0  # created by the read callback, not started yet
DRIVEN = 1  # driven from callbacks (running now, or suspended on a future)
TASK = 2  # handed over to a task (``task``)
TAIL = 3  # the coroutine ended; the response is queued and waits to leave (``tail``)
DONE = 4  # over: logged and forgotten
# what StreamConn.in_task yields: hand the coroutine over to a task (never seen by one)
TO_TASK = object()


class StreamConn:
    """What the router, the filters and ``ActiveStream.prepare`` use of ``stream.conn``,
    for one HTTP/2 stream. Shared facts come from the connection; cancellation, activity
    and back-pressure are the stream's own (streams are multiplexed)."""

    # slots: past 30 attributes CPython 3.11 gives instances no shared-key dict, and
    # every attribute access on them is slower (measured: 5 k instructions per request)
    __slots__ = ("_cancel_by_task", "_coro", "_drain_waiters", "_handoff_cancel",
                 "_handoff_pending", "_must_cancel", "_pending_cancel", "_running",
                 "_tail_scheduled", "_waiting", "_writable_callbacks", "cancel_reason", "cfg",
                 "decoder", "downstream", "draining", "encoders", "h2c", "hcm",
                 "in_flight", "last_activity", "loop", "response_wait", "route_deadline",
                 "sanitize_xfcc", "scheme", "state", "stream", "stream_id", "tail", "task")

    def __init__(self, h2c: Http2Connection, stream_id: int) -> None:
        self.h2c = h2c
        self.stream_id = stream_id
        hcm = h2c.hcm
        self.hcm: HttpConnectionManager = hcm
        self.cfg = hcm.cfg
        self.encoders = hcm.encoders
        self.sanitize_xfcc = hcm.sanitize_xfcc
        self.downstream: Downstream = h2c.downstream
        self.scheme = h2c.scheme
        self.loop = h2c.loop
        self.decoder = _NO_DECODER
        self.draining = False
        self.cancel_reason: str | None = None
        # the router's route timeout (loop time; 0: none running), checked by the
        # connection's one timer (Http2Connection.arm_route_timeout)
        self.route_deadline = 0.0
        self.last_activity = h2c.loop.time()
        self.task: asyncio.Task[Any] | None = None
        self.state = PENDING
        self.stream: Http2Stream | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._writable_callbacks: list[Callable[[], None]] = []
        # the driven coroutine (module docstring): the router's response wait, the
        # coroutine suspended on it or on another future, whether _drive runs it right
        # now, a cancellation that came while it ran; the task it was handed to has not
        # stepped yet (and a cancellation to throw in first); the task was cancelled
        # (uncancel on take); the response waits to leave, and its check is scheduled
        self.response_wait: asyncio.Future[Any] | None = None
        # the usual request, sent by the router without a coroutine (router.py
        # ``_Forward.start``), as on HTTP/1.1 (http/connection.py ``in_flight``)
        self.in_flight: InFlight | None = None
        self._coro: Coroutine[Any, Any, None] | None = None
        self._waiting: asyncio.Future[Any] | None = None  # what the suspended coro awaits
        self._running = False
        self._pending_cancel = False
        self._must_cancel = False  # its wake-up throws CancelledError in (Task's same flag)
        self._handoff_pending = False
        self._handoff_cancel = False
        self._cancel_by_task = False
        self.tail = False
        self._tail_scheduled = False

    def node_ip(self) -> str | None:
        return self.hcm.node_ip()

    # -- cancellation (the router's and hcm.serve's contract) -----------------------------
    def cancel_active(self, reason: str) -> None:
        """Interrupt the stream's coroutine with REASON where it waits, one loop iteration
        from now (as the stream's task was cancelled before); nothing once it is over."""
        if self.cancel_reason is not None:
            return
        state = self.state
        if state == DRIVEN:
            if self.in_flight is not None and not self._running:
                # a coroutine again, waiting for its response: cancelled there below, as
                # the coroutine that sent the request would be (while the stream starts,
                # ``start`` does that with the pending cancellation once it returned)
                self.resume_in_flight()
            self.cancel_reason = reason
            if self._running:
                self._pending_cancel = True  # thrown in where it suspends next
                return
            if self._coro is not None:
                # as Task.cancel: the awaited future is cancelled now and CancelledError
                # lands where the coroutine waits at the next turn
                waiting = self._waiting
                if waiting is not None and waiting is self.response_wait:
                    # (resumed by the router, not by a callback of its own)
                    if not waiting.done():
                        waiting.cancel()
                    self.loop.call_soon(self._deliver_cancel)
                elif waiting is None or not waiting.cancel():
                    self._must_cancel = True  # its wake-up is already on its way
        elif state == TASK:
            self.cancel_reason = reason
            task = self.task
            if self._handoff_pending:
                self._handoff_cancel = True  # thrown in first when the task takes it over
            elif task is not None and not task.done():
                self._cancel_by_task = True
                task.cancel()
        elif state == TAIL:
            self.cancel_reason = reason
            if not self._tail_scheduled:
                self._tail_scheduled = True
                self.loop.call_soon(self._tail_check)
        elif state == PENDING:
            # not started yet: the request is taken up and cancelled at its first wait
            # when it starts (Http2Connection._start)
            self.cancel_reason = reason

    def take_cancel(self) -> str | None:
        """After a CancelledError: the reason if the connection caused it (and the task's
        cancellation undone), None for a real cancellation from outside."""
        reason = self.cancel_reason
        if reason is None:
            return None
        self.cancel_reason = None
        if self._cancel_by_task:
            self._cancel_by_task = False
            task = self.task
            if task is not None:
                task.uncancel()
        return reason

    _take_cancel = take_cancel  # the name the HTTP/1.1 core's callers use

    def body_error(self) -> bool:
        """The typed stream callbacks' question: was the body malformed in the codec?
        An HTTP/2 frame error resets the stream or the connection instead."""
        return False

    # -- request body flow control --------------------------------------------------------
    def resume_reading(self) -> None:
        """The router attached its sink and sent what was buffered: acknowledge it."""
        if self.stream is not None:
            self.stream.body_accepted()

    # -- response back-pressure -----------------------------------------------------------
    @property
    def write_paused(self) -> bool:
        s = self.stream
        return s is not None and not s.reset and (
            s.out_bytes > STREAM_HIGH_WATER or self.h2c.write_paused)

    async def drain(self) -> None:
        """Until the stream's queued response fits the high-water mark again (the client
        opened its window) or the stream is gone."""
        while self.write_paused:
            fut = self.loop.create_future()
            self._drain_waiters.append(fut)
            await fut

    def when_writable(self, callback: Callable[[], None]) -> None:
        """CALLBACK once the stream's queued response is below the high-water mark again
        (the client opened its window) or the stream is gone."""
        if not self.write_paused:
            callback()
        else:
            self._writable_callbacks.append(callback)

    def wake(self) -> None:
        if self._drain_waiters:
            waiters, self._drain_waiters = self._drain_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)
        if self._writable_callbacks and not self.write_paused:
            callbacks, self._writable_callbacks = self._writable_callbacks, []
            for cb in callbacks:
                cb()
        if self.tail and not self._tail_scheduled:
            # the end-of-stream wait re-checks at the next turn, as the task it replaces
            # woke from its future then
            self._tail_scheduled = True
            self.loop.call_soon(self._tail_check)

    # -- driving the stream's coroutine (module docstring) ---------------------------------
    def arm_route_timeout(self, timeout: float) -> None:
        """The router's route timeout for this stream: one timer per connection
        (Http2Connection.arm_route_timeout, inline: once per stream)."""
        deadline = self.route_deadline = self.loop.time() + timeout
        self.h2c._route_timer.arm(deadline)

    def start(self, stream: Http2Stream) -> None:
        """Serve STREAM (``hcm.start``) from the read callback that completed its request
        block, as http/connection.py ``_start`` serves an HTTP/1.1 request: ended at once
        (a local reply), in flight without a coroutine (the router's usual request:
        ``in_flight``), or a coroutine to drive. What ``_drive`` would do with the
        coroutine ``hcm.serve`` makes of the same start, without that coroutine."""
        self.state = DRIVEN
        self._running = True
        try:
            coro = self.hcm.start(stream)
        except asyncio.CancelledError:
            self._running = False
            self.h2c.served(self, self.take_cancel() is not None, None)
            return
        except (KeyboardInterrupt, SystemExit):
            self._running = False
            raise
        except BaseException as err:  # a failure, as the stream's task raised it
            self._running = False
            self.h2c.served(self, False, err)
            return
        self._running = False
        if coro is not None:
            self._drive(coro, None)
        elif self.in_flight is None:
            self.h2c.served(self, True, None)
        elif self._pending_cancel:
            # cancelled while it started: as _drive does for a coroutine that got to its
            # response wait, the wait is cancelled and CancelledError thrown in next turn
            self._pending_cancel = False
            self.resume_in_flight()
            wait = self.response_wait
            if self._coro is not None and wait is not None and self._waiting is wait:
                wait.cancel()
                self.loop.call_soon(self._deliver_cancel)

    def resume_in_flight(self) -> None:
        """The request in flight becomes a coroutine, driven to its attempt's wait."""
        flight = self.in_flight
        assert flight is not None
        self.in_flight = None
        self._drive(flight.resumed(), None)

    def in_flight_ended(self) -> None:
        """The request in flight got its usual response: the stream's coroutine would
        return now (``_drive``)."""
        self.in_flight = None
        stream = self.stream
        if stream is not None and (stream.ended or stream.reset):
            # its response left: over now (Http2Connection.served, inline: once per stream)
            self._pending_cancel = False
            self.h2c.stream_done(stream)
        else:
            self.h2c.served(self, True, None)

    def resume(self, wait: asyncio.Future[Any]) -> None:
        """The router resolved WAIT (its response wait): a coroutine suspended on it here
        goes on at once, in the upstream's read callback."""
        coro = self._coro
        if coro is not None and wait is self._waiting and wait is self.response_wait:
            self._coro = None
            self._waiting = None
            self._drive(coro, None)

    @types.coroutine
    def in_task(self) -> Generator[Any, None, None]:
        """Awaited before what needs a task (a new upstream connection's asyncio.timeout):
        a coroutine driven from callbacks is handed over to a task there (one yield of
        TO_TASK); under a task it goes straight on."""
        if self._running:
            yield TO_TASK

    def _deliver_cancel(self) -> None:
        coro = self._coro
        if coro is not None:
            self._coro = None
            self._waiting = None
            self._drive(coro, asyncio.CancelledError())

    def _wakeup(self, fut: asyncio.Future[Any] | None) -> None:
        """What the coroutine waited for is done (or it yielded bare, as asyncio.sleep(0)
        does): it goes on, as a task's step would (the future's result or exception is
        taken by its own ``await``)."""
        coro = self._coro
        if coro is None or fut is not self._waiting:
            return
        self._coro = None
        self._waiting = None
        if self._must_cancel:
            self._must_cancel = False
            self._drive(coro, asyncio.CancelledError())
        else:
            self._drive(coro, None)

    def _drive(self, coro: Coroutine[Any, Any, None], exc: BaseException | None) -> None:
        """Run the coroutine until it ends or suspends: on the router's response wait it
        stays here (``_coro``); on anything else it goes to a task."""
        self._running = True
        try:
            yielded = coro.send(None) if exc is None else coro.throw(exc)
        except StopIteration:
            self._running = False
            stream = self.stream
            if stream is not None and (stream.ended or stream.reset):
                # its response left: over now (Http2Connection.served, inline)
                self._pending_cancel = False
                self.h2c.stream_done(stream)
            else:
                self.h2c.served(self, True, None)
            return
        except asyncio.CancelledError:
            # (hcm.serve handles a cancellation with a reason itself) as the task did:
            # with a reason the response may still be leaving, without one it is over
            self._running = False
            self.h2c.served(self, self.take_cancel() is not None, None)
            return
        except (KeyboardInterrupt, SystemExit):
            self._running = False
            raise  # (a task re-raises them too)
        except BaseException as err:  # a failure, as the stream's task raised it
            self._running = False
            self.h2c.served(self, False, err)
            return
        self._running = False
        wait = self.response_wait
        if wait is not None and yielded is wait:
            # the router's response wait: resumed by the router (resume)
            self._coro = coro
            self._waiting = wait
            if self._pending_cancel:
                # cancelled while it ran: as a task, the future it waits for is cancelled
                # and CancelledError thrown in where it waits, at the next turn
                self._pending_cancel = False
                wait.cancel()
                self.loop.call_soon(self._deliver_cancel)
            return
        if yielded is TO_TASK or not (yielded is None or isinstance(yielded, asyncio.Future)):
            # in_task: what follows needs a task (or an awaitable a task must judge)
            pending, self._pending_cancel = self._pending_cancel, False
            self._hand_over(coro, yielded, pending)
            return
        # another future (the HTTP/2 pool's, a backoff, a body sink's drain...): resumed
        # by its done callback, as a task is woken, without a task
        self._coro = coro
        fut: asyncio.Future[Any] | None = yielded
        self._waiting = fut
        if fut is None:
            self.loop.call_soon(self._wakeup, None)  # a bare yield: the next turn
        else:
            fut._asyncio_future_blocking = False
            fut.add_done_callback(self._wakeup)
        if self._pending_cancel:
            self._pending_cancel = False
            if fut is None or not fut.cancel():
                self._must_cancel = True

    def _hand_over(self, coro: Coroutine[Any, Any, None], yielded: Any, cancel: bool) -> None:
        """What follows needs a task (in_task): one goes on with the coroutine (its first
        step at the next turn)."""
        self.state = TASK
        self._handoff_pending = True
        self._handoff_cancel = cancel
        h2c = self.h2c
        task = self.loop.create_task(h2c.serve_handed(self, coro, yielded))
        self.task = task
        h2c.tasks.add(task)

    def _tail_check(self) -> None:
        """The end-of-stream wait (``tail``): over once the response left (or the stream
        was reset, or the connection is gone), or interrupted with a reason."""
        self._tail_scheduled = False
        stream = self.stream
        if self.state != TAIL or stream is None:
            return
        reason = self.take_cancel()
        if reason is not None:
            stream.interrupted(reason)
        elif (stream.response_complete and not (stream.ended or stream.reset)
              and not self.h2c.closed):
            return  # still queued: the next wake checks again
        self.h2c.stream_done(stream)


class Http2Stream(ActiveStream):
    """ActiveStream with an HTTP/2 encode side. ``conn`` is a StreamConn: it offers what
    the router and prepare() use of an Http1Connection (the typed stream-connection
    Protocol replaces the type: ignore once it exists)."""

    # a bodiless local reply (gRPC's trailers-only one too) is one HEADERS frame with
    # END_STREAM and no content-length, as Envoy 1.40's HTTP/2 codec sends it
    BODILESS_TAIL: ClassVar[tuple[tuple[str, str], ...]] = ()
    # (no "out": ActiveStream's slot; a second one here would hide it, and compiled by
    # mypyc ActiveStream writes its own)
    __slots__ = ("ack_waiting", "end_queued", "ended", "h2c", "head_block",
                 "out_bytes", "reset", "reset_by_peer", "scon", "sid", "started_at",
                 "trailers", "unacked")

    def __init__(self, scon: StreamConn, req: Request) -> None:
        # (ActiveStream's __init__ called directly: no super() object, no typing.cast
        # call, once per stream)
        ActiveStream.__init__(self, scon, req)
        self.scon = scon
        self.h2c = scon.h2c
        self.sid = scon.stream_id
        self.info.protocol = "HTTP/2"
        # (closing: False, as a Request is keep-alive; out, ActiveStream's fresh list:
        # here the DATA payloads waiting for the peer's window)
        self.head_block: list[tuple[bytes, bytes]] | None = None  # HEADERS not yet sent
        self.out_bytes = 0
        self.end_queued = False  # END_STREAM (or trailers) follows the queued data
        self.trailers: list[tuple[str, str]] | None = None
        self.ended = False  # END_STREAM sent
        self.reset = False  # RST_STREAM sent or received
        self.reset_by_peer = False
        self.unacked = 0  # request body bytes not yet acknowledged (WINDOW_UPDATE)
        self.ack_waiting = False  # a wait for the sink to drain is under way
        self.started_at = scon.last_activity  # (the loop's time, read once per stream)
        scon.stream = self

    # -- request body ---------------------------------------------------------------------
    def on_body(self, data: bytes, flow_len: int) -> None:
        """DATA from the client: to the router's sink, or held until it attaches one.
        Acknowledged only once the upstream took it, so the client's window is what
        bounds an upload the upstream is slow to take."""
        req = self.req
        req.body_bytes += len(data)
        self.unacked += flow_len
        self.h2c.unacked_total += flow_len
        self.scon.last_activity = self.scon.loop.time()
        sink = req.sink
        if sink is None:
            if data:
                req.body.append(data)
            return
        if data:
            sink.data(data)
            if req.retain:
                if req.body_bytes <= self.h2c.buffer_limit:
                    req.body.append(data)
                else:
                    req.retain = False
                    req.body = []
        self.body_accepted()

    def on_request_end(self) -> None:
        req = self.req
        req.complete = True
        if req.sink is not None:
            req.sink.end()

    def body_accepted(self) -> None:
        """Acknowledge what the sink holds, at once or once the upstream drained it."""
        sink = self.req.sink
        if sink is None or not self.unacked:
            return
        if sink.congested():
            if not self.ack_waiting:  # one wait per stream, however many frames arrive
                self.ack_waiting = True
                self.h2c.ack_when_drained(self, sink.wait())
        else:
            self.h2c.acknowledge(self)

    # -- response side --------------------------------------------------------------------
    def encode_headers(self, status: int, headers: list[tuple[str, str]], *, chunked: bool,
                       service_time_ms: int | None = None,
                       tail: tuple[tuple[str, str], ...] = (),
                       mutations: HeaderMutations | None = None, joined: bool = False) -> None:
        """The response head as HEADERS: the same header rules as HTTP/1.1's encode
        (server, x-envoy-upstream-service-time, the route's mutations, the encoder
        filters, date), minus connection-specific fields; ``chunked`` means nothing here
        (DATA frames carry the body)."""
        cfg = self.scon.cfg
        self.response_started = True
        info = self.info
        info.response_code = status
        transformation = cfg.server_header_transformation
        server_seen = transformation == "PASS_THROUGH"
        svc = None if service_time_ms is None else str(service_time_ms)
        hl: list[tuple[str, str]] = []
        for h in headers:
            n = h[0]
            if n not in _RESPONSE_SPECIAL:
                if not n.startswith(":"):
                    hl.append(h)  # the usual header: passed on as it is
                continue
            v = h[1]
            if n in CONNECTION_SPECIFIC or (n == "te" and v.strip().lower() != "trailers"):
                continue
            if n == "content-length" and status == 204:
                continue
            if n == "server":
                if server_seen and transformation == "OVERWRITE":
                    continue
                server_seen = True
                if transformation == "OVERWRITE":
                    v = cfg.server_name
            elif n == "x-envoy-upstream-service-time" and svc is not None:
                v, svc = svc, None
            hl.append((n, v))
        if svc is not None:
            hl.append(("x-envoy-upstream-service-time", svc))
        if mutations is not None and (mutations.add or mutations.remove):  # (its __bool__)
            hl = apply_mutations(hl, mutations)
        if self.encoders:
            extra: list[tuple[str, str]] = []
            for f in self.encoders:
                f.encode_headers(self, status, extra)
            hl += extra
        resp = dict(hl)
        if len(resp) < len(hl):  # a name repeated
            view = repeated_response_view(hl, headers, joined)
            if isinstance(view, list):  # an inline name: joined as Envoy does
                return self.encode_headers(status, view, chunked=chunked,
                                           service_time_ms=service_time_ms, tail=tail,
                                           mutations=mutations, joined=True)
            resp = view
        if "date" not in resp:
            resp["date"] = http_date_text()
            hl.append(("date", resp["date"]))
        if not server_seen:
            resp["server"] = cfg.server_name
            hl.append(("server", cfg.server_name))
        if tail:
            hl += [(n, v) for n, v in tail if n not in CONNECTION_SPECIFIC]
            for n, v in tail:
                resp[n] = v
        info.response_headers = resp
        # the HEADERS block (Http2Connection.send_headers before, inline: once per
        # response), sent by the next pump (the stream's flush), with END_STREAM when
        # the response has no body by then (a local reply without body: one HEADERS
        # frame, as Envoy)
        h2c = self.h2c
        if self.reset or h2c.closed:
            return
        if not h2c.draining and h2c._drain.drain_close():
            h2c.start_drain()
        code = _STATUS.get(status)
        if code is None:
            code = str(status).encode()
        to_bytes = TO_BYTES  # (encode_fields, inline)
        block = [(b":status", code)]
        for n, v in hl:
            block.append((to_bytes.get(n) or learn_bytes(n), v.encode("latin-1")))
        self.head_block = block

    def encode_data(self, data: bytes) -> None:
        if not data or self.head or self.reset:
            return
        self.info.bytes_sent += len(data)
        self.scon.last_activity = self.scon.loop.time()
        self.out.append(data)
        self.out_bytes += len(data)

    def encode_trailers(self, trailers: list[tuple[str, str]]) -> None:
        """End the response with a trailing HEADERS frame (gRPC's grpc-status)."""
        self.trailers = [(n, v) for n, v in trailers if n not in CONNECTION_SPECIFIC]
        self.encode_end()

    def encode_end(self) -> None:
        self.end_queued = True
        self.response_complete = True
        self.h2c.pump(self)  # (flush, one frame less: once per response)

    def flush(self) -> None:
        self.h2c.pump(self)

    @property
    def sent_all(self) -> bool:
        return self.ended or self.reset

    def interrupted(self, reason: str) -> None:
        """As HTTP/1.1's, except for a stream the client reset (RST_STREAM): Envoy 1.40
        logs flag DR (downstream remote reset), details http2.remote_reset."""
        if reason == "dc" and self.reset_by_peer:
            self.info.set_flag("DR")
            self.info.response_code_details = "http2.remote_reset"
            return
        if reason == "h2_codec":
            # the connection ended in a protocol error (e.g. more streams than
            # max_concurrent_streams): Envoy 1.40 (nghttp2) logs its streams so
            self.info.set_flag("DPE")
            self.info.response_code_details = "codec_error:The_user_callback_function_failed"
            return
        super().interrupted(reason)


@types.coroutine
def resume_in_task(coro: Coroutine[Any, Any, None], yielded: Any,
                   first: BaseException | None) -> Generator[Any, Any, None]:
    """Go on with CORO, suspended where it yielded YIELDED (FIRST: thrown in at once), as
    ``yield from`` would have from there: under the awaiting task, which sees what CORO
    yields and sends or throws back what it gets."""
    try:
        if first is not None:
            yielded = coro.throw(first)
        elif yielded is TO_TASK:  # (in_task's yield: the task goes on at once)
            yielded = coro.send(None)
        while True:
            try:
                value = yield yielded
            except BaseException as exc:  # the task's cancellation, GeneratorExit
                yielded = coro.throw(exc)
            else:
                yielded = coro.send(value)
    except StopIteration:
        return
