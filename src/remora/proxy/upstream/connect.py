"""Opening one upstream TCP connection: bind as the cluster and original_src say, connect
with a timeout, and wrap it in streams whose end is reported back (for cx_active).

Bind order follows Envoy: original_src (IP_TRANSPARENT + SO_MARK, bound to the downstream
IP) overrides the cluster's ``upstream_bind_config.source_address``
(source/common/network/connection_impl.cc ClientConnectionImpl: the socket's local address
set by OriginalSrcSocketOption wins over the cluster source address).
Failure reasons read as Envoy writes them ("delayed connect error: Connection refused").
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

from remora.proxy.interfaces import OriginalSrc, Upstream, UpstreamError
from remora.proxy.stream_info import UpstreamAddress, format_address
from remora.proxy.transport.tls import TlsError, TlsTransport
from remora.proxy.transport.tls import connect_upstream as tls_connect
from remora.proxy.upstream.auto_host import TlsOverride

IP_TRANSPARENT = 19  # linux/in.h
IPV6_TRANSPARENT = 75  # linux/in6.h
SO_MARK = getattr(socket, "SO_MARK", 36)


class TrackedProtocol(asyncio.StreamReaderProtocol):
    """A StreamReaderProtocol that tells its owner when the connection is gone and counts
    received bytes (cluster upstream_cx_rx_bytes_total)."""

    def __init__(self, reader: asyncio.StreamReader, on_lost: Callable[[int], None]) -> None:
        super().__init__(reader)
        self._on_lost: Callable[[int], None] | None = on_lost
        # bytes read while this protocol reads; an HTTP codec that takes the transport
        # over (http/pool.py PooledConnection) adds its own before connection_lost
        self.rx_bytes = 0

    def data_received(self, data: bytes) -> None:
        self.rx_bytes += len(data)
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._on_lost is not None:
            cb, self._on_lost = self._on_lost, None
            cb(self.rx_bytes)


def set_keepalive(sock: socket.socket,
                  keepalive: tuple[int | None, int | None, int | None]) -> None:
    """TcpKeepalive (keepalive_time, keepalive_interval, keepalive_probes) on SOCK as
    Envoy's SocketOptionFactory::buildTcpKeepaliveOptions sets them: SO_KEEPALIVE, then
    TCP_KEEPCNT / TCP_KEEPIDLE / TCP_KEEPINTVL for the fields that are set (an unset one
    keeps the kernel's default: net.ipv4.tcp_keepalive_*)."""
    idle, interval, probes = keepalive
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if probes is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)
    if idle is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    if interval is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)


def _strerror(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


async def open_upstream(
    ip: str, port: int, *, timeout: float, source: tuple[str, int] | None,
    original_src: OriginalSrc | None, on_lost: Callable[[int], None], limit: int = 1 << 20,
    keepalive: tuple[int | None, int | None, int | None] | None = None,
    tls: TlsTransport | None = None, tls_override: TlsOverride | None = None,
) -> tuple[Upstream, float]:
    """Connect to IP:PORT; returns the Upstream and the connect time in ms.
    Raises UpstreamError("UF", reason) on failure (reason "" for a connect timeout)."""
    loop = asyncio.get_running_loop()
    v6 = ":" in ip
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    host = format_address(ip, port)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive is not None:
            set_keepalive(sock, keepalive)
        bind_to: tuple[str, int] | None = source
        if original_src is not None and (":" in original_src.ip) == v6:
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            if original_src.mark:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, original_src.mark)
            bind_to = (original_src.ip, original_src.port if original_src.bind_port else 0)
        if bind_to is not None and (":" in bind_to[0]) == v6:
            try:
                sock.bind(bind_to)
            except OSError as exc:
                where = format_address(*bind_to)
                raise UpstreamError("UF", f"failed to bind to {where}: {_strerror(exc)}",
                                    host) from exc
    except OSError as exc:
        sock.close()
        raise UpstreamError("UF", f"immediate connect error: {_strerror(exc)}", host) from exc
    except UpstreamError:
        sock.close()
        raise
    started = time.monotonic()
    try:
        # asyncio.timeout, not wait_for: no extra task per connection
        async with asyncio.timeout(timeout if timeout > 0 else None):
            await loop.sock_connect(sock, (ip, port))
    except TimeoutError as exc:
        sock.close()
        raise UpstreamError("UF", "", host) from exc
    except OSError as exc:
        sock.close()
        raise UpstreamError("UF", f"delayed connect error: {_strerror(exc)}", host) from exc
    except BaseException:
        sock.close()
        raise
    connect_ms = (time.monotonic() - started) * 1000
    local = sock.getsockname()
    reader = asyncio.StreamReader(limit=limit)
    protocol = TrackedProtocol(reader, on_lost)
    try:
        if tls is not None:  # envoy.transport_sockets.tls: handshake, SAN check (UF + reason)
            transport, peer, _alpn = await tls_connect(sock, tls, lambda: protocol,
                                                       tls_override)
            tls_info = peer.connection
        else:
            tls_info = None
            transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
    except TlsError as exc:
        raise UpstreamError("UF", exc.reason, host) from exc
    except OSError as exc:
        sock.close()
        raise UpstreamError("UF", f"delayed connect error: {_strerror(exc)}", host) from exc
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    address = UpstreamAddress(format_address(local[0], local[1]))
    if tls_info is not None:  # the access log's UPSTREAM_* TLS operators read it
        address.tls = tls_info
    return Upstream(reader, writer, host, address), connect_ms


def is_timeout(err: UpstreamError) -> bool:
    return err.flag == "UF" and err.reason == ""

