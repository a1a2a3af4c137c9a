"""The websocket tunnel after a ``101 Switching Protocols`` (``upgrade_configs``
websocket): raw bytes both ways until either side closes.

Envoy reference: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/upgrades
The tunnel's bytes count as body bytes in the access log (BYTES_RECEIVED / BYTES_SENT), and
the upstream connection is never pooled again.
"""

from __future__ import annotations

import asyncio

from remora.proxy.http.codec import ResponseDecoder
from remora.proxy.http.connection import BUFFER_LIMIT, READ_SIZE
from remora.proxy.http.pool import PooledConnection
from remora.proxy.http.stream import ActiveStream


async def tunnel(stream: ActiveStream, pc: PooledConnection, dec: ResponseDecoder) -> None:
    stream.flush()  # the 101 head
    conn, req, info = stream.conn, stream.req, stream.info
    up_w = pc.upstream.writer
    loop = asyncio.get_running_loop()

    def to_upstream(data: bytes) -> None:
        up_w.write(data)
        req.body_bytes += len(data)
        if up_w.transport.get_write_buffer_size() > BUFFER_LIMIT:
            conn.hold_reading_until(up_w.drain())

    if conn.decoder.upgrade_tail:  # sent right behind the Upgrade request
        to_upstream(conn.decoder.upgrade_tail)
    if dec.upgrade_tail:  # sent right behind the 101
        conn.transport.write(dec.upgrade_tail)
        info.bytes_sent += len(dec.upgrade_tail)
    conn.tunnel = to_upstream  # downstream bytes now bypass the HTTP decoder
    conn.resume_reading()

    async def from_upstream() -> None:
        reader = pc.upstream.reader
        while data := await reader.read(READ_SIZE):
            conn.transport.write(data)
            info.bytes_sent += len(data)
            await conn.drain()

    upstream_done = loop.create_task(from_upstream())
    upstream_done.add_done_callback(lambda _t: conn._wake())
    try:
        while not conn.eof and not upstream_done.done():
            conn._waiter = loop.create_future()  # woken by either side's end
            await conn._waiter
    except asyncio.CancelledError:
        if conn.cancel_reason != "dc":
            raise
        conn._take_cancel()
    finally:
        conn._waiter = None
        upstream_done.cancel()
        await asyncio.gather(upstream_done, return_exceptions=True)
        pc.close()
        stream.response_complete = True
        stream.closing = True
