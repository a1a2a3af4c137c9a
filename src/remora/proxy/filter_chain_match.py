"""Choosing a listener's filter chain: Envoy's FilterChainMatch precedence, as a pure function.

https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener_components.proto#config-listener-v3-filterchainmatch
"Prune the filter chain set using the above steps. In each step, filter chains which most
specifically match the attributes continue to the next step." The steps, in order:
destination port, destination IP (prefix_ranges), server name, transport protocol,
application protocols, direct source IP, source type, source IP, source port. A chain that
leaves a criterion empty matches anything at that step, but less specifically than any
chain that names a matching value; a chain naming a non-matching value is out. Once a step
has kept only the most specific chains there is no going back: if they all fail a later
step, nothing matches (and ``default_filter_chain`` applies), exactly as in Envoy's
FilterChainManagerImpl (source/common/listener_manager/filter_chain_manager_impl.cc).

``select`` is the proxy's hot path. ``explain`` runs the same steps over the same ranks and
also returns what each step kept; ``remora explain`` (diagnose/envoy_match.py) turns that
into its "matched on" words, so the two can never disagree.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.interfaces import ConnectionFacts

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SOURCE_TYPES = ("ANY", "SAME_IP_OR_LOOPBACK", "EXTERNAL")


@dataclass(frozen=True)
class FilterChainMatch:
    destination_port: int | None = None
    prefix_ranges: tuple[Network, ...] = ()
    server_names: tuple[str, ...] = ()
    transport_protocol: str = ""
    application_protocols: tuple[str, ...] = ()
    direct_source_prefix_ranges: tuple[Network, ...] = ()
    source_type: str = "ANY"
    source_prefix_ranges: tuple[Network, ...] = ()
    source_ports: tuple[int, ...] = ()


def _cidrs(f: Fields, name: str) -> tuple[Network, ...]:
    out = []
    for cidr in f.each(name, "CidrRange"):
        prefix = cidr.string("address_prefix", required=True)
        length = cidr.integer("prefix_len", 0)
        cidr.done()
        try:
            out.append(ipaddress.ip_network(f"{prefix}/{length}", strict=False))
        except ValueError as exc:
            raise ConfigError(cidr.path, f"invalid CIDR range {prefix}/{length}: {exc}") from exc
    return tuple(out)


def parse_match(f: Fields | None) -> FilterChainMatch:
    if f is None:
        return FilterChainMatch()
    # Envoy reads an unset destination_port as 0 and keys its catch-all on port 0
    # (PROTOBUF_GET_WRAPPED_OR_DEFAULT(filter_chain_match, destination_port, 0)): port 0
    # is "any port", not a port no connection can have.
    match = FilterChainMatch(
        destination_port=f.integer("destination_port") or None,
        prefix_ranges=_cidrs(f, "prefix_ranges"),
        server_names=tuple(f.items("server_names")),
        transport_protocol=f.string("transport_protocol", ""),
        application_protocols=tuple(f.items("application_protocols")),
        direct_source_prefix_ranges=_cidrs(f, "direct_source_prefix_ranges"),
        source_type=f.enum("source_type", SOURCE_TYPES, "ANY"),
        source_prefix_ranges=_cidrs(f, "source_prefix_ranges"),
        source_ports=tuple(f.items("source_ports")),
    )
    f.done()
    return match


class HasMatch(Protocol):
    @property
    def match(self) -> FilterChainMatch: ...


T = TypeVar("T", bound=HasMatch)

# A step scores a chain for a connection: None = the chain is out, higher = more specific,
# 0 = the chain leaves the criterion empty (wildcard). ``remora explain`` words the kept
# rank (diagnose/envoy_match.py), so its meaning is part of the contract: prefix ranges
# score prefix length + 1; server_names 1 << 16 for the exact name, else the length of the
# wildcard ("*.example.com" = 13); application_protocols len(offered) - index of the
# protocol matched; every other step 1.
Step = Callable[[FilterChainMatch, ConnectionFacts], int | None]


def _ip_rank(ranges: tuple[Network, ...], ip: str) -> int | None:
    if not ranges:
        return 0
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    best = None
    for net in ranges:
        if addr.version == net.version and addr in net:
            rank = net.prefixlen + 1
            best = rank if best is None or rank > best else best
    return best


def _server_name_rank(m: FilterChainMatch, facts: ConnectionFacts) -> int | None:
    if not m.server_names:
        return 0
    sni = (facts.server_name or "").lower()
    if not sni:
        return None
    best = None
    for name in m.server_names:
        name = name.lower()
        if name == sni:
            return 1 << 16  # an exact name beats every wildcard
        if name.startswith("*.") and sni.endswith(name[1:]) and len(sni) > len(name) - 1:
            # *.b.example.com is tried before *.example.com: a longer suffix wins
            rank = len(name)
            best = rank if best is None or rank > best else best
    return best


def _alpn_rank(m: FilterChainMatch, facts: ConnectionFacts) -> int | None:
    if not m.application_protocols:
        return 0
    # Envoy walks the connection's protocols in order and takes the first one any chain
    # names; chains naming it survive.
    protos = facts.application_protocols
    for i, proto in enumerate(protos):
        if proto in m.application_protocols:
            return len(protos) - i
    return None


def is_same_ip_or_loopback(facts: ConnectionFacts) -> bool:
    # Envoy's Network::Utility::isSameIpOrLoopback
    try:
        remote = ipaddress.ip_address(facts.remote_ip.split("%", 1)[0])
    except ValueError:
        return False
    return remote.is_loopback or facts.remote_ip == facts.local_ip


def _source_type_rank(m: FilterChainMatch, facts: ConnectionFacts) -> int | None:
    if m.source_type == "ANY":
        return 0
    local = is_same_ip_or_loopback(facts)
    if m.source_type == "SAME_IP_OR_LOOPBACK":
        return 1 if local else None
    return None if local else 1


STEPS: tuple[tuple[str, Step], ...] = (
    ("destination_port", lambda m, f: 0 if m.destination_port is None
        else (1 if m.destination_port == f.local_port else None)),
    ("prefix_ranges", lambda m, f: _ip_rank(m.prefix_ranges, f.local_ip)),
    ("server_names", _server_name_rank),
    ("transport_protocol", lambda m, f: 0 if not m.transport_protocol
        else (1 if m.transport_protocol == f.transport_protocol else None)),
    ("application_protocols", _alpn_rank),
    ("direct_source_prefix_ranges", lambda m, f: _ip_rank(m.direct_source_prefix_ranges,
                                                          f.direct_remote_ip)),
    ("source_type", _source_type_rank),
    ("source_prefix_ranges", lambda m, f: _ip_rank(m.source_prefix_ranges, f.remote_ip)),
    ("source_ports", lambda m, f: 0 if not m.source_ports
        else (1 if f.remote_port in m.source_ports else None)),
)


def select(chains: Sequence[T], facts: ConnectionFacts, default: T | None = None) -> T | None:
    """The filter chain for a connection, or DEFAULT when none matches."""
    # The pruning is written out here, not shared with ``explain`` through a helper: a
    # call per step took this per-connection loop from 2.7 to 5.3 us for Istio's
    # virtualInbound chains (scripts/bench_filter_chain_match.py prints the figures).
    # test_explain_agrees_with_select keeps the two in step.
    candidates = list(chains)
    for _name, step in STEPS:
        if not candidates:
            break
        best: int | None = None
        kept: list[T] = []
        for chain in candidates:
            rank = step(chain.match, facts)
            if rank is None:
                continue
            if best is None or rank > best:
                best, kept = rank, [chain]
            elif rank == best:
                kept.append(chain)
        candidates = kept
    return candidates[0] if candidates else default


@dataclass(frozen=True)
class Stage:
    """What one step of ``explain`` did."""

    criterion: str  # the FilterChainMatch field the step reads (STEPS' name)
    configured: bool  # some chain still in the running named a value for it (rank != 0)
    best: int | None  # the kept chains' rank: 0 = they leave it empty, None = none kept
    kept: tuple[int, ...]  # indices into the matches still in the running after the step


def explain(matches: Sequence[FilterChainMatch], facts: ConnectionFacts) -> tuple[Stage, ...]:
    """``select``'s steps over ``matches``, each with what it kept; the steps stop after
    the one that keeps nothing. The chosen chain is ``stages[-1].kept[0]`` when that is
    non-empty, the one ``select`` picks. Computed only when asked (``remora explain``)."""
    candidates = list(range(len(matches)))
    stages: list[Stage] = []
    for name, step in STEPS:
        if not candidates:
            break
        scored = [(i, step(matches[i], facts)) for i in candidates]
        ranks = [rank for _, rank in scored if rank is not None]
        best = max(ranks) if ranks else None
        candidates = [i for i, rank in scored if rank is not None and rank == best]
        stages.append(Stage(name, any(rank != 0 for _, rank in scored), best,
                            tuple(candidates)))
    return tuple(stages)


def check_unique(matches: Sequence[FilterChainMatch], path: str) -> None:
    """Envoy rejects a listener where two chains can match the same connection
    ("multiple filter chains with the same matching rules are defined")."""
    seen: dict[tuple[object, ...], int] = {}
    for index, m in enumerate(matches):
        for key in itertools.product(
            [m.destination_port], m.prefix_ranges or [None], m.server_names or [None],
            [m.transport_protocol], m.application_protocols or [None],
            m.direct_source_prefix_ranges or [None], [m.source_type],
            m.source_prefix_ranges or [None], m.source_ports or [None],
        ):
            other = seen.setdefault(key, index)
            if other != index:
                raise ConfigError(
                    f"{path}[{index}].filter_chain_match",
                    f"multiple filter chains with the same matching rules are defined "
                    f"(same as filter_chains[{other}])",
                    "make the filter_chain_match of each chain differ",
                )
