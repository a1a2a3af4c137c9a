"""HTTP/2 connection keepalive (``http2_protocol_options.connection_keepalive``), as Envoy's
codec does it (source/common/http/http2/codec_impl.cc: sendKeepalive, onKeepaliveResponse,
onKeepaliveResponseTimeout), for a downstream or an upstream connection:

- a PING every ``interval`` plus a random jitter of up to ``interval_jitter`` percent of it
  (default 15 %), counted from the last PING ACK (no interval: no PINGs);
- ``timeout`` after a PING without its ACK the connection is closed without flushing
  (stat ``http2.keepalive_timeout``); any frame received meanwhile extends the wait, as
  Envoy's does, so a peer busy sending a large response is not taken for dead.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

PING_DATA = b"rmrkeepa"  # any eight bytes: the ACK echoes them


class Keepalive:
    __slots__ = ("_loop", "_on_timeout", "_send_ping", "_send_timer", "_timeout_timer",
                 "interval", "jitter", "timeout")

    def __init__(self, interval: float, timeout: float, jitter_percent: float,
                 send_ping: Callable[[], None], on_timeout: Callable[[], None]) -> None:
        self.interval = interval
        self.timeout = timeout
        self.jitter = jitter_percent
        self._send_ping = send_ping
        self._on_timeout = on_timeout
        self._loop = asyncio.get_running_loop()
        self._send_timer: asyncio.TimerHandle | None = None
        self._timeout_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.on_ack()  # Envoy schedules the first interval (with jitter) this way

    def on_ack(self) -> None:
        """A PING ACK: the wait is over, the next PING goes out an interval from now."""
        if self._timeout_timer is not None:
            self._timeout_timer.cancel()
            self._timeout_timer = None
        if self.interval > 0:
            if self._send_timer is not None:
                self._send_timer.cancel()
            delay = self.interval + random.random() * self.interval * self.jitter / 100
            self._send_timer = self._loop.call_later(delay, self._send)

    def on_frame(self) -> None:
        """Bytes arrived while a PING waits for its ACK: the peer is alive, wait longer."""
        if self._timeout_timer is not None:
            self._timeout_timer.cancel()
            self._timeout_timer = self._loop.call_later(self.timeout, self._expired)

    @property
    def waiting(self) -> bool:
        return self._timeout_timer is not None

    def _send(self) -> None:
        self._send_timer = None
        self._send_ping()
        if self._timeout_timer is None:
            self._timeout_timer = self._loop.call_later(self.timeout, self._expired)

    def _expired(self) -> None:
        self._timeout_timer = None
        self.stop()
        self._on_timeout()

    def stop(self) -> None:
        for timer in (self._send_timer, self._timeout_timer):
            if timer is not None:
                timer.cancel()
        self._send_timer = self._timeout_timer = None
