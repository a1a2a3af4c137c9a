"""Listener filters: run on an accepted socket before a filter chain is chosen.

They only *peek* (``recv(MSG_PEEK)`` after waiting for readability), so the filter chain's
network filters still read every byte the client sent. Each filter fills
``ConnectionFacts`` (original destination, SNI, ALPN, original_src) for the filter chain
match. One module per filter, registered under its Envoy name.
https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/listener_filters
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol

from remora.proxy.interfaces import ConnectionFacts

PEEK_MAX = 64 * 1024  # Envoy's listener filter buffer is bounded the same way


class AcceptedSocket:
    """What a listener filter sees: the raw accepted socket and the facts so far."""

    __slots__ = ("_eof", "facts", "sock")

    def __init__(self, sock: socket.socket, facts: ConnectionFacts) -> None:
        self.sock = sock
        self.facts = facts
        self._eof = False

    async def peek(self, have: int = 0) -> bytes:
        """Wait until more than HAVE bytes are buffered (or the peer closed) and return all
        buffered bytes without consuming them. Returns what is there at EOF."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = self.sock.recv(PEEK_MAX, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                data = None
            except ConnectionError:
                self._eof = True
                return b""
            if data is not None:
                if len(data) > have or len(data) >= PEEK_MAX:
                    return data
                if data == b"" or self._eof:
                    self._eof = True
                    return data
                # Partial data is still "readable": poll gently instead of spinning.
                await asyncio.sleep(0.002)
                continue
            fut: asyncio.Future[None] = loop.create_future()
            fd = self.sock.fileno()
            loop.add_reader(fd, _wake, fut)
            try:
                await fut
            finally:
                loop.remove_reader(fd)

    @property
    def eof(self) -> bool:
        return self._eof


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ListenerFilter(Protocol):
    async def on_accept(self, conn: AcceptedSocket) -> bool:
        """Inspect CONN; False closes the connection (Envoy's listener filter reject)."""
        ...
