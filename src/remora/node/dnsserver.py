"""Cluster DNS, the sockets: UDP and TCP on port 53 at the DNS address of each node.

The sockets are created inside the node's namespace (where the DNS address sits on lo)
and served by the daemon's asyncio loop; every query is answered from the current Zone,
which the reconciler replaces whenever services or pods change.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import cast

from remora import netns
from remora.node.dns import Zone

PORT = 53


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, zone: Callable[[], Zone]) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.zone().answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DnsServer:
    def __init__(self, zone: Callable[[], Zone]) -> None:
        self.zone = zone
        self._closers: list[Callable[[], None]] = []

    async def listen(self, netns_name: str, address: str, port: int = PORT) -> None:
        loop = asyncio.get_running_loop()
        path = netns.resolve(netns_name)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        udp = netns.socket_in(path, family, socket.SOCK_DGRAM)
        udp.bind((address, port))
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self.zone), sock=udp)
        self._closers.append(transport.close)
        tcp = netns.socket_in(path, family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((address, port))
        server = await asyncio.start_server(self._tcp, sock=tcp)
        self._closers.append(server.close)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # RFC 1035 4.2.2: each message is preceded by a two-byte length.
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self.zone().answer(await reader.readexactly(length))
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        writer.close()

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()
