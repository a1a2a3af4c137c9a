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
final GOAWAY). That decision is asked only when a response starts; HTTP connections are
also told unasked late in the drain window (below). ``inboundonly`` limits all this to
listeners whose ``traffic_direction`` is INBOUND.

LDS updates drain too (``ChainDrain``, one per filter chain of a listener version;
server/runtime.py starts them), as Envoy's ListenerManagerImpl does:

- an in-place update (only ``filter_chains``/``default_filter_chain`` changed:
  inPlaceFilterChainUpdate) drains the old chains the new listener does not have
  (drainFilterChains: diffFilterChain, ``filter_chain.startDraining()``); chains the
  update kept go on untouched;
- any other update of a listener, or its removal (drainListener), drains all of the old
  listener's connections (``localDrainManager().startDrainSequence``; ListenerImpl's
  drainClose is ``local || server``);
- either way the drained connections' ``drainClose()`` follows --drain-strategy from the
  update on, as above: always with ``immediate``, elapsed/--drain-time-s with
  ``gradual``. (Envoy's source has a draining chain answer yes at once --
  PerFilterChainFactoryContextImpl::drainClose is ``is_draining_ || parent's`` -- but
  Envoy 1.40 on loopback ramps an in-place update's old chain under ``gradual`` like a
  drained listener: tests/unit/proxy/test_lds_drain_envoy_parity.py; remora does what
  1.40 does.)
- ``--drain-time-s`` after the update (DrainingFilterChainsManager::startDrainSequence
  with ``server_.options().drainTime()``, resp. the listener's drain manager's timer), the
  workers close the connections still open on them without flushing
  (OwnedActiveStreamListenerBase::removeFilterChain, ~ActiveTcpListener:
  ``connection_->close(NoFlush)``): an idle keep-alive connection, a tcp_proxy
  connection, anything whose drain decision was never asked. Nothing is sent first: an
  HTTP/2 connection still open then gets no last GOAWAY (observed on 1.40, as on SIGTERM).

HTTP connections are also told without a response starting (Envoy's push-based drain,
DrainDecision::addOnDrainCloseCb, which the connection manager registers). Envoy 1.40,
measured on loopback (tests/unit/proxy/test_h2_drain_envoy_parity.py,
test_h1_drain_envoy_parity.py; its debug log says "drain deadline approaching, draining
connection"): every HTTP connection of a draining listener or chain accepted before 2/3 of
--drain-time-s had passed since the drain started -- idle, or with a stream still waiting
on its upstream; HTTP/1.1 or HTTP/2 alike, with either --drain-strategy,
/drain_listeners?graceful and LDS removal alike -- starts its drain sequence at a random
moment between 2/3 of the drain time and the HCM's ``drain_timeout`` before the drain's
end, so that the sequence (``drain_timeout`` long) is over by then. Measured with 12-30
idle connections at a time: --drain-time-s 6 with drain_timeout 0.2/1/1.9 s started
between 4.0 and 5.8/5.0/4.1 s; 8 s with 0.2 s between 5.3 and 7.8 s; 12 s with 3 s between
8 and 9 s. A connection whose drain_timeout is longer than a third of the drain time (6 s
with 2.1, 3 or 5 s) is never told, nor is one accepted after the 2/3 mark (accepted at
4.2 or 4.8 s of 6: never; at 3.9 s: told like the others; measured on HTTP/1.1
connections that had sent nothing yet, which Envoy then closes at once, and on idle h2c
connections). (The drain manager's own callback
delays, spread over the first quarter of the drain or zero in Envoy's source, are not
what decides it.) ``add_on_drain`` is that registration; the callback gets
(``until``, ``left``): the seconds from now to the 2/3 mark and from that mark to the
drain's end, and ``start_delay`` picks the moment (http/connection.py,
http2/downstream.py).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

DRAIN_STRATEGIES = ("gradual", "immediate")
# from when on an HTTP connection is told of a drain unasked, as a fraction of
# --drain-time-s after the drain started (observed on Envoy 1.40, see above)
APPROACH = 2 / 3

# told (until, left): the seconds from now to the drain's 2/3 mark, and from that mark to
# its end (start_delay says what a connection makes of them)
OnDrain = Callable[[float, float], None]


def start_delay(until: float, left: float, drain_timeout: float) -> float | None:
    """Seconds from now after which a connection told (UNTIL, LEFT) of a drain starts its
    drain sequence (Envoy's HCM: "drain deadline approaching"): a random moment from the
    drain's 2/3 mark to DRAIN_TIMEOUT before its end, so the sequence is over by then;
    None when DRAIN_TIMEOUT does not fit in what is left (Envoy 1.40 then never starts it:
    the connection is left to the drain's end, see above)."""
    if drain_timeout > left:
        return None
    return until + random.uniform(0.0, left - drain_timeout)


def _nothing() -> None:
    return None


class DrainManager:
    """One per process (each --concurrency worker gets the same signal relayed)."""

    __slots__ = ("_on_drain", "drain_time", "inbound_only", "started", "strategy")

    def __init__(self, drain_time: float = 600.0, strategy: str = "gradual") -> None:
        self.drain_time = drain_time  # Envoy's --drain-time-s (default 600)
        self.strategy = strategy  # Envoy's --drain-strategy (default gradual)
        self.started: float | None = None  # monotonic time the sequence started
        self.inbound_only = False
        # the connections to tell when the sequence starts: callback -> of an INBOUND
        # listener (addOnDrainCloseCb's registrations)
        self._on_drain: dict[OnDrain, bool] = {}

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
        for cb, inbound in list(self._on_drain.items()):
            if inbound or not inbound_only:
                del self._on_drain[cb]
                self.tell(cb)
        return True

    def tell(self, cb: OnDrain) -> None:
        """Tell CB of this (started) drain: (until, left) as OnDrain says; not at all once
        its 2/3 mark has passed (Envoy 1.40 does not tell a connection accepted after it,
        see above)."""
        started = self.started if self.started is not None else time.monotonic()
        until = started + APPROACH * self.drain_time - time.monotonic()
        if until >= 0:
            cb(until, (1 - APPROACH) * self.drain_time)

    def add_on_drain(self, inbound: bool, cb: OnDrain) -> Callable[[], None]:
        """Tell CB (a connection of an INBOUND or other listener) when the drain starts,
        or now if it has started and concerns it; returns what unregisters it."""
        if self.started is not None and (inbound or not self.inbound_only):
            self.tell(cb)
            return _nothing
        self._on_drain[cb] = inbound

        def off() -> None:
            self._on_drain.pop(cb, None)
        return off

    def drain_close(self, inbound: bool) -> bool:
        """DrainManagerImpl::drainClose for a connection of an INBOUND (or other) listener."""
        started = self.started
        if started is None or (self.inbound_only and not inbound):
            return False
        if self.strategy == "immediate":
            return True
        elapsed = time.monotonic() - started
        return elapsed >= self.drain_time or random.random() * self.drain_time < elapsed

    def for_listener(self, inbound: bool) -> ChainDrain:
        return ChainDrain(self, inbound)


class ChainDrain:
    """interfaces.DrainDecision of the connections of one filter chain of one listener
    version (Envoy's PerFilterChainFactoryContextImpl), and those connections, so the end
    of an LDS drain can close them."""

    __slots__ = ("_on_drain", "connections", "draining", "ended", "inbound", "local",
                 "manager")

    def __init__(self, manager: DrainManager, inbound: bool) -> None:
        self.manager = manager
        self.inbound = inbound
        # an LDS drain of this chain runs: the one attribute the usual path tests on top
        # of the server's drain (drain_close)
        self.draining = False
        self.local: DrainManager | None = None  # the LDS drain's (started at the update)
        self.ended = False  # the drain time is over: its connections were closed
        # the tasks serving its connections (server/listeners.py adds and discards them)
        self.connections: set[asyncio.Task[None]] = set()
        self._on_drain: set[OnDrain] = set()  # to tell when an LDS drain starts

    def drain_close(self) -> bool:
        if self.draining:
            return self._lds_drain_close()
        m = self.manager
        return m.started is not None and m.drain_close(self.inbound)

    def _lds_drain_close(self) -> bool:
        local = self.local
        if local is not None and local.drain_close(self.inbound):
            return True
        m = self.manager
        return m.started is not None and m.drain_close(self.inbound)

    def start_drain(self, local: DrainManager) -> None:
        """An LDS update drains the chain: LOCAL, started at the update (one for all the
        chains it drains), decides from now on, with the server's."""
        if not self.draining:
            self.local = local
            self.draining = True
            told, self._on_drain = self._on_drain, set()
            for cb in told:
                local.tell(cb)

    def add_on_drain(self, cb: OnDrain) -> Callable[[], None]:
        """Envoy's addOnDrainCloseCb: tell CB when the server's drain or an LDS drain of
        this chain starts (at once if one has); returns what unregisters it."""
        if self.draining and self.local is not None:
            self.local.tell(cb)
            return self.manager.add_on_drain(self.inbound, cb)
        self._on_drain.add(cb)
        off_server = self.manager.add_on_drain(self.inbound, cb)

        def off() -> None:
            self._on_drain.discard(cb)
            off_server()
        return off

    def end(self) -> int:
        """The drain time is over: close what is still open (Envoy closes without flushing;
        here each connection's task is cancelled, so its filters end as on shutdown).
        Returns how many were closed."""
        self.ended = True
        tasks, self.connections = self.connections, set()
        for task in tasks:
            task.cancel()
        return len(tasks)


ListenerDrain = ChainDrain  # the drain decision of a listener's connections (tests)


class NeverDrain:
    """A DrainDecision that never drains (a connection outside any listener: tests)."""

    __slots__ = ()

    def drain_close(self) -> bool:
        return False

    def add_on_drain(self, cb: OnDrain) -> Callable[[], None]:
        return _nothing


NEVER_DRAIN = NeverDrain()
