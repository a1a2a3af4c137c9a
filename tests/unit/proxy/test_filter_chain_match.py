"""Filter chain selection against Envoy's documented precedence
(https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener_components.proto#config-listener-v3-filterchainmatch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.filter_chain_match import (
    STEPS,
    FilterChainMatch,
    check_unique,
    explain,
    parse_match,
    select,
)
from remora.proxy.interfaces import ConnectionFacts


@dataclass
class Chain:
    name: str
    match: FilterChainMatch


def chains(*specs: tuple[str, dict[str, Any]]) -> list[Chain]:
    return [Chain(name, parse_match(Fields(spec, f"filter_chains[{i}].filter_chain_match")))
            for i, (name, spec) in enumerate(specs)]


def facts(dst: str = "10.20.0.77:18080", src: str = "10.20.0.78:33204",
          **kw: Any) -> ConnectionFacts:
    lip, lport = dst.rsplit(":", 1)
    rip, rport = src.rsplit(":", 1)
    return ConnectionFacts(lip, int(lport), rip, int(rport), rip, **kw)


def pick(cs: list[Chain], f: ConnectionFacts, default: Chain | None = None) -> str | None:
    chosen = select(cs, f, default)
    return chosen.name if chosen else None


# Istio's virtualInbound (the reference server configs): blackhole on 15006, the
# service port's chain, and a 0.0.0.0/0 passthrough catch-all.
VIRTUAL_INBOUND = chains(
    ("virtualInbound-blackhole", {"destination_port": 15006}),
    ("0.0.0.0_18080", {"destination_port": 18080}),
    ("virtualInbound", {"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}]}),
)


def test_istio_virtual_inbound() -> None:
    assert pick(VIRTUAL_INBOUND, facts("10.20.0.77:18080")) == "0.0.0.0_18080"
    assert pick(VIRTUAL_INBOUND, facts("10.20.0.77:9000")) == "virtualInbound"
    # without original_dst every connection is "to 15006": the blackhole stops a loop
    assert pick(VIRTUAL_INBOUND, facts("10.20.0.77:15006")) == "virtualInbound-blackhole"
    # the catch-all is IPv4 only: an IPv6 destination on another port matches nothing
    assert pick(VIRTUAL_INBOUND, facts("fd00::1:9000")) is None


def test_server_name_precedence_exact_then_longest_wildcard_then_none() -> None:
    # "for SNI www.example.com the most specific match would be www.example.com, then
    # *.example.com, then *.com, then any filter chain without server_names requirements"
    cs = chains(
        ("exact", {"server_names": ["www.example.com"]}),
        ("wild-example", {"server_names": ["*.example.com"]}),
        ("wild-com", {"server_names": ["*.com"]}),
        ("none", {}),
    )
    assert pick(cs, facts(server_name="www.example.com")) == "exact"
    assert pick(cs, facts(server_name="api.example.com")) == "wild-example"
    assert pick(cs, facts(server_name="a.b.example.com")) == "wild-example"
    assert pick(cs, facts(server_name="foo.com")) == "wild-com"
    assert pick(cs, facts(server_name="example.org")) == "none"
    assert pick(cs, facts(server_name=None)) == "none"
    # a wildcard does not match the bare domain
    assert pick(cs[1:3], facts(server_name="example.com")) == "wild-com"


def test_no_fallback_once_a_more_specific_step_won() -> None:
    # "Filter chains specifying the wrong port can never be the most specific match"; and
    # a chain kept at the port step that fails a later step leaves nothing: the generic
    # chain is NOT tried again (the default_filter_chain is used).
    cs = chains(
        ("port-tls", {"destination_port": 443, "transport_protocol": "tls"}),
        ("any", {}),
    )
    default = Chain("default", FilterChainMatch())
    assert pick(cs, facts("1.2.3.4:443", transport_protocol="tls")) == "port-tls"
    assert pick(cs, facts("1.2.3.4:443")) is None
    assert pick(cs, facts("1.2.3.4:443"), default) == "default"
    assert pick(cs, facts("1.2.3.4:80")) == "any"


def test_destination_prefix_longest_match_and_empty_is_least_specific() -> None:
    cs = chains(
        ("slash8", {"prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]}),
        ("slash24", {"prefix_ranges": [{"address_prefix": "10.20.0.0", "prefix_len": 24},
                                       {"address_prefix": "192.168.0.0", "prefix_len": 16}]}),
        ("host", {"prefix_ranges": [{"address_prefix": "10.20.0.77", "prefix_len": 32}]}),
        ("empty", {}),
    )
    assert pick(cs, facts("10.20.0.77:80")) == "host"
    assert pick(cs, facts("10.20.0.9:80")) == "slash24"
    assert pick(cs, facts("192.168.3.4:80")) == "slash24"
    assert pick(cs, facts("10.9.9.9:80")) == "slash8"
    assert pick(cs, facts("172.16.0.1:80")) == "empty"


def test_seed_inbound_chains_transport_and_alpn() -> None:
    # The five 0.0.0.0:15006 chains for port 18080 the seed lists (istioctl output):
    # tls + istio-http ALPN, raw_buffer + HTTP, tls + TCP ALPN, raw_buffer, tls.
    cs = chains(
        ("tls-http", {"destination_port": 18080, "transport_protocol": "tls",
                      "application_protocols": ["istio-http/1.0", "istio-http/1.1", "istio-h2"]}),
        ("raw-http", {"destination_port": 18080, "transport_protocol": "raw_buffer",
                      "application_protocols": ["http/1.1", "h2c"]}),
        ("tls-tcp", {"destination_port": 18080, "transport_protocol": "tls",
                     "application_protocols": ["istio-peer-exchange", "istio"]}),
        ("raw-tcp", {"destination_port": 18080, "transport_protocol": "raw_buffer"}),
        ("tls-any", {"destination_port": 18080, "transport_protocol": "tls"}),
    )
    tls = {"transport_protocol": "tls"}
    assert pick(cs, facts(**tls, application_protocols=("istio-http/1.1",))) == "tls-http"
    assert pick(cs, facts(**tls, application_protocols=("istio",))) == "tls-tcp"
    assert pick(cs, facts(**tls, application_protocols=("h2",))) == "tls-any"
    assert pick(cs, facts(**tls)) == "tls-any"
    assert pick(cs, facts(application_protocols=("http/1.1",))) == "raw-http"
    assert pick(cs, facts()) == "raw-tcp"
    assert pick(cs, facts("10.20.0.77:18081")) is None


def test_alpn_first_connection_protocol_that_any_chain_names_wins() -> None:
    cs = chains(("h2", {"application_protocols": ["h2"]}),
                ("h11", {"application_protocols": ["http/1.1"]}))
    assert pick(cs, facts(application_protocols=("h2", "http/1.1"))) == "h2"
    assert pick(cs, facts(application_protocols=("http/1.1", "h2"))) == "h11"
    assert pick(cs, facts(application_protocols=("spdy/3", "h2"))) == "h2"


def test_source_type_source_prefix_and_port() -> None:
    cs = chains(
        ("local", {"source_type": "SAME_IP_OR_LOOPBACK"}),
        ("external-port", {"source_type": "EXTERNAL", "source_ports": [33204]}),
        ("external-net", {"source_type": "EXTERNAL", "source_prefix_ranges": [
            {"address_prefix": "10.20.0.0", "prefix_len": 16}]}),
        ("any", {}),
    )
    assert pick(cs, facts(src="127.0.0.1:5000")) == "local"
    assert pick(cs, facts("10.20.0.77:80", src="10.20.0.77:5000")) == "local"  # same IP
    # source prefix comes before source port: the /16 chain wins for 10.20.x.x
    assert pick(cs, facts(src="10.20.0.78:33204")) == "external-net"
    assert pick(cs, facts(src="8.8.8.8:33204")) == "external-port"
    # EXTERNAL chains are kept at the source-type step; none matches 8.8.8.8:1 -> nothing
    assert pick(cs, facts(src="8.8.8.8:1")) is None
    assert pick(cs[3:], facts(src="8.8.8.8:1")) == "any"


def test_duplicate_matching_rules_are_rejected_like_envoy() -> None:
    cs = chains(("a", {"destination_port": 80}), ("b", {"destination_port": 80}))
    with pytest.raises(ConfigError) as err:
        check_unique([c.match for c in cs], "listeners[0].filter_chains")
    assert "multiple filter chains with the same matching rules" in err.value.problem
    assert err.value.path == "listeners[0].filter_chains[1].filter_chain_match"
    check_unique([c.match for c in chains(("a", {"destination_port": 80}),
                                          ("b", {"destination_port": 81}))], "x")


def test_destination_port_zero_is_any_port_like_envoy() -> None:
    # Envoy reads destination_port with PROTOBUF_GET_WRAPPED_OR_DEFAULT(..., 0) and keys
    # its catch-all port on 0, so an explicit 0 is the same as leaving the port out.
    cs = chains(("zero", {"destination_port": 0}), ("port", {"destination_port": 443}))
    assert cs[0].match == FilterChainMatch()
    assert pick(cs, facts("1.2.3.4:80")) == "zero"
    assert pick(cs, facts("1.2.3.4:443")) == "port"
    with pytest.raises(ConfigError, match="same matching rules"):
        check_unique([c.match for c in chains(("a", {}), ("b", {"destination_port": 0}))], "x")


def test_explain_reports_each_stage() -> None:
    cs = chains(
        ("blackhole", {"destination_port": 15006}),
        ("tls-http", {"destination_port": 18080, "transport_protocol": "tls",
                      "application_protocols": ["istio-http/1.0", "istio-http/1.1"]}),
        ("tls-any", {"destination_port": 18080, "transport_protocol": "tls"}),
        ("raw", {"destination_port": 18080, "transport_protocol": "raw_buffer"}),
        ("passthrough", {"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}]}),
    )
    f = facts(transport_protocol="tls", application_protocols=("h2", "istio-http/1.1"))
    stages = explain([c.match for c in cs], f)
    assert [(s.criterion, s.configured, s.best, s.kept) for s in stages] == [
        ("destination_port", True, 1, (1, 2, 3)),
        ("prefix_ranges", False, 0, (1, 2, 3)),
        ("server_names", False, 0, (1, 2, 3)),
        ("transport_protocol", True, 1, (1, 2)),
        ("application_protocols", True, 1, (1,)),  # istio-http/1.1, the 2nd of 2 offered
        ("direct_source_prefix_ranges", False, 0, (1,)),
        ("source_type", False, 0, (1,)),
        ("source_prefix_ranges", False, 0, (1,)),
        ("source_ports", False, 0, (1,)),
    ]
    # the steps stop after the one that keeps nothing (no backtracking to passthrough)
    stages = explain([c.match for c in cs], facts(transport_protocol="quic"))
    assert [(s.criterion, s.best, s.kept) for s in stages] == [
        ("destination_port", 1, (1, 2, 3)), ("prefix_ranges", 0, (1, 2, 3)),
        ("server_names", 0, (1, 2, 3)), ("transport_protocol", None, ())]
    assert explain([], f) == ()


def test_unknown_match_field_named() -> None:
    with pytest.raises(ConfigError) as err:
        parse_match(Fields({"destination_port": 1, "suffix_len": 3}, "l.filter_chain_match"))
    assert err.value.path == "l.filter_chain_match.suffix_len"


# -- properties ----------------------------------------------------------------------
_ports = st.sampled_from([None, 80, 443])
_nets = st.lists(st.sampled_from([("10.0.0.0", 8), ("10.20.0.0", 16), ("10.20.0.77", 32),
                                  ("0.0.0.0", 0)]), max_size=2, unique=True)
_match = st.builds(
    lambda port, nets, sni, tp, alpn, stype: {
        **({"destination_port": port} if port else {}),
        **({"prefix_ranges": [{"address_prefix": a, "prefix_len": n} for a, n in nets]}
           if nets else {}),
        **({"server_names": sni} if sni else {}),
        **({"transport_protocol": tp} if tp else {}),
        **({"application_protocols": alpn} if alpn else {}),
        **({"source_type": stype} if stype != "ANY" else {}),
    },
    _ports, _nets,
    st.lists(st.sampled_from(["a.example.com", "*.example.com", "*.com"]), max_size=2,
             unique=True),
    st.sampled_from(["", "tls", "raw_buffer"]),
    st.lists(st.sampled_from(["h2", "http/1.1"]), max_size=2, unique=True),
    st.sampled_from(["ANY", "SAME_IP_OR_LOOPBACK", "EXTERNAL"]),
)
_facts = st.builds(
    lambda ip, port, src, sni, tp, alpn: ConnectionFacts(
        ip, port, src, 4000, src, server_name=sni, transport_protocol=tp,
        application_protocols=tuple(alpn)),
    st.sampled_from(["10.20.0.77", "10.1.2.3", "172.16.0.1"]), st.sampled_from([80, 443, 8080]),
    st.sampled_from(["10.20.0.78", "127.0.0.1"]),
    st.sampled_from([None, "a.example.com", "b.example.com", "x.org"]),
    st.sampled_from(["raw_buffer", "tls"]), st.lists(st.sampled_from(["h2", "http/1.1"]),
                                                     max_size=2, unique=True),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_match, min_size=1, max_size=6), _facts)
def test_selected_chain_matches_every_criterion_and_is_most_specific(
    specs: list[dict[str, Any]], f: ConnectionFacts,
) -> None:
    cs = chains(*((f"c{i}", spec) for i, spec in enumerate(specs)))
    chosen = select(cs, f)
    if chosen is None:
        return
    # sound: every step accepts the chosen chain ...
    ranks = [step(chosen.match, f) for _, step in STEPS]
    assert None not in ranks
    # ... and no chain beats it lexicographically over the steps (Envoy's pruning order)
    for other in cs:
        other_ranks = [step(other.match, f) for _, step in STEPS]
        if None in other_ranks:
            continue
        assert other_ranks <= ranks  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(st.lists(_match, min_size=0, max_size=6), _facts)
def test_explain_agrees_with_select(specs: list[dict[str, Any]], f: ConnectionFacts) -> None:
    # select's pruning loop is written out for speed; explain must choose the same chain
    cs = chains(*((f"c{i}", spec) for i, spec in enumerate(specs)))
    stages = explain([c.match for c in cs], f)
    chosen = select(cs, f)
    kept = stages[-1].kept if stages else ()
    assert (cs[kept[0]] if kept else None) is chosen
    for stage in stages:  # each stage keeps exactly the best-ranked of what it was given
        assert all(dict(STEPS)[stage.criterion](cs[i].match, f) == stage.best
                   for i in stage.kept)
