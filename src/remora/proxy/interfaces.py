"""The contract between the proxy's core and its filters.

The core (listeners, listener filters, clusters, upstream connect, admin) hands each
accepted connection, once its filter chain is chosen, to the chain's network filters; the
terminal one (``tcp_proxy`` or ``http_connection_manager``) owns the connection from then
on and opens upstream connections through the ``ClusterManager``. These Protocols are what
each side may rely on; the concrete classes live in the core modules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

from remora.proxy.stream_info import StreamInfo

if TYPE_CHECKING:
    from remora.proxy.transport.cert_details import TlsPeer
    from remora.proxy.upstream.auto_host import TlsOverride

# A config value as parsed from Envoy's JSON/YAML (what a ``Fields`` reader wraps).
JsonValue: TypeAlias = (
    "str | int | float | bool | list[JsonValue] | dict[str, JsonValue] | None")


@dataclass(frozen=True)
class OriginalSrc:
    """Set by ``envoy.filters.listener.original_src``: upstream connections for this
    downstream bind to the downstream's IP (IP_TRANSPARENT) and carry SO_MARK ``mark``."""

    ip: str
    mark: int
    bind_port: bool = False
    port: int = 0


@dataclass
class ConnectionFacts:
    """What listener filters learned about a downstream connection; the filter chain
    match reads these (Envoy's FilterChainMatch inputs)."""

    local_ip: str  # the original destination once original_dst ran
    local_port: int
    remote_ip: str
    remote_port: int
    direct_remote_ip: str
    server_name: str | None = None  # SNI from tls_inspector
    transport_protocol: str = "raw_buffer"  # "tls" once tls_inspector saw a ClientHello
    application_protocols: tuple[str, ...] = ()  # ALPN (tls) or "http/1.1"/"h2c" (http_inspector)
    original_src: OriginalSrc | None = None
    restored_local_address: bool = False  # original_dst changed the local address
    # Set once a tls transport socket completed the handshake (proxy/transport/tls.py);
    # RBAC's ``authenticated`` reads them. The subject is RFC 2253 ("" without a peer
    # certificate), as Envoy's subjectPeerCertificate.
    tls_established: bool = False
    peer_uri_sans: tuple[str, ...] = ()
    peer_dns_sans: tuple[str, ...] = ()
    peer_subject: str = ""
    # the peer's certificate when it presented one: x-forwarded-client-cert (http/xfcc.py)
    tls_peer: TlsPeer | None = None


class DrainDecision(Protocol):
    """Envoy's Network::DrainDecision: whether a connection should be drained now. A
    network filter asks it where closing costs least (the HTTP connection manager: as
    each response starts); server/drain.py says when it answers yes."""

    def drain_close(self) -> bool: ...

    def add_on_drain(self, cb: Callable[[float, float], None]) -> Callable[[], None]:
        """Envoy's addOnDrainCloseCb: CB is told, once, when a drain that concerns the
        connection starts, the seconds to its 2/3 mark and from there to its end, from
        which it picks when to start draining unasked (server/drain.py start_delay);
        returns what unregisters it."""
        ...


class Downstream(Protocol):
    """An accepted downstream connection, given to the filter chain's network filters.
    ``reader`` sees every byte the client sent (listener filters only peek)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    facts: ConnectionFacts
    info: StreamInfo  # connection-level; HTTP makes one per request from it
    drain: DrainDecision  # its listener's (server/drain.py)
    buffer_limit: int  # its listener's per_connection_buffer_limit_bytes (default 1 MiB)

    def close(self) -> None: ...


class Stats(Protocol):
    def inc(self, name: str, value: int = 1) -> None: ...
    def gauge_add(self, name: str, delta: int) -> None: ...
    def observe(self, name: str, value_ms: float) -> None: ...


@dataclass
class Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    host: str  # "ip:port" of the endpoint
    local_address: str  # "ip:port" the connection is bound to (127.0.0.6:N, client ip, ...)


class UpstreamError(Exception):
    """Connecting upstream failed. ``flag`` is Envoy's response flag (UF, UO, UH, UT...),
    ``reason`` the transport failure reason (for UPSTREAM_TRANSPORT_FAILURE_REASON)."""

    def __init__(self, flag: str, reason: str, host: str | None = None) -> None:
        super().__init__(reason)
        self.flag = flag
        self.reason = reason
        self.host = host


class HostCounts(Protocol):
    """One host's request stats, counted by attribute (Envoy's HostStats rq_*)."""

    rq_total: int
    rq_active: int
    rq_success: int
    rq_error: int


class Cluster(Protocol):
    name: str
    buffer_limit: int  # per_connection_buffer_limit_bytes (default 1 MiB)

    async def connect(
        self, facts: ConnectionFacts, info: StreamInfo, exclude_hosts: frozenset[str] = ...,
        *, host_selection_retry_max_attempts: int = ..., tls_override: TlsOverride | None = ...,
        target: tuple[str, int] | None = ...,
    ) -> Upstream:
        """Connect to TARGET, the host ``choose`` picked, or when it is None choose one as
        ``choose`` does, open a connection bound as the cluster and original_src say,
        record upstream_* fields in INFO, count stats, and enforce max_connections.
        TLS_OVERRIDE: the request's auto_sni server name and auto_san_validation SAN list
        (upstream/auto_host.py), passed only when the cluster asks for them.
        Raises UpstreamError."""
        ...

    def choose(self, facts: ConnectionFacts, exclude: frozenset[str] = ...,
               reselections: int = ...) -> tuple[str, int] | None:
        """The load balancer's host for one request, as Envoy's router asks its cluster
        for a host per request and then for a connection in that host's pool
        (ORIGINAL_DST: the downstream's original destination; STATIC/EDS: the load
        balancer; a pick in EXCLUDE is re-picked up to RESELECTIONS times
        (host_selection_retry_max_attempts, default 1), then used anyway). None: no
        healthy host (the caller answers UH)."""
        ...

    def try_acquire(self, resource: str) -> bool:
        """Circuit breaker: take one of "pending_requests" / "requests" / "retries";
        False (and the overflow counted) when the threshold is reached."""
        ...

    def release(self, resource: str) -> None: ...

    def host_stat(self, host: str, stat: str, delta: int = 1) -> None:
        """Add DELTA to HOST's rq_total / rq_active / rq_success / rq_error / rq_timeout
        (Envoy's per-host stats, shown by /clusters)."""
        ...

    def host_counts(self, host: str) -> HostCounts:
        """HOST's stats as one object, so the router's per-request charges are attribute
        adds (the same stats host_stat changes by name). The same object for the cluster
        object's life: the router keeps it on a pooled connection to HOST."""
        ...


class ClusterManager(Protocol):
    def get(self, name: str) -> Cluster | None: ...


class AccessLogger(Protocol):
    def log(self, info: StreamInfo) -> None: ...


class FactoryContext(Protocol):
    """What a filter factory and its runtime object may use."""

    # read-only for filters, so a context may hold more specific implementations
    @property
    def cluster_manager(self) -> ClusterManager: ...

    @property
    def stats(self) -> Stats: ...

    def access_loggers(self, configs: Sequence[JsonValue], path: str) -> list[AccessLogger]:
        """Build loggers from an ``access_log`` list (listener, tcp_proxy or HCM) found at
        config path PATH."""
        ...


class NetworkFilter(Protocol):
    async def on_connection(self, downstream: Downstream) -> None:
        """Own the connection until it ends; the core closes it afterwards."""
        ...
