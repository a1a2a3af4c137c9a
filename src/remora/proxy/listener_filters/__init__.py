"""Listener filters: run on an accepted socket before a filter chain is chosen.

They only *peek* (``recv(MSG_PEEK)`` after waiting for readability), so the filter chain's
network filters still read every byte the client sent. Each filter fills
``ConnectionFacts`` (original destination, SNI, ALPN, original_src) for the filter chain
match. One module per filter, registered under its Envoy name.
https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/listener_filters
"""

from __future__ import annotations

import asyncio
import select
import socket
from typing import Protocol

from remora.proxy.interfaces import ConnectionFacts

PEEK_MAX = 64 * 1024  # Envoy's listener filter buffer is bounded the same way


class AcceptedSocket:
    """What a listener filter sees: the raw accepted socket and the facts so far."""

    __slots__ = ("facts", "peer_closed", "sock")

    def __init__(self, sock: socket.socket, facts: ConnectionFacts) -> None:
        self.sock = sock
        self.facts = facts
        # How the peer ended the connection while the filters peeked: None, "remote_close"
        # (FIN) or "error" (reset) -- the suffix of Envoy's listener stat
        # downstream_listener_filter_{remote_close,error} counted when a filter gives up.
        self.peer_closed: str | None = None

    async def peek(self, have: int = 0) -> bytes:
        """Wait until more than HAVE bytes are buffered (or the peer closed) and return all
        buffered bytes without consuming them. Returns what is there once the peer has
        closed (``eof``), even when that is no more than HAVE."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = self.sock.recv(PEEK_MAX, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                data = None
            except ConnectionError:
                self.peer_closed = "error"
                return b""
            if data is not None:
                if len(data) > have or len(data) >= PEEK_MAX:
                    return data
                if data == b"":
                    self.peer_closed = self.peer_closed or "remote_close"
                    return data
                self.peer_closed = self.peer_closed or self._closed_behind_data()
                if self.peer_closed is not None:
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

    def _closed_behind_data(self) -> str | None:
        """MSG_PEEK returns the buffered bytes and cannot show a FIN queued after them;
        POLLRDHUP can (Envoy watches the same condition: its listener filter buffer
        registers for the Closed file event, EPOLLRDHUP)."""
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN | select.POLLRDHUP)
        events = poller.poll(0)
        mask = events[0][1] if events else 0
        if mask & select.POLLERR:
            return "error"
        if mask & (select.POLLRDHUP | select.POLLHUP):
            return "remote_close"
        return None

    @property
    def eof(self) -> bool:
        return self.peer_closed is not None


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ListenerFilter(Protocol):
    async def on_accept(self, conn: AcceptedSocket) -> bool:
        """Inspect CONN; False closes the connection (Envoy's listener filter reject; a
        peeking filter that met the peer's close undecided returns False too, and the
        listener counts downstream_listener_filter_remote_close/error)."""
        ...
