"""One event-loop timer for deadlines that are set far more often than they expire: the
route timeout of every request on a connection. Arming a uvloop timer and cancelling it
per request costs more than the rest of the timeout's work; this timer is moved only when
a new deadline comes before the armed one, and its owner re-arms it for what is left
when it fires early (Envoy arms a timer per stream; the outcome is the same: the stream
is cancelled once its deadline has passed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class DeadlineTimer:
    __slots__ = ("_at", "_handle", "_loop", "_on_fire")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_fire: Callable[[], None]) -> None:
        self._loop = loop
        self._on_fire = on_fire
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    def arm(self, deadline: float) -> None:
        """Fire at DEADLINE (loop time) at the latest; an earlier armed time stays."""
        handle = self._handle
        if handle is None or self._at > deadline:
            if handle is not None:
                handle.cancel()
            self._at = deadline
            self._handle = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._on_fire()
