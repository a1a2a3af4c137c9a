"""The data of a sidecar simulation: the connection going in, the trace coming out.

Shared by ``envoy_sim`` (listener, original destination, filter chain), ``envoy_route``
(network filters and HTTP routes) and ``envoy_upstream`` (cluster, endpoint, TLS, source
address).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from remora.diagnose.envoy.config import JSON
from remora.diagnose.facts import Missing

TCP_PROXY = ("envoy.filters.network.tcp_proxy", "envoy.tcp_proxy")
HCM = ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager")


@dataclass(frozen=True)
class TlsHello:
    sni: str
    alpn: tuple[str, ...] = ()


@dataclass(frozen=True)
class Downstream:
    """A connection as it reaches a sidecar."""

    src_ip: str
    src_port: int
    orig_dst_ip: str
    orig_dst_port: int
    capture: str  # "REDIRECT", "TPROXY"
    arrived_port: int  # the port capture delivered it to (15001 / 15006)
    tls: TlsHello | None = None
    http: bool = True
    authority: str | None = None
    path: str = "/"


@dataclass(frozen=True)
class UpstreamTls:
    mode: str  # "TLS", "plaintext", "unknown"
    sni: str = ""
    alpn: tuple[str, ...] = ()
    how: str = ""


@dataclass
class SidecarTrace:
    role: str
    listener: str | None = None
    handoff: str | None = None
    local_address: str | None = None
    original_dst_how: str = ""
    transport_protocol: str = ""
    server_name: str = ""
    application_protocols: tuple[str, ...] = ()
    chain: str | None = None
    chain_match: str | None = None
    chain_reasons: tuple[str, ...] = ()
    network_filter: str | None = None
    route_config: str | None = None
    virtual_host: str | None = None
    route: str | None = None
    use_remote_address: bool | None = None
    alpn_override: tuple[str, ...] = ()  # set by Istio's istio.alpn HTTP filter
    cluster: str | None = None
    cluster_type: str | None = None
    endpoint: str | None = None
    upstream_tls: UpstreamTls | None = None
    upstream_source: str | None = None
    upstream_source_why: str = ""
    upstream_mark: int | None = None
    failure: str | None = None  # no listener, no filter chain, no route, no endpoint, ...
    failure_detail: str = ""
    notes: list[str] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.failure is None and self.upstream_source is not None


def has_filter(listener: JSON, short: str, type_name: str) -> JSON | None:
    """A listener filter by name (`envoy.filters.listener.X`, legacy `envoy.listener.X`)
    or by its config's type."""
    for f in listener.get("listener_filters", []) or []:
        t = str(typed(f).get("@type", ""))
        if str(f.get("name", "")).endswith(short) or t.endswith(type_name):
            return dict(f)
    return None


def sock(listener: JSON) -> tuple[str, int]:
    sa = (listener.get("address") or {}).get("socket_address") or {}
    return str(sa.get("address", "")), int(sa.get("port_value", 0) or 0)


def socks(listener: JSON) -> list[tuple[str, int]]:
    """The listener's address and its ``additional_addresses`` (Istio's dual stack: the
    other family's wildcard, ``[::]`` beside ``0.0.0.0``)."""
    out = [sock(listener)]
    for extra in listener.get("additional_addresses", []) or []:
        sa = ((extra or {}).get("address") or {}).get("socket_address") or {}
        out.append((str(sa.get("address", "")), int(sa.get("port_value", 0) or 0)))
    return out


def fail(trace: SidecarTrace, name: str, detail: str) -> SidecarTrace:
    trace.failure, trace.failure_detail = name, detail
    return trace


def typed(f: JSON) -> JSON:
    """A filter's config: ``typed_config`` (a TypedStruct's ``value`` under its
    ``type_url``), or the Struct ``config`` block of Envoy's v2 API (Istio 1.6 and before)."""
    tc = f.get("typed_config")
    if isinstance(tc, dict):
        if str(tc.get("@type", "")).endswith("TypedStruct") and isinstance(tc.get("value"), dict):
            return {**tc["value"], "@type": str(tc.get("type_url", ""))}
        return dict(tc)
    conf = f.get("config")
    return dict(conf) if isinstance(conf, dict) else {}
