"""Upstream HTTP/1.1 connection pool.

Envoy's router asks the cluster's load balancer for a host for every request, then for a
connection in that host's pool (ClusterManagerImpl::ThreadLocalClusterManagerImpl::
ClusterEntry::httpConnPoolImpl: chooseHost, then the per-host pool map), so kept-alive
upstream connections never bypass the rotation or the weights. With
``envoy.filters.listener.original_src`` it hashes the downstream source address into the
pool key so that a connection bound to one client's address is never reused for another
client (OriginalSrc's "hash key" in source/extensions/filters/listener/original_src, the
socket option hash). remora's pool is keyed the same way: the cluster, the host the
router's ``Cluster.choose`` picked (for ORIGINAL_DST clusters the downstream's original
destination) and the original_src address when set. Idle connections are taken most-recent
first and must not point at an excluded host (retry ``previous_hosts``). The cluster's HTTP
protocol options bound a connection's life (idle_timeout, max_requests_per_connection,
max_connection_duration).
"""

from __future__ import annotations

import asyncio
import asyncio.protocols  # (mypyc: the Python class PooledConnection's base's module)
import contextlib
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from remora.native import mypyc_attr
from remora.proxy.deferred_write import DeferredOutput, batch_for
from remora.proxy.http.codec import ResponseDecoder
from remora.proxy.http.codec_state import ConnectionState
from remora.proxy.interfaces import ConnectionFacts, HostCounts, Upstream
from remora.proxy.stats import Counter
from remora.proxy.takeover import take_over
from remora.proxy.upstream.connect import TrackedProtocol

PoolKey = tuple[str, str, int, str | None]
MAX_IDLE_PER_KEY = 256


def pool_key(cluster_name: str, host: tuple[str, int], facts: ConnectionFacts) -> PoolKey:
    """The pool of HOST (the load balancer's pick) for FACTS' downstream connection."""
    src = facts.original_src.ip if facts.original_src is not None else None
    return (cluster_name, host[0], host[1], src)


@dataclass(frozen=True)
class PoolLimits:
    """The cluster's ``envoy.extensions.upstreams.http.v3.HttpProtocolOptions``
    common_http_protocol_options as far as an HTTP/1.1 pool uses them."""

    idle_timeout: float = 3600.0  # Envoy's default for upstream connections: 1 h
    max_requests_per_connection: int = 0  # 0: unlimited
    max_connection_duration: float = 0.0  # 0: unlimited


DEFAULT_LIMITS = PoolLimits()


def limits_of(cluster: Any) -> PoolLimits:
    """The core's cluster objects carry the parsed options as ``config.http_protocol_options``
    (remora.proxy.upstream.config); other Cluster implementations get Envoy's defaults."""
    opts = getattr(getattr(cluster, "config", None), "http_protocol_options", None)
    if opts is None:
        return DEFAULT_LIMITS
    idle = getattr(opts, "idle_timeout", None)
    return PoolLimits(3600.0 if idle is None else idle,
                      getattr(opts, "max_requests_per_connection", None) or 0,
                      getattr(opts, "max_connection_duration", None) or 0.0)


class ResponseHandler(Protocol):
    """Who reads an active upstream connection: the router's attempt (a response being
    decoded) or a websocket tunnel."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_eof(self) -> None: ...


# (a Python class when compiled by mypyc: as a native class under asyncio.Protocol with a
# __weakref__ slot its instances' memory was corrupted, a segfault in the GC after a few
# requests; its methods are compiled all the same)
@mypyc_attr(native_class=False)
class PooledConnection(asyncio.Protocol):
    """One upstream HTTP/1.1 connection, and the asyncio Protocol that reads it once
    ``take_over`` switched its transport from the core's StreamReader (as the downstream
    side does in connection.py): every read goes straight to the attached
    ``ResponseHandler`` (no reader task, no future per read). Bytes that arrive while no
    handler is attached are held (a handler attached next reads them first), and while the
    connection sits idle in the pool they close it as a protocol error."""

    __slots__ = ("__weakref__", "_drain_waiters", "_eof", "_max_age", "_max_idle",
                 "_max_requests", "_pending", "_read_paused", "_rx", "_rx_bytes", "_tracked",
                 "created",
                 "decoder", "handler", "host", "host_counts", "idle_since", "key", "limits",
                 "on_stray", "output", "owner", "pool", "requests", "state", "transport",
                 "upstream", "write_paused")

    def __init__(self, key: PoolKey, upstream: Upstream,
                 limits: PoolLimits = DEFAULT_LIMITS, owner: object = None,
                 on_stray: Callable[[], None] | None = None) -> None:
        self.key = key
        self.upstream = upstream
        self.host: str = upstream.host  # fixed for the connection's life
        # the owner cluster's stats of that host (Cluster.host_counts: the same object for
        # the cluster object's life), kept here by the router on the connection's first
        # request it starts without a coroutine
        self.host_counts: HostCounts | None = None
        self.limits = limits
        # the limits as bounds that are never reached when unset (0), for the pool's
        # one-condition checks (``expired`` is the readable form)
        inf = float("inf")
        self._max_idle = limits.idle_timeout if limits.idle_timeout > 0 else inf
        self._max_age = (limits.max_connection_duration if limits.max_connection_duration > 0
                         else inf)
        self._max_requests = (limits.max_requests_per_connection
                              if limits.max_requests_per_connection > 0 else inf)
        self.owner = owner  # the cluster object that opened it (a CDS update replaces it)
        self.created = self.idle_since = time.monotonic()
        self.requests = 0
        # counts a protocol error (upstream_cx_protocol_error) when the upstream sent
        # bytes while the connection was idle
        self.on_stray = on_stray
        self.transport: asyncio.Transport | None = None  # once taken over
        # the request bytes, written at the end of the loop turn (deferred_write.py)
        self.output: DeferredOutput | None = None
        # where the request/response cycle on it is (codec_state.py); the router moves
        # the CLIENT side, the response decoder the SERVER side, and only a connection
        # whose both sides are DONE starts a next cycle and goes back to the pool
        self.state = ConnectionState()
        self.handler: ResponseHandler | None = None
        # the response decoder, kept from one request to the next (ResponseDecoder.reset)
        self.decoder: ResponseDecoder | None = None
        self.pool: ConnectionPool | None = None  # while idle in that pool
        self.write_paused = False
        self._tracked: TrackedProtocol | None = None
        self._pending = b""  # read while no handler was attached
        self._eof = False
        # received bytes: counted as they come into the cluster's
        # upstream_cx_rx_bytes_total once ``take_over`` was given its handle, else added
        # to the core's count when the connection ends
        self._rx: Counter | None = None
        self._rx_bytes = 0
        self._read_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []

    def take_over(self, tx: Counter | None = None, rx: Counter | None = None) -> None:
        """Read the transport with this protocol from now on; what the StreamReader
        already buffered (``_buffer``/``_eof``: CPython's asyncio and uvloop alike) is
        kept for the first handler."""
        reader = self.upstream.reader
        transport = cast(asyncio.Transport, self.upstream.writer.transport)
        old = transport.get_protocol()
        self._tracked = old if isinstance(old, TrackedProtocol) else None
        buffered, self._eof = take_over(reader, transport, self)
        if buffered:
            self._pending = buffered
        self.transport = transport
        # TX, RX: the cluster's upstream_cx_{tx,rx}_bytes_total, counted as bytes move
        self._rx = rx
        self.output = DeferredOutput(transport, batch_for(asyncio.get_running_loop()), tx)

    # -- asyncio.Protocol ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        rx = self._rx
        if rx is not None:
            rx.pending += len(data)  # Counter.inc without the call
        else:
            self._rx_bytes += len(data)
        h = self.handler
        if h is not None:
            h.upstream_data(data)
            return
        pool = self.pool
        if pool is not None:
            pool._stray(self)  # idle in the pool: no request asked for these bytes
            return
        self._pending += data

    def eof_received(self) -> bool | None:
        self._eof = True
        h = self.handler
        if h is not None:
            h.upstream_eof()
        return None  # close: an HTTP/1 upstream's FIN ends the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        h = self.handler
        if h is not None:
            h.upstream_eof()
        else:
            pool = self.pool
            if pool is not None:
                # closed while idle (the upstream's idle timeout, its pod gone): out of
                # the pool now, not when its key is next asked for -- since the host is
                # picked per request, the key of a host that left the cluster never is
                pool._forget(self)
        self._wake_writers()
        tracked = self._tracked
        if tracked is not None:  # the core's accounting: cx_active, rx bytes
            self._tracked = None
            tracked.rx_bytes += self._rx_bytes
            tracked.connection_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self._wake_writers()

    def _wake_writers(self) -> None:
        self.write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # -- the router's and the tunnel's side ---------------------------------------------
    def attach(self, handler: ResponseHandler) -> None:
        """HANDLER reads from now on, first what was held, then the end if it came."""
        self.handler = handler
        pending = self._pending
        if pending:
            self._pending = b""
            handler.upstream_data(pending)
        if self._eof and self.handler is handler:
            handler.upstream_eof()

    def write(self, data: bytes) -> None:
        out = self.output
        if out is not None:
            out.write(data)
        else:
            self.upstream.writer.write(data)

    def congested(self, limit: int) -> bool:
        return self.upstream.writer.transport.get_write_buffer_size() > limit

    async def drain(self) -> None:
        """Until the transport is below its low-water mark (or closed)."""
        if self.write_paused and not self._eof:
            fut = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(fut)
            await fut

    def pause_reading(self) -> None:
        t = self.transport
        if t is not None and not self._read_paused:
            self._read_paused = True
            with contextlib.suppress(Exception):
                t.pause_reading()

    def resume_reading(self) -> None:
        t = self.transport
        if t is not None and self._read_paused:
            self._read_paused = False
            with contextlib.suppress(Exception):
                t.resume_reading()

    # -- the pool's side ----------------------------------------------------------------
    def expired(self, now: float) -> bool:
        # the limits as their bounds (never reached when unset), so ``retire`` expires it
        return (now - self.idle_since >= self._max_idle or now - self.created >= self._max_age
                or self.requests >= self._max_requests)

    def close_expired(self, now: float) -> None:
        """Close it for the limit it reached, counted as Envoy counts it on the owner
        cluster (upstream_cx_max_requests, _max_duration_reached, _idle_timeout). The
        pool finds an idle connection past its idle_timeout when it next looks at the
        pool (Envoy's timer closes it at the time: the count comes later here)."""
        if self.requests >= self._max_requests:
            reason = "upstream_cx_max_requests"
        elif now - self.created >= self._max_age and self._max_age > 0:
            reason = "upstream_cx_max_duration_reached"
        elif now - self.idle_since >= self._max_idle:
            reason = "upstream_cx_idle_timeout"
        else:
            reason = ""
        stats = getattr(self.owner, "stats", None)
        prefix = getattr(self.owner, "prefix", None)
        if reason and stats is not None and isinstance(prefix, str):
            stats.inc(prefix + reason)
        self.close()

    def retire(self) -> None:
        """Close this connection when its response ends instead of keeping it: its host
        left the cluster (ConnectionPool.drop_hosts; Envoy drains a removed host's pools,
        letting requests in flight finish). Its age bound becomes 0, so the pool's
        checks (acquire's and release's usual-case conditions, ``expired``) all refuse it,
        at no cost to any other connection."""
        self._max_age = 0.0

    def usable(self) -> bool:
        if self._eof:
            return False
        t = self.transport
        if t is not None:  # taken over: the StreamReader sees nothing any more
            return not t.is_closing()
        up = self.upstream
        return not up.writer.transport.is_closing() and not up.reader.at_eof()

    def stray_bytes(self) -> bool:
        """The upstream sent something that no request asked for: held by this protocol,
        or still in the StreamReader's buffer before a take-over."""
        if self._pending:
            return True
        return self.transport is None and bool(getattr(self.upstream.reader, "_buffer", b""))

    def stray(self) -> None:
        """Bytes arrived while idle: close, and count it as Envoy does."""
        if self.on_stray is not None:
            cb, self.on_stray = self.on_stray, None
            cb()
        self.close()

    def close(self) -> None:
        self.handler = None
        self.pool = None
        with contextlib.suppress(Exception):
            if self.output is not None:
                self.output.flush()
            self.upstream.writer.close()


class ConnectionPool:
    def __init__(self) -> None:
        self._idle: dict[PoolKey, list[PooledConnection]] = {}
        # every connection opened for this pool, idle or carrying a request (track), so
        # drop_hosts reaches the busy ones too
        self._all: weakref.WeakSet[PooledConnection] = weakref.WeakSet()

    def track(self, conn: PooledConnection) -> None:
        """CONN, just opened (by the router), belongs to this pool."""
        self._all.add(conn)

    def acquire(self, key: PoolKey, exclude: frozenset[str], owner: object = None,
                now: float | None = None) -> PooledConnection | None:
        """An idle connection for KEY not to an EXCLUDEd host. Connections opened by
        another version of the cluster (OWNER differs: the cluster was updated) are closed,
        as Envoy drains a cluster's pools when it changes. NOW: the caller's
        time.monotonic() when it has one."""
        idle = self._idle.get(key)
        if not idle:
            return None
        if now is None:
            now = time.monotonic()
        conn = idle[-1]
        t = conn.transport
        if (not conn._pending and conn.owner is owner and conn.host not in exclude
                and t is not None and not conn._eof and not t.is_closing()
                and now - conn.idle_since < conn._max_idle
                and now - conn.created < conn._max_age
                and conn.requests < conn._max_requests):
            # the usual case: the most recent idle connection is fine (the checks of the
            # loop below, ``expired`` included, in one condition; take_ready's condition
            # too, inlined: calling take_ready here cost 2 k instructions per request on
            # the HTTP/2 path, callgrind bench_h2_cpu.py, 2026-12-05)
            idle.pop()
            conn.pool = None
            return conn
        for i in range(len(idle) - 1, -1, -1):
            conn = idle[i]
            if conn.stray_bytes():
                del idle[i]
                conn.stray()
                continue
            if not conn.usable() or conn.owner is not owner:
                del idle[i]
                conn.close()
                continue
            if conn.expired(now):
                del idle[i]
                conn.close_expired(now)
                continue
            if conn.host in exclude:
                continue
            del idle[i]
            conn.pool = None
            return conn
        return None

    def take_ready(self, key: PoolKey, owner: object, now: float) -> PooledConnection | None:
        """What ``acquire(key, frozenset(), owner, now)`` returns when it takes the most
        recent idle connection as it is (its usual case); None, with nothing closed or
        changed, when it would do anything else. ``put_back`` undoes it."""
        idle = self._idle.get(key)
        if not idle:
            return None
        conn = idle[-1]
        t = conn.transport
        if (not conn._pending and conn.owner is owner and t is not None
                and not conn._eof and not t.is_closing()
                and now - conn.idle_since < conn._max_idle
                and now - conn.created < conn._max_age
                and conn.requests < conn._max_requests):
            idle.pop()
            conn.pool = None
            return conn
        return None

    def put_back(self, conn: PooledConnection) -> None:
        """CONN, just taken by ``take_ready``, idle again where it was (the most recent)."""
        self._idle.setdefault(conn.key, []).append(conn)
        conn.pool = self

    def release(self, conn: PooledConnection, now: float | None = None) -> None:
        """Keep CONN for reuse. The caller vouches that its last response was complete and
        nothing followed it in what was read; bytes already buffered or arriving later
        close it (never handed to the next request). NOW: the caller's time.monotonic()
        when it has one."""
        requests = conn.requests = conn.requests + 1
        if now is None:
            now = time.monotonic()
        conn.idle_since = now
        t = conn.transport
        if (t is not None and not conn._pending and not conn._eof and not t.is_closing()
                and now - conn.created < conn._max_age and requests < conn._max_requests):
            # the usual case (taken over, nothing stray, open, not expired: the checks
            # below in one condition; idle since now, so not past its idle timeout)
            idle = self._idle.get(conn.key)
            if idle is None:
                idle = self._idle[conn.key] = []
            if len(idle) < MAX_IDLE_PER_KEY:
                idle.append(conn)
                conn.pool = self  # bytes arriving now call _stray
                return
        if conn.stray_bytes():
            conn.stray()
            return
        if not conn.usable():
            conn.close()
            return
        if conn.expired(now):
            conn.close_expired(now)
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_KEY:
            conn.close()
            return
        idle.append(conn)
        conn.pool = self  # bytes arriving now call _stray

    def _stray(self, conn: PooledConnection) -> None:
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)
        conn.stray()

    def _forget(self, conn: PooledConnection) -> None:
        """CONN, idle here, was closed: drop it, and its key's list once empty."""
        conn.pool = None
        idle = self._idle.get(conn.key)
        if idle is not None:
            if conn in idle:
                idle.remove(conn)
            if not idle:
                del self._idle[conn.key]

    def drop_hosts(self, owner: object, hosts: set[tuple[str, int]]) -> int:
        """Close the idle connections OWNER (a cluster object) keeps to HOSTS, which left
        it (an EDS update), and return how many: Envoy drains a removed host's connection
        pools (ClusterManagerImpl's updateClusterMembership -> drainOrCloseConnPools).
        The host is picked per request, so no request would ask for them again."""
        closed = 0
        for key in [k for k in self._idle if (k[1], k[2]) in hosts]:
            idle = self._idle[key]
            kept = [c for c in idle if c.owner is not owner]
            for conn in idle:
                if conn.owner is owner:
                    conn.close()
                    closed += 1
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]
        # those carrying a request finish it, then close (never back to the pool)
        for conn in list(self._all):
            if conn.owner is owner and (conn.key[1], conn.key[2]) in hosts:
                conn.retire()
        return closed

    def idle_count(self, key: PoolKey | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    def close_all(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


_POOLS: weakref.WeakKeyDictionary[Any, ConnectionPool] = weakref.WeakKeyDictionary()


def pool_for(cluster_manager: Any) -> ConnectionPool:
    """One pool per cluster manager, shared by every connection manager that uses it (as
    Envoy's pools are shared by all listeners of a worker)."""
    try:
        pool = _POOLS.get(cluster_manager)
        if pool is None:
            pool = _POOLS[cluster_manager] = ConnectionPool()
        return pool
    except TypeError:  # not weak-referenceable: one pool per caller
        return ConnectionPool()


def drop_removed_hosts(cluster_manager: object, owner: object,
                       hosts: set[tuple[str, int]]) -> None:
    """HOSTS left cluster OWNER (an EDS update): its HTTP/1.1 and HTTP/2 connections to
    them are drained (ConnectionPool.drop_hosts, H2Pool.drop_hosts)."""
    try:
        pool = _POOLS.get(cluster_manager)
    except TypeError:  # not weakly referenceable: no pool was made for it
        pool = None
    if pool is not None:
        pool.drop_hosts(owner, hosts)
    # the HTTP/2 stack is imported by the first request that needs it
    # (proxy/http2/codec_choice.py says why): until then there is no HTTP/2 pool to drain
    h2 = sys.modules.get("remora.proxy.http2.upstream")
    if h2 is not None:
        h2.drop_removed_hosts(cluster_manager, owner, hosts)
