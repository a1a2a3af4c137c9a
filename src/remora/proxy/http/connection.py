"""One downstream HTTP/1.1 connection: a reader task decodes bytes into requests, the
connection's own task serves them one after another (pipelining keeps order).

Cancellation is how the connection interrupts the request being served: a downstream
disconnect (Envoy: DC), a body that turns out malformed (DPE), the route timeout (UT) or a
per-try timeout cancel the serving task with a reason, and the router turns that reason into
Envoy's response and flags. No per-request task is created.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from remora.proxy.http.codec import CodecError, RequestDecoder
from remora.proxy.http.stream import ActiveStream
from remora.proxy.interfaces import Downstream
from remora.proxy.stream_info import StreamInfo

if TYPE_CHECKING:
    from remora.proxy.http.hcm import HttpConnectionManager

READ_SIZE = 65536
BUFFER_LIMIT = 1024 * 1024  # Envoy's per_connection_buffer_limit_bytes default
MAX_PIPELINED = 16


class Cancelled(Exception):
    """Raised out of the router when the connection interrupted the stream."""


class Http1Connection:
    def __init__(self, hcm: HttpConnectionManager, downstream: Downstream) -> None:
        self.hcm = hcm
        self.cfg = hcm.cfg
        self.encoders = hcm.encoders
        self.sanitize_xfcc = hcm.sanitize_xfcc
        self.downstream = downstream
        self.reader = downstream.reader
        self.writer = downstream.writer
        self.decoder = RequestDecoder(self.cfg.max_request_headers_kb * 1024,
                                      self.cfg.max_headers_count, BUFFER_LIMIT)
        self.eof = False
        self.draining = False
        self.active: ActiveStream | None = None
        self.cancel_reason: str | None = None
        self.idle = False
        self.last_activity = 0.0  # loop time of the last byte moved for the active stream
        self._task: asyncio.Task[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._resume: asyncio.Future[None] | None = None

    def node_ip(self) -> str | None:
        return self.hcm.node_ip()

    # -- reading --------------------------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _read_loop(self) -> None:
        dec = self.decoder
        reader = self.reader
        try:
            while True:
                # flow control: stop reading while requests pile up unserved or while a body
                # has nowhere to go yet (the router attaches a sink once it is connected)
                cur = dec.current
                while (len(dec.ready) >= MAX_PIPELINED or
                       (cur is not None and cur.sink is None and cur.body_limit_hit)):
                    self._resume = asyncio.get_running_loop().create_future()
                    await self._resume
                    cur = dec.current
                data = await reader.read(READ_SIZE)
                if not data:
                    self._on_eof()
                    return
                self.last_activity = self._loop_time()
                try:
                    dec.feed(data)
                except CodecError:
                    self._on_codec_error()
                    return
                if dec.upgraded:
                    self._wake()
                    return  # the router reads the tunnel's bytes itself after a 101
                cur = dec.current
                if cur is not None and cur.sink is not None:
                    await cur.sink.pressure()
                self._wake()
        except (ConnectionError, OSError):
            self._on_eof()
        except asyncio.CancelledError:
            pass

    def _idle_expired(self) -> None:
        self.idle = True
        self._wake()

    def _stream_idle_check(self) -> None:
        """stream_idle_timeout: fires when neither side of the active stream moved a byte
        for that long (activity stamps are cheap; the timer is re-armed lazily)."""
        act = self.active
        if act is None or act.response_complete:
            return
        loop = asyncio.get_running_loop()
        left = self.last_activity + self.cfg.stream_idle_timeout - loop.time()
        if left > 0:
            act.idle_timer = loop.call_later(left, self._stream_idle_check)
        else:
            self.cancel_active("stream_idle")

    def resume_reading(self) -> None:
        r = self._resume
        if r is not None and not r.done():
            r.set_result(None)

    def _on_eof(self) -> None:
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
        if self.cancel_reason is None and self._task is not None:
            self.cancel_reason = reason
            self._task.cancel()

    # -- serving --------------------------------------------------------------------------
    async def run(self) -> None:
        self._task = asyncio.current_task()
        reader_task = asyncio.get_running_loop().create_task(self._read_loop())
        try:
            await self._serve()
        finally:
            reader_task.cancel()
            with contextlib.suppress(BaseException):
                await reader_task
            with contextlib.suppress(Exception):
                self.writer.close()

    async def _serve(self) -> None:
        dec = self.decoder
        while True:
            try:
                while not dec.ready:
                    if dec.error is not None:
                        self._codec_error_reply(dec.error)
                        return
                    if self.eof:
                        return
                    loop = asyncio.get_running_loop()
                    self._waiter = loop.create_future()
                    # common_http_protocol_options.idle_timeout: no stream for that long
                    # closes the connection (Envoy's downstream_cx_idle_timeout)
                    idle = self.cfg.idle_timeout
                    timer = loop.call_later(idle, self._idle_expired) if idle > 0 else None
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                        if timer is not None:
                            timer.cancel()
                    if self.idle and not dec.ready:
                        self.hcm.stats.inc(self.hcm.idle_timeout_stat)
                        return
            except asyncio.CancelledError:
                if self._take_cancel() is None:
                    raise
                continue
            req = dec.ready.popleft()
            self.resume_reading()
            stream = ActiveStream(self, req)
            self.active = stream
            sit = self.cfg.stream_idle_timeout
            if sit > 0:
                self.last_activity = self._loop_time()
                stream.idle_timer = asyncio.get_running_loop().call_later(
                    sit, self._stream_idle_check)
            try:
                await self.hcm.serve(stream)
            except asyncio.CancelledError:
                if self._take_cancel() is None:
                    raise
            finally:
                self.active = None
                if stream.idle_timer is not None:
                    stream.idle_timer.cancel()
            self.hcm.complete(stream)
            if stream.closing or not stream.response_complete or not req.complete:
                await self._flush()
                return
            if dec.upgraded:
                return
            w = self.writer
            if w.transport.get_write_buffer_size() > BUFFER_LIMIT:
                await w.drain()

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    def _take_cancel(self) -> str | None:
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
        stream.local_reply(err.status, err.body.encode(), err.details, "DPE", close=True)
        self.hcm.complete(stream)

    async def _flush(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.drain()
