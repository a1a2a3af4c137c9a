"""Envoy's filter chain selection as a pure function, with the reason at every stage.

Envoy narrows the chains criterion by criterion, in this order, taking the most specific
value configured at each stage and never backtracking to a less specific one if a later
stage then fails (source/common/listener_manager/filter_chain_manager_impl.cc,
``findFilterChain*``; docs: api-v3/config/listener/v3/listener_components.proto
FilterChainMatch):
1. destination_port  2. prefix_ranges (destination IP, longest prefix)
3. server_names (exact, then the longest ``*.suffix``)  4. transport_protocol
5. application_protocols  6. direct_source_prefix_ranges
7. source_type (LOCAL / EXTERNAL, then ANY)  8. source_prefix_ranges  9. source_ports
If nothing is left, ``default_filter_chain`` is used when configured.

NOTE: the proxy (src/remora/proxy) has its own implementation for live traffic; the two
should be unified into one shared function.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Chain = dict[str, Any]


@dataclass(frozen=True)
class ConnInfo:
    dst_ip: str
    dst_port: int
    src_ip: str
    src_port: int = 40000
    server_name: str = ""
    transport_protocol: str = "raw_buffer"
    application_protocols: tuple[str, ...] = ()
    direct_src_ip: str | None = None


@dataclass(frozen=True)
class ChainChoice:
    index: int | None  # index into filter_chains; None = none matched
    name: str | None
    reasons: tuple[str, ...]
    default_used: bool = False


def _fcm(chain: Chain) -> dict[str, Any]:
    m = chain.get("filter_chain_match") or {}
    return m if isinstance(m, dict) else {}


def _longest_prefix(ip: str, ranges: Sequence[dict[str, Any]]) -> int:
    """Length of the longest range containing ip, -1 if none does."""
    addr = ipaddress.ip_address(ip)
    best = -1
    for r in ranges:
        try:
            net = ipaddress.ip_network(
                f"{r.get('address_prefix')}/{int(r.get('prefix_len', 0) or 0)}", strict=False)
        except ValueError:
            continue
        if addr.version == net.version and addr in net:
            best = max(best, net.prefixlen)
    return best


Stage = tuple[list[tuple[int, Chain]], str]


def _by_prefix(cands: list[tuple[int, Chain]], key: str, ip: str, label: str) -> Stage:
    scored = [(_longest_prefix(ip, _fcm(c).get(key, [])), i, c) for i, c in cands
              if _fcm(c).get(key)]
    best = max((s for s, _, _ in scored), default=-1)
    if best >= 0:
        return [(i, c) for s, i, c in scored if s == best], f"{label} {ip} in a /{best} range"
    rest = [(i, c) for i, c in cands if not _fcm(c).get(key)]
    return rest, f"{label} {ip}: in no range, chains without {key}"


def _by_value(cands: list[tuple[int, Chain]], key: str, values: Sequence[Any],
              label: str, contains: Callable[[Chain, Any], bool]) -> Stage:
    for v in values:
        hit = [(i, c) for i, c in cands if _fcm(c).get(key) and contains(c, v)]
        if hit:
            return hit, f"{label} {v!s}"
    rest = [(i, c) for i, c in cands if not _fcm(c).get(key)]
    shown = "/".join(map(str, values)) or "(none)"
    return rest, f"{label} {shown}: chains without {key}"


def _server_name_candidates(sni: str) -> list[str]:
    if not sni:
        return []
    out = [sni]
    parts = sni.split(".")
    out += ["*." + ".".join(parts[k:]) for k in range(1, len(parts))]
    return out


def select_filter_chain(chains: Sequence[Chain], conn: ConnInfo,
                        default_chain: Chain | None = None) -> ChainChoice:
    """Which of ``chains`` Envoy picks for ``conn``, and why at each stage."""
    cands: list[tuple[int, Chain]] = list(enumerate(chains))
    reasons: list[str] = []
    stages: list[tuple[str, Callable[[list[tuple[int, Chain]]], Stage]]] = [
        ("destination_port", lambda c: _by_value(
            c, "destination_port", [conn.dst_port], "destination_port",
            lambda ch, v: int(_fcm(ch)["destination_port"]) == v)),
        ("prefix_ranges", lambda c: _by_prefix(c, "prefix_ranges", conn.dst_ip, "destination")),
        ("server_names", lambda c: _by_value(
            c, "server_names", _server_name_candidates(conn.server_name), "server name",
            lambda ch, v: v in _fcm(ch)["server_names"])),
        ("transport_protocol", lambda c: _by_value(
            c, "transport_protocol", [conn.transport_protocol], "transport_protocol",
            lambda ch, v: _fcm(ch)["transport_protocol"] == v)),
        ("application_protocols", lambda c: _by_value(
            c, "application_protocols", list(conn.application_protocols),
            "application protocol", lambda ch, v: v in _fcm(ch)["application_protocols"])),
        ("direct_source_prefix_ranges", lambda c: _by_prefix(
            c, "direct_source_prefix_ranges", conn.direct_src_ip or conn.src_ip,
            "direct source")),
        ("source_type", _source_type(conn)),
        ("source_prefix_ranges", lambda c: _by_prefix(c, "source_prefix_ranges", conn.src_ip,
                                                      "source")),
        ("source_ports", lambda c: _by_value(
            c, "source_ports", [conn.src_port], "source port",
            lambda ch, v: v in [int(p) for p in _fcm(ch)["source_ports"]])),
    ]
    for key, stage in stages:
        # A stage no remaining chain configures narrows nothing: say nothing about it.
        relevant = any(_fcm(c).get(key) for _, c in cands)
        cands, why = stage(cands)
        if relevant:
            reasons.append(why)
        if not cands:
            break
    if cands:
        index, chain = cands[0]
        if len(cands) > 1:
            reasons.append(f"{len(cands)} chains match equally; Envoy rejects such a config, "
                           "taking the first")
        return ChainChoice(index, str(chain.get("name", f"#{index}")), tuple(reasons))
    if default_chain is not None:
        reasons.append("no filter chain matched: default_filter_chain")
        return ChainChoice(None, str(default_chain.get("name", "default_filter_chain")),
                           tuple(reasons), default_used=True)
    return ChainChoice(None, None, tuple(reasons))


def _source_type(conn: ConnInfo) -> Callable[[list[tuple[int, Chain]]], Stage]:
    src = ipaddress.ip_address(conn.src_ip)
    local = src.is_loopback or conn.src_ip == conn.dst_ip
    wanted = "SAME_IP_OR_LOOPBACK" if local else "EXTERNAL"

    def stage(cands: list[tuple[int, Chain]]) -> Stage:
        hit = [(i, c) for i, c in cands if _fcm(c).get("source_type") == wanted]
        if hit:
            return hit, f"source_type {wanted}"
        return [(i, c) for i, c in cands
                if _fcm(c).get("source_type", "ANY") == "ANY"], "source_type ANY"

    return stage


def describe_match(chain: Chain) -> str:
    """The chain's filter_chain_match in istioctl's MATCH column words."""
    m = _fcm(chain)
    parts = []
    if m.get("transport_protocol"):
        parts.append(f"Trans: {m['transport_protocol']}")
    if m.get("application_protocols"):
        parts.append("App: " + ",".join(m["application_protocols"]))
    if m.get("server_names"):
        parts.append("SNI: " + ",".join(m["server_names"]))
    addr = ",".join(f"{r.get('address_prefix')}/{r.get('prefix_len', 0)}"
                    for r in m.get("prefix_ranges", [])) or "*"
    parts.append(f"Addr: {addr}:{m['destination_port']}" if m.get("destination_port")
                 else f"Addr: {addr}")
    return "; ".join(parts)
