"""Envoy's filter chain selection for ``remora explain``, with the reason at every stage.

The matching itself is the proxy's (remora.proxy.filter_chain_match): Envoy narrows the
chains criterion by criterion, in this order, taking the most specific value configured at
each stage and never backtracking to a less specific one if a later stage then fails
(source/common/listener_manager/filter_chain_manager_impl.cc, ``findFilterChain*``; docs:
api-v3/config/listener/v3/listener_components.proto FilterChainMatch):
1. destination_port  2. prefix_ranges (destination IP, longest prefix)
3. server_names (exact, then the longest ``*.suffix``)  4. transport_protocol
5. application_protocols  6. direct_source_prefix_ranges
7. source_type (LOCAL / EXTERNAL, then ANY)  8. source_prefix_ranges  9. source_ports
If nothing is left, ``default_filter_chain`` is used when configured.

This module reads each chain's ``filter_chain_match`` from the config dump with the proxy's
own parser, runs the proxy's ``explain`` and words each stage it reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from remora.diagnose.proxy_config.listeners import describe_chain_match
from remora.errors import RemoraError
from remora.proxy.config.strict import ConfigError, Fields, snake
from remora.proxy.filter_chain_match import (
    FilterChainMatch,
    Stage,
    explain,
    is_same_ip_or_loopback,
    parse_match,
)
from remora.proxy.interfaces import ConnectionFacts

Chain = dict[str, Any]
_MATCH_FIELDS = frozenset(f.name for f in dataclasses.fields(FilterChainMatch))


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

    def facts(self) -> ConnectionFacts:
        """The proxy's view of this connection (what its listener filters would learn)."""
        return ConnectionFacts(
            self.dst_ip, self.dst_port, self.src_ip, self.src_port,
            self.direct_src_ip or self.src_ip, server_name=self.server_name or None,
            transport_protocol=self.transport_protocol,
            application_protocols=self.application_protocols)


@dataclass(frozen=True)
class ChainChoice:
    index: int | None  # index into filter_chains; None = none matched
    name: str | None
    reasons: tuple[str, ...]
    default_used: bool = False


def _fcm(chain: Chain) -> dict[str, Any]:
    m = chain.get("filter_chain_match") or {}
    return m if isinstance(m, dict) else {}


def chain_match(chain: Chain, index: int) -> FilterChainMatch:
    """A chain's filter_chain_match as the proxy parses it. Keys may be snake_case or
    camelCase (istioctl); fields the proxy does not know are left out, as before, since
    a partial excerpt is still worth explaining. A value Envoy itself would reject (a bad
    CIDR, a port that is not a number) is named."""
    path = f"filter_chains[{index}].filter_chain_match"
    known = {k: v for k, v in _fcm(chain).items() if snake(k) in _MATCH_FIELDS}
    try:
        return parse_match(Fields(known, path, "FilterChainMatch"))
    except ConfigError as exc:
        raise RemoraError(f"chain {chain.get('name', f'#{index}')}: {exc.problem}",
                          exc.fix or "correct the filter_chain_match in the given config "
                          "(Envoy rejects it too)") from exc


def _server_name_candidates(sni: str) -> list[str]:
    if not sni:
        return []
    out = [sni]
    parts = sni.split(".")
    out += ["*." + ".".join(parts[k:]) for k in range(1, len(parts))]
    return out


def _prefix_words(label: str, key: str, ip: str) -> Callable[[int], str]:
    return lambda best: (f"{label} {ip} in a /{best - 1} range" if best > 0
                         else f"{label} {ip}: in no range, chains without {key}")


def _value_words(label: str, key: str, hit: Callable[[int], str],
                 tried: list[str]) -> Callable[[int], str]:
    shown = "/".join(tried) or "(none)"
    return lambda best: (f"{label} {hit(best)}" if best > 0
                         else f"{label} {shown}: chains without {key}")


def _server_name_hit(sni: str) -> Callable[[int], str]:
    # the proxy ranks the exact name 1 << 16 and a wildcard by its length ("*.b.c" = 5);
    # the ranks are documented at filter_chain_match.Step
    return lambda best: sni if best >= 1 << 16 else "*" + sni[len(sni) - (best - 1):]


def _stage_words(conn: ConnInfo) -> dict[str, Callable[[int], str]]:
    """For each criterion: the reason, given the rank of the chains the stage kept
    (0 = the chains without the criterion were kept)."""
    protos = list(conn.application_protocols)
    wanted = "SAME_IP_OR_LOOPBACK" if is_same_ip_or_loopback(conn.facts()) else "EXTERNAL"
    return {
        "destination_port": _value_words("destination_port", "destination_port",
                                          lambda _: str(conn.dst_port), [str(conn.dst_port)]),
        "prefix_ranges": _prefix_words("destination", "prefix_ranges", conn.dst_ip),
        "server_names": _value_words("server name", "server_names",
                                     _server_name_hit(conn.server_name),
                                     _server_name_candidates(conn.server_name)),
        "transport_protocol": _value_words(
            "transport_protocol", "transport_protocol", lambda _: conn.transport_protocol,
            [conn.transport_protocol]),
        "application_protocols": _value_words(
            "application protocol", "application_protocols",
            lambda best: protos[len(protos) - best], protos),
        "direct_source_prefix_ranges": _prefix_words(
            "direct source", "direct_source_prefix_ranges", conn.direct_src_ip or conn.src_ip),
        "source_type": lambda best: f"source_type {wanted}" if best > 0 else "source_type ANY",
        "source_prefix_ranges": _prefix_words("source", "source_prefix_ranges", conn.src_ip),
        "source_ports": _value_words("source port", "source_ports", lambda _: str(conn.src_port),
                                     [str(conn.src_port)]),
    }


def reasons(stages: tuple[Stage, ...], conn: ConnInfo) -> list[str]:
    """The stages' reasons; a stage no remaining chain configures narrows nothing and
    says nothing."""
    words = _stage_words(conn)
    return [words[s.criterion](s.best or 0) for s in stages if s.configured]


def select_filter_chain(chains: Sequence[Chain], conn: ConnInfo,
                        default_chain: Chain | None = None) -> ChainChoice:
    """Which of ``chains`` Envoy picks for ``conn``, and why at each stage."""
    stages = explain([chain_match(c, i) for i, c in enumerate(chains)], conn.facts())
    why = reasons(stages, conn)
    kept = stages[-1].kept if stages else ()
    if kept:
        index = kept[0]
        if len(kept) > 1:
            why.append(f"{len(kept)} chains match equally; Envoy rejects such a config, "
                       "taking the first")
        return ChainChoice(index, str(chains[index].get("name", f"#{index}")), tuple(why))
    if default_chain is not None:
        why.append("no filter chain matched: default_filter_chain")
        return ChainChoice(None, str(default_chain.get("name", "default_filter_chain")),
                           tuple(why), default_used=True)
    return ChainChoice(None, None, tuple(why))


def describe_match(chain: Chain) -> str:
    """The chain's filter_chain_match in istioctl's MATCH column words (one renderer for
    `remora proxy-config listener` and `remora explain`)."""
    return describe_chain_match({snake(k): v for k, v in _fcm(chain).items()})
