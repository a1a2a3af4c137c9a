"""``envoy.config.listener.v3.Listener``: parsed once, checked whole, then served.

Parsing builds the runtime objects (listener filters, network filters, access loggers)
through the registry, so a listener that parses is one that can serve; any error names
its field path and nothing of the listener is used.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener.proto
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from remora.proxy import registry
from remora.proxy.config.address import Address, parse_address
from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.filter_chain_match import FilterChainMatch, check_unique, parse_match
from remora.proxy.interfaces import AccessLogger, NetworkFilter
from remora.proxy.transport.tls import TlsTransport, parse_transport_socket

if TYPE_CHECKING:
    from remora.proxy.server.drain import ChainDrain

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ORIGINAL_DST = "envoy.filters.listener.original_dst"


@dataclass
class FilterChain:
    name: str
    match: FilterChainMatch
    filters: list[NetworkFilter]
    transport: TlsTransport | None = None  # transport_socket tls; None for raw_buffer
    # transport_socket_connect_timeout in seconds (None: the handshake may take any time)
    transport_connect_timeout: float | None = None
    # its connections' drain decision (server/drain.py ChainDrain), set by the server when
    # the listener is served; an in-place LDS update hands it on to the same chain in the
    # new version (Envoy keeps the FilterChainImpl the update did not change)
    drain: ChainDrain | None = field(default=None, compare=False, repr=False)


@dataclass
class ListenerConfig:
    name: str
    address: Address
    raw: dict[str, Any]
    # Listener.additional_addresses: more sockets for the same listener (Istio's dual
    # stack: 0.0.0.0:15006 plus [::]:15006). Stats and the admin name use ``address``.
    additional_addresses: tuple[Address, ...] = ()
    filter_chains: list[FilterChain] = field(default_factory=list)
    default_filter_chain: FilterChain | None = None
    listener_filters: list[Any] = field(default_factory=list)  # ListenerFilter objects
    listener_filter_names: list[str] = field(default_factory=list)
    listener_filters_timeout: float = 15.0  # Envoy's default; 0 disables it
    continue_on_listener_filters_timeout: bool = False
    use_original_dst: bool = False
    bind_to_port: bool = True
    transparent: bool = False
    freebind: bool = False
    enable_reuse_port: bool | None = None
    traffic_direction: str = "UNSPECIFIED"
    access_loggers: list[AccessLogger] = field(default_factory=list)
    buffer_limit: int = 1 << 20  # per_connection_buffer_limit_bytes default (1 MiB)
    stat_prefix: str | None = None  # listener.<stat_prefix>. instead of listener.<address>.

    @property
    def needs_net_admin(self) -> bool:
        names = self.listener_filter_names
        return self.transparent or "envoy.filters.listener.original_src" in names

    @property
    def addresses(self) -> tuple[Address, ...]:
        """Every address the listener is bound to (or handed connections for)."""
        return (self.address, *self.additional_addresses)

    def chains(self) -> list[tuple[FilterChain, Any]]:
        """Every filter chain (the default one last) with its raw config."""
        raws = self.raw.get("filter_chains") or []
        out = list(zip(self.filter_chains, raws, strict=True))
        if self.default_filter_chain is not None:
            out.append((self.default_filter_chain, self.raw.get("default_filter_chain")))
        return out

    def same_socket(self, other: ListenerConfig) -> bool:
        """Whether OTHER can take over this listener's sockets (an in-place update)."""
        return (self.addresses, self.bind_to_port, self.transparent, self.freebind) == (
            other.addresses, other.bind_to_port, other.transparent, other.freebind)


def _filter_chain(f: Fields, context: Any, default_name: str) -> FilterChain:
    name = f.string("name", default_name)
    match = parse_match(f.fields("filter_chain_match", "FilterChainMatch"))
    f.ignore("metadata")  # only read by tools (istioctl shows it); no data-path effect
    # how long the transport socket (the TLS handshake) may take; unset or 0: no limit,
    # as Envoy (FilterChain.transport_socket_connect_timeout)
    connect_timeout = f.duration("transport_socket_connect_timeout") or None
    transport = f.fields("transport_socket", "TransportSocket")
    filters: list[NetworkFilter] = []
    raw_filters = list(f.each("filters", "Filter"))
    f.done()
    tls = parse_transport_socket(transport, server=True)  # proxy/transport/tls.py
    if not raw_filters:
        raise ConfigError(f.at("filters"), "a filter chain needs at least one network filter")
    for item in raw_filters:
        fname = item.string("name")
        typed = item.fields("typed_config", "typed_config")
        item.done()
        filters.append(registry.instantiate("network", fname, typed, item.at("typed_config"),
                                            context)[1])
    for filt in filters:  # e.g. network RBAC logs a denial with the chain's loggers
        bind = getattr(filt, "bind_chain", None)
        if bind is not None:
            bind(filters)
    return FilterChain(name=name, match=match, filters=filters, transport=tls,
                       transport_connect_timeout=connect_timeout)


def _additional_addresses(f: Fields, primary: Address) -> tuple[Address, ...]:
    """``additional_addresses``: each an AdditionalAddress {address, socket_options};
    like Envoy, a listener's addresses are IP addresses and all different
    (source/common/listener_manager/listener_impl.cc)."""
    out: list[Address] = []
    for item in f.each("additional_addresses", "AdditionalAddress"):
        addr = parse_address(item.fields("address", "Address"), item.at("address"))
        item.done()  # socket_options (per-address overrides) is not implemented
        if addr.pipe is not None or primary.pipe is not None:
            raise ConfigError(item.at("address"), "additional_addresses need IP socket "
                              "addresses on a listener bound to an IP address")
        if any((a.ip, a.port) == (addr.ip, addr.port) for a in (primary, *out)):
            raise ConfigError(item.at("address"), f"duplicate listener address {addr}",
                              "give each address of a listener once")
        out.append(addr)
    return tuple(out)


def parse_listener(raw: Any, path: str, context: Any) -> ListenerConfig:
    f = Fields(raw, path, "Listener")
    name = f.string("name", required=True)
    address = parse_address(f.fields("address", "Address"), f.at("address"))
    cfg = ListenerConfig(name=name, address=address, raw=copy.deepcopy(raw))
    cfg.additional_addresses = _additional_addresses(f, address)
    cfg.use_original_dst = bool(f.boolean("use_original_dst", False))
    cfg.bind_to_port = bool(f.boolean("bind_to_port", True))
    cfg.transparent = bool(f.boolean("transparent", False))
    cfg.freebind = bool(f.boolean("freebind", False))
    cfg.enable_reuse_port = f.boolean("enable_reuse_port")
    cfg.traffic_direction = f.enum("traffic_direction", ("UNSPECIFIED", "INBOUND", "OUTBOUND"),
                                   "UNSPECIFIED")
    cfg.listener_filters_timeout = f.duration("listener_filters_timeout", 15.0)
    cfg.continue_on_listener_filters_timeout = bool(
        f.boolean("continue_on_listener_filters_timeout", False))
    cfg.buffer_limit = f.integer("per_connection_buffer_limit_bytes", 1 << 20) or (1 << 20)
    f.ignore("metadata")  # read by tools (istioctl), no data-path effect
    cfg.stat_prefix = f.string("stat_prefix")
    f.enum("drain_type", ("DEFAULT", "MODIFY_ONLY"), "DEFAULT")
    listener_filters = list(f.each("listener_filters", "ListenerFilter"))
    chains = list(f.each("filter_chains", "FilterChain"))
    default_chain = f.fields("default_filter_chain", "FilterChain")
    access_log = f.items("access_log")
    f.done()

    seen_names: list[str] = []
    for lf in listener_filters:
        lname = lf.string("name")
        typed = lf.fields("typed_config", "typed_config")
        lf.done()
        ext, filt = registry.instantiate("listener", lname, typed, lf.at("typed_config"),
                                         context)
        cfg.listener_filters.append(filt)
        seen_names.append(ext.name)
    if cfg.use_original_dst and ORIGINAL_DST not in seen_names:
        # Envoy adds the original_dst listener filter itself when use_original_dst is set
        # (source/common/listener_manager/listener_impl.cc buildOriginalDstListenerFilter).
        _, implicit = registry.instantiate("listener", ORIGINAL_DST, None,
                                           f.at("use_original_dst"), context)
        cfg.listener_filters.insert(0, implicit)
        seen_names.insert(0, ORIGINAL_DST)
    cfg.listener_filter_names = seen_names

    if hasattr(context, "for_listener"):
        # the filters' listener-scoped stats (listener.<stat_prefix or address>.*)
        context = context.for_listener(
            f"listener.{cfg.stat_prefix or cfg.address.stat_name}.")
    for i, chain in enumerate(chains):
        cfg.filter_chains.append(_filter_chain(chain, context, f"{name}-{i}"))
    check_unique([c.match for c in cfg.filter_chains], f.at("filter_chains"))
    if default_chain is not None:
        cfg.default_filter_chain = _filter_chain(default_chain, context, f"{name}-default")
    if not cfg.filter_chains and cfg.default_filter_chain is None:
        raise ConfigError(f.at("filter_chains"), "a listener needs filter_chains or a "
                                                 "default_filter_chain")
    if context is not None:
        cfg.access_loggers = context.access_loggers(access_log, f.at("access_log"))
    return cfg
