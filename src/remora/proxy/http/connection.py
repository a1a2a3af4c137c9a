"""One downstream HTTP/1.1 connection: bytes are decoded into requests as they arrive
(protocol callbacks, no reader task), and the connection's own task serves the requests
one after another (pipelining keeps order).

Cancellation is how the connection interrupts the request being served: a downstream
disconnect (Envoy: DC), a body that turns out malformed (DPE), the route timeout (UT), a
per-try or stream idle timeout cancel the serving task with a reason, and the router turns
that reason into Envoy's response and flags. No per-request task is created.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from remora.proxy.http.codec import CodecError, RequestDecoder
from remora.proxy.http.stream import ActiveStream
from remora.proxy.interfaces import Downstream
from remora.proxy.stream_info import StreamInfo
from remora.proxy.takeover import take_over

if TYPE_CHECKING:
    from remora.proxy.http.hcm import HttpConnectionManager

READ_SIZE = 65536
BUFFER_LIMIT = 1024 * 1024  # Envoy's per_connection_buffer_limit_bytes default
MAX_PIPELINED = 16


class _DownstreamProtocol(asyncio.Protocol):
    """Takes over the downstream transport from the core's StreamReader: bytes go straight
    into the HTTP decoder instead of through a buffer, a reader task and a future."""

    def __init__(self, conn: Http1Connection) -> None:
        self.conn = conn

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
        self.active: ActiveStream | None = None
        self.cancel_reason: str | None = None
        self.idle = False
        self.last_activity = 0.0  # loop time of the last byte moved for the active stream
        self.write_paused = False
        self.tunnel: Callable[[bytes], None] | None = None  # after a 101: raw bytes go here
        self._task: asyncio.Task[Any] | None = None
        self.loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._writable_callbacks: list[Callable[[], None]] = []
        self._read_paused = False
        self._headers_timer: asyncio.TimerHandle | None = None  # request_headers_timeout
        self._idle_timer: asyncio.TimerHandle | None = None  # idle_timeout, lazily re-armed
        # stream_idle_timeout of the active stream, lazily re-armed (_stream_idle_check)
        self._stream_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0

    def node_ip(self) -> str | None:
        return self.hcm.node_ip()

    @property
    def draining(self) -> bool:
        """Asked as a response starts (stream.py): Envoy answers with connection: close
        once its listener's drain decision says so (server/drain.py)."""
        if self._drain.drain_close():
            # ConnectionManagerImpl counts the connection it drains
            self.hcm.stats.inc(f"http.{self.cfg.stat_prefix}.downstream_cx_drain_close")
            return True
        return False

    def _take_over(self) -> None:
        """Switch the transport to our protocol; what the core's StreamReader already
        buffered (it starts reading at accept) is decoded first. StreamReader keeps that
        buffer in ``_buffer``/``_eof`` (CPython's asyncio; uvloop uses the same class)."""
        buffered, at_eof = take_over(self.downstream.reader, self.transport,
                                     _DownstreamProtocol(self))
        if buffered:
            self.on_data(buffered)
        if at_eof:
            self.on_eof()

    # -- reading --------------------------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def on_data(self, data: bytes) -> None:
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
        w = self._waiter  # _wake, inlined: once per read
        if w is not None and not w.done():
            w.set_result(None)

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
        if self._waiter is None:
            return  # a stream is active; the next wait for a request re-arms the timer
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

    def on_eof(self) -> None:
        if self.eof:
            return
        self.eof = True
        act = self.active
        if act is not None and not act.response_complete:
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
            # its task wakes: a timer firing in between interrupts nothing
            return
        if self.cancel_reason is None and self._task is not None:
            self.cancel_reason = reason
            self._task.cancel()

    # -- serving --------------------------------------------------------------------------
    async def run(self) -> None:
        self._task = asyncio.current_task()
        self._take_over()
        try:
            await self._serve()
        finally:
            if self._headers_timer is not None:
                self._headers_timer.cancel()
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            if self._stream_timer is not None:
                self._stream_timer.cancel()
            with contextlib.suppress(Exception):
                self.writer.close()

    async def _serve(self) -> None:
        dec = self.decoder
        loop = self.loop
        while True:
            try:
                while not dec.ready:
                    if dec.error is not None:
                        self._codec_error_reply(dec.error)
                        return
                    if self.eof:
                        return
                    self._waiter = loop.create_future()
                    # common_http_protocol_options.idle_timeout: no stream for that long
                    # closes the connection (Envoy's downstream_cx_idle_timeout). One timer
                    # per connection, re-armed lazily when it fires, not one per wait.
                    if self.cfg.idle_timeout > 0:
                        self._idle_since = loop.time()
                        if self._idle_timer is None:
                            self._idle_timer = loop.call_later(self.cfg.idle_timeout,
                                                               self._idle_check)
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                    if self.idle and not dec.ready:
                        self.hcm.stats.inc(self.hcm.idle_timeout_stat)
                        return
            except asyncio.CancelledError:
                if self.take_cancel() is None:
                    raise
                continue
            req = dec.ready.popleft()
            if self._read_paused:
                self.resume_reading()
            stream = ActiveStream(self, req)
            self.active = stream
            sit = self.cfg.stream_idle_timeout
            if sit > 0:
                self.last_activity = loop.time()
                if self._stream_timer is None:
                    self._stream_timer = loop.call_later(sit, self._stream_idle_check)
            try:
                await self.hcm.serve(stream)
            except asyncio.CancelledError:
                if self.take_cancel() is None:
                    raise
            finally:
                self.active = None
            self.hcm.complete(stream)
            if stream.closing or not stream.response_complete or not req.complete:
                await self._flush()
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
        task = self._task
        if task is not None:
            task.uncancel()
        return reason

    _take_cancel = take_cancel  # the name callers on other branches still use

    def _codec_error_reply(self, err: CodecError) -> None:
        """A request that never became a stream (bad request line, bad header, oversize
        headers): Envoy logs it with "- -" for method and path, flag DPE."""
        ds = self.downstream
        ci = ds.info
        info = StreamInfo(
            downstream_local_address=ci.downstream_local_address,
            downstream_remote_address=ci.downstream_remote_address,
            downstream_direct_remote_address=ci.downstream_direct_remote_address,
            requested_server_name=ci.requested_server_name, listener_name=ci.listener_name,
            filter_chain_name=ci.filter_chain_name, protocol="HTTP/1.1")
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
