"""The server's drain manager: Envoy's Server::DrainManagerImpl, as network filters see it
(``interfaces.DrainDecision``).

Envoy 1.40, observed on loopback (tests/unit/proxy/test_drain_envoy_parity.py):
``POST /drain_listeners`` without ``graceful`` stops the listeners and tells the open
connections nothing (a keep-alive HTTP/1.1 connection goes on answering without
``connection: close``, an h2c connection gets no GOAWAY). ``?graceful`` starts the drain
sequence (DrainManagerImpl::startDrainSequence): from then on ``drainClose()`` is asked as
each response starts (ConnectionManagerImpl::ActiveStream::encodeHeaders) and says yes
always with ``--drain-strategy immediate``, with the probability elapsed/``--drain-time-s``
with ``gradual`` (the default); the listeners keep accepting and stop once the drain time
is over. A yes gives an HTTP/1.1 response ``connection: close``; an HTTP/2 connection
starts its own drain (a GOAWAY with last stream id 2^31-1, then ``drain_timeout`` later the
final GOAWAY). Idle connections are not told: Envoy 1.40's connection manager asks only
when a response starts. ``inboundonly`` limits all this to listeners whose
``traffic_direction`` is INBOUND.
"""

from __future__ import annotations

import random
import time

DRAIN_STRATEGIES = ("gradual", "immediate")


class DrainManager:
    """One per process (each --concurrency worker gets the same signal relayed)."""

    __slots__ = ("drain_time", "inbound_only", "started", "strategy")

    def __init__(self, drain_time: float = 600.0, strategy: str = "gradual") -> None:
        self.drain_time = drain_time  # Envoy's --drain-time-s (default 600)
        self.strategy = strategy  # Envoy's --drain-strategy (default gradual)
        self.started: float | None = None  # monotonic time the sequence started
        self.inbound_only = False

    @property
    def draining(self) -> bool:
        return self.started is not None

    def start(self, inbound_only: bool) -> bool:
        """Start the drain sequence; False when it had started already (Envoy ignores a
        second /drain_listeners?graceful)."""
        if self.started is not None:
            return False
        self.started = time.monotonic()
        self.inbound_only = inbound_only
        return True

    def drain_close(self, inbound: bool) -> bool:
        """DrainManagerImpl::drainClose for a connection of an INBOUND (or other) listener."""
        started = self.started
        if started is None or (self.inbound_only and not inbound):
            return False
        if self.strategy == "immediate":
            return True
        elapsed = time.monotonic() - started
        return elapsed >= self.drain_time or random.random() * self.drain_time < elapsed

    def for_listener(self, inbound: bool) -> ListenerDrain:
        return ListenerDrain(self, inbound)


class ListenerDrain:
    """interfaces.DrainDecision of the connections of one listener."""

    __slots__ = ("inbound", "manager")

    def __init__(self, manager: DrainManager, inbound: bool) -> None:
        self.manager = manager
        self.inbound = inbound

    def drain_close(self) -> bool:
        m = self.manager
        return m.started is not None and m.drain_close(self.inbound)


class NeverDrain:
    """A DrainDecision that never drains (a connection outside any listener: tests)."""

    __slots__ = ()

    def drain_close(self) -> bool:
        return False


NEVER_DRAIN = NeverDrain()
