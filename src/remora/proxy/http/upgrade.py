"""The websocket tunnel after a ``101 Switching Protocols`` (``upgrade_configs``
websocket): raw bytes both ways until either side closes.

Envoy reference: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/upgrades
The tunnel's bytes count as body bytes in the access log (BYTES_RECEIVED / BYTES_SENT), and
the upstream connection is never pooled again. Both directions are read callbacks: the
downstream's bytes go to the upstream from Http1Connection.on_data (``conn.tunnel``), the
upstream's to the downstream from the pooled connection's protocol (``_Tunnel`` is its
ResponseHandler); each side stops reading while the other is above its high-water mark.
"""

from __future__ import annotations

import asyncio
from typing import cast

from remora.proxy.http.codec import ResponseDecoder
from remora.proxy.http.connection import BUFFER_LIMIT, Http1Connection
from remora.proxy.http.pool import PooledConnection
from remora.proxy.http.stream import ActiveStream
from remora.proxy.stream_info import StreamInfo


class _Tunnel:
    """pool.ResponseHandler for the upstream half, and the downstream half's sink."""

    __slots__ = ("closed", "conn", "info", "pc")

    def __init__(self, conn: Http1Connection, pc: PooledConnection, info: StreamInfo) -> None:
        self.conn = conn
        self.pc = pc
        self.info = info
        self.closed = False

    def upstream_data(self, data: bytes) -> None:
        conn = self.conn
        conn.output.write(data)
        self.info.bytes_sent += len(data)
        if conn.write_paused:
            pc = self.pc
            pc.pause_reading()
            conn.when_writable(pc.resume_reading)

    def upstream_eof(self) -> None:
        self.closed = True
        self.pc.handler = None
        self.conn._wake()


async def tunnel(stream: ActiveStream, pc: PooledConnection, dec: ResponseDecoder) -> None:
    stream.flush()  # the 101 head
    # an upgrade is HTTP/1.1's alone (an HTTP/2 stream has no Upgrade: RFC 9113 8.2.2)
    conn = cast(Http1Connection, stream.conn)
    req, info = stream.req, stream.info
    loop = conn.loop

    def to_upstream(data: bytes) -> None:
        pc.write(data)
        req.body_bytes += len(data)
        if pc.congested(BUFFER_LIMIT):
            conn.hold_reading_until(pc.drain())

    if conn.decoder.upgrade_tail:  # sent right behind the Upgrade request
        to_upstream(conn.decoder.upgrade_tail)
    if dec.upgrade_tail:  # sent right behind the 101
        conn.output.write(dec.upgrade_tail)
        info.bytes_sent += len(dec.upgrade_tail)
    conn.tunnel = to_upstream  # downstream bytes now bypass the HTTP decoder
    conn.resume_reading()
    up = _Tunnel(conn, pc, info)
    pc.attach(up)  # what the upstream sent since the 101 first
    try:
        while not conn.eof and not up.closed:
            conn._waiter = loop.create_future()  # woken by either side's end
            await conn._waiter
    except asyncio.CancelledError:
        if conn.cancel_reason != "dc":
            raise
        conn.take_cancel()
        up.closed = False  # the client went first
    finally:
        # which side ended it, as Envoy's access log tells: the client closing is DC
        # downstream_remote_disconnect, the upstream closing UC
        # upstream_reset_after_response_started{connection_termination} (checked against
        # Envoy 1.40: tests/unit/proxy/http/test_websocket_envoy_parity.py)
        if up.closed:
            info.set_flag("UC")
            info.response_code_details = (
                "upstream_reset_after_response_started{connection_termination}")
        elif conn.eof or conn.cancel_reason == "dc":
            info.set_flag("DC")
            info.response_code_details = "downstream_remote_disconnect"
        conn._waiter = None
        pc.close()
        stream.response_complete = True
        stream.closing = True
