"""What happened on one downstream connection or HTTP request: the access log's source.

Every access-log command operator reads a field of ``StreamInfo`` and nothing else, so the
TCP proxy, the HTTP connection manager and the RBAC filters record facts here as they
happen and the formatter stays a pure function (``access_log`` package).
Addresses are ``"ip:port"`` strings as Envoy prints them (``[v6]:port`` for IPv6).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from remora.proxy.transport.connection_info import TlsConnectionInfo

# Envoy's response flag short strings (source/common/stream_info/utility.h). Since the
# flags became an extensible vector, Envoy prints them in the order they were set, not in
# this table's order: a retried refused upstream logs "URX,UF" on HTTP (the router marks
# the retry limit before the local reply records the failure) and "UF,URX" on tcp_proxy.
# Both were observed on Envoy 1.40, so StreamInfo keeps insertion order.
RESPONSE_FLAG_ORDER: tuple[str, ...] = (
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE",
    "DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF",
    "DO", "DR",
)


_new = object.__new__
_wall = time.time
_monotonic = time.monotonic


def format_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class UpstreamAddress(str):
    """The local ``"ip:port"`` of an upstream TLS connection (UPSTREAM_LOCAL_ADDRESS) that
    also carries the connection's TLS facts, ``tls``, for the access log's
    UPSTREAM_PEER_*/LOCAL_*/TLS_* operators (Envoy's upstreamInfo's
    upstreamSslConnection, set with the upstream local address when the connection is
    given to the request). Carried by the address, not in a field of its own: every
    place that gives a request or session its upstream connection sets
    ``upstream_local_address`` already, and a thirtieth StreamInfo attribute would stop
    CPython 3.11 sharing the instance dicts' keys (at most 30 keys, 29 used)."""

    tls: TlsConnectionInfo | None = None


@dataclass
class StreamInfo:
    start_time: float = field(default_factory=time.time)  # wall clock, for START_TIME
    start_monotonic: float = field(default_factory=time.monotonic)
    end_monotonic: float | None = None

    # downstream
    downstream_local_address: str | None = None  # the original destination once restored
    downstream_remote_address: str | None = None
    downstream_direct_remote_address: str | None = None
    requested_server_name: str | None = None  # SNI
    downstream_alpn: str | None = None
    listener_name: str | None = None
    filter_chain_name: str | None = None
    # the downstream TLS connection (None in plain text), shared by the connection's
    # requests: the access log's DOWNSTREAM_PEER_*/LOCAL_*/TLS_* operators read it, and
    # it works each value out when first asked (transport/connection_info.py)
    downstream_tls: TlsConnectionInfo | None = None

    # HTTP request/response (lower-case header names; pseudo headers :method :path
    # :authority :scheme in request_headers). None for plain TCP.
    protocol: str | None = None
    request_headers: dict[str, str] | None = None
    response_headers: dict[str, str] | None = None
    response_trailers: dict[str, str] | None = None
    response_code: int | None = None
    response_code_details: str | None = None
    route_name: str | None = None

    # outcome
    response_flags: dict[str, None] = field(default_factory=dict)  # ordered set: set order
    connection_termination_details: str | None = None
    bytes_received: int = 0
    bytes_sent: int = 0

    # upstream
    upstream_cluster: str | None = None
    upstream_host: str | None = None
    upstream_local_address: str | None = None
    upstream_transport_failure_reason: str | None = None
    upstream_request_attempt_count: int = 0
    # the protocol the upstream request went out with (%UPSTREAM_PROTOCOL%); the HTTP/2
    # pool sets "HTTP/2", None on an HTTP request that reached an upstream means HTTP/1.1
    upstream_protocol: str | None = None

    # per-filter facts (e.g. RBAC's policy decision) for DYNAMIC_METADATA and diagnosis
    dynamic_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def for_request(cls, conn: StreamInfo, protocol: str) -> StreamInfo:
        """A request's StreamInfo on the downstream connection whose facts are CONN: the
        connection's addresses, SNI, ALPN, listener, filter chain and TLS connection (one
        reference), its dynamic metadata (copied: a request's filters add their own),
        PROTOCOL, and the start times. Built
        on every request: the fields are set directly, in the constructor's order (so
        every instance shares one key layout), without its keyword parsing and default
        factories."""
        info = _new(cls)
        info.start_time = _wall()
        info.start_monotonic = _monotonic()
        info.end_monotonic = None
        info.downstream_local_address = conn.downstream_local_address
        info.downstream_remote_address = conn.downstream_remote_address
        info.downstream_direct_remote_address = conn.downstream_direct_remote_address
        info.requested_server_name = conn.requested_server_name
        info.downstream_alpn = conn.downstream_alpn
        info.listener_name = conn.listener_name
        info.filter_chain_name = conn.filter_chain_name
        info.downstream_tls = conn.downstream_tls
        info.protocol = protocol
        info.request_headers = None
        info.response_headers = None
        info.response_trailers = None
        info.response_code = None
        info.response_code_details = None
        info.route_name = None
        info.response_flags = {}
        info.connection_termination_details = None
        info.bytes_received = 0
        info.bytes_sent = 0
        info.upstream_cluster = None
        info.upstream_host = None
        info.upstream_local_address = None
        info.upstream_transport_failure_reason = None
        info.upstream_request_attempt_count = 0
        info.upstream_protocol = None
        metadata = conn.dynamic_metadata
        info.dynamic_metadata = dict(metadata) if metadata else {}
        return info

    def finish(self) -> None:
        if self.end_monotonic is None:
            self.end_monotonic = time.monotonic()

    @property
    def upstream_tls(self) -> TlsConnectionInfo | None:
        """The upstream TLS connection the request or session was given (UpstreamAddress);
        None before one was, and in plain text."""
        return getattr(self.upstream_local_address, "tls", None)

    @property
    def duration_ms(self) -> int | None:
        if self.end_monotonic is None:
            return None
        return int((self.end_monotonic - self.start_monotonic) * 1000)

    def set_flag(self, flag: str) -> None:
        assert flag in RESPONSE_FLAG_ORDER, flag
        self.response_flags.setdefault(flag, None)

    def clear_flag(self, flag: str) -> None:
        self.response_flags.pop(flag, None)

    def flags_string(self) -> str:
        return ",".join(self.response_flags) if self.response_flags else "-"
