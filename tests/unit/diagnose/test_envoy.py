"""Envoy config reading, filter chain selection and the sidecar simulation."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from remora.diagnose.envoy.config import EnvoyConfig, add_document, parse_config_text
from remora.diagnose.envoy.match import ConnInfo, select_filter_chain
from remora.diagnose.envoy.sim import Downstream, TlsHello, simulate
from remora.errors import RemoraError

SEED_HOST = "simple-server-svc.demo-to:18080"


def load(*paths: Path) -> EnvoyConfig:
    cfg = EnvoyConfig()
    for p in paths:
        parse_config_text(cfg, p.read_text(), p.name)
    return cfg


def camel(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {(re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), k)
                 if re.fullmatch(r"[a-z0-9_]+", k) else k): camel(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [camel(v) for v in obj]
    return obj


def inbound(capture: str = "REDIRECT", tls: TlsHello | None = None, port: int = 18080,
            arrived: int = 15006) -> Downstream:
    return Downstream("10.20.0.78", 33204, "10.20.0.77", port, capture, arrived, tls, True,
                      SEED_HOST, "/common/sauth")


def as_config_dump(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """The shape of Envoy's admin /config_dump (and `istioctl proxy-config all -o json`)."""
    static = bootstrap["static_resources"]
    return {"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
         "bootstrap": {"node": bootstrap["node"]}},
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
         "dynamic_listeners": [{"name": x["name"], "active_state": {"listener": x}}
                               for x in static["listeners"]]},
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
         "dynamic_active_clusters": [{"cluster": c} for c in static["clusters"]]},
        {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"},
    ]}


def test_reference_redirect_vs_tproxy_upstream_source(reference: Path) -> None:
    red = simulate(load(reference / "server-redirect.json"), inbound(), "server", "10.20.0.77")
    tpx = simulate(load(reference / "server-tproxy.json"), inbound("TPROXY"), "server",
                   "10.20.0.77")
    for t in (red, tpx):
        assert t.failure is None
        assert (t.listener, t.chain, t.cluster, t.cluster_type) == (
            "virtualInbound", "0.0.0.0_18080", "inbound|18080||", "ORIGINAL_DST")
        assert t.endpoint == "10.20.0.77:18080" and t.route == "default"
    assert red.upstream_source == "127.0.0.6" and "upstream_bind_config" in red.upstream_source_why
    assert tpx.upstream_source == "10.20.0.78" and tpx.upstream_mark == 1337
    assert "original_src" in tpx.upstream_source_why


def test_camel_case_and_config_dump_shapes_agree(reference: Path) -> None:
    boot = json.loads((reference / "server-tproxy.json").read_text())
    shapes = [boot, camel(boot), as_config_dump(boot), camel(as_config_dump(boot))]
    results = []
    for doc in shapes:
        cfg = EnvoyConfig()
        add_document(cfg, doc, "x")
        assert cfg.pod_ip() == "10.20.0.77"
        t = simulate(cfg, inbound("TPROXY"), "server")
        results.append((t.chain, t.cluster, t.endpoint, t.upstream_source, t.upstream_mark))
    assert len(set(results)) == 1


def test_client_handoff_route_and_endpoint(reference: Path) -> None:
    cfg = load(reference / "client-redirect.json")
    ds = Downstream("10.20.0.78", 40000, "10.20.0.77", 18080, "REDIRECT", 15001, None, True,
                    "srv.default.svc.cluster.local:18080", "/")
    t = simulate(cfg, ds, "client", "10.20.0.78")
    assert t.handoff and t.handoff.startswith("virtualOutbound -> 0.0.0.0_18080")
    assert t.route_config == "18080" and t.virtual_host == "srv.default.svc.cluster.local:18080"
    assert t.cluster == "outbound|18080||srv.default.svc.cluster.local"
    assert t.endpoint == "10.20.0.77:18080"
    assert t.upstream_tls is not None and t.upstream_tls.mode == "plaintext"
    assert t.upstream_source == "10.20.0.78"
    # an unknown host falls to the allow_any virtual host -> PassthroughCluster
    t = simulate(cfg, Downstream("10.20.0.78", 40000, "93.184.216.34", 18080, "REDIRECT", 15001,
                                 None, True, "example.com", "/"), "client", "10.20.0.78")
    assert (t.virtual_host, t.cluster, t.endpoint) == ("allow_any", "PassthroughCluster",
                                                      "93.184.216.34:18080")


def test_seed_excerpt_reads_with_comments(data: Path) -> None:
    cfg = load(data / "seed_virtualinbound_listener.json", data / "seed_inbound_cluster.json")
    assert cfg.partial and cfg.listener_named("virtualInbound") is not None
    bind = cfg.clusters["inbound|18080||"]["upstream_bind_config"]["source_address"]
    assert bind["address"] == "127.0.0.6"
    t = simulate(cfg, inbound(tls=TlsHello("outbound_.18080_._.simple-server-svc.demo-to.svc."
                                           "cluster.local")), "server")
    assert (t.chain, t.cluster, t.upstream_source) == ("0.0.0.0_18080", "inbound|18080||",
                                                      "127.0.0.6")
    assert any("excerpt" in n for n in t.notes)  # it says the chain was chosen on partial data
    out = load(data / "seed_virtualoutbound_listener.json", data / "seed_passthrough_cluster.json")
    lst = out.listener_named("virtualOutbound")
    assert lst is not None and lst["use_original_dst"] is True


def test_failures_are_named(reference: Path) -> None:
    cfg = load(reference / "server-redirect.json")
    assert simulate(cfg, inbound(arrived=15007), "server").failure == "no listener"
    # TPROXY delivery to a listener that is not transparent
    assert simulate(cfg, inbound("TPROXY"), "server").failure == "dropped"
    # no original-destination step: everything matches destination port 15006
    broken = copy.deepcopy(cfg)
    broken.listener_named("virtualInbound")["listener_filters"] = []  # type: ignore[index]
    t = simulate(broken, inbound(), "server", "10.20.0.77")
    assert (t.failure, t.chain) == ("blackholed", "virtualInbound-blackhole")
    client = load(reference / "client-redirect.json")
    vhosts = client.listener_named("0.0.0.0_18080")["filter_chains"][0]["filters"][0][  # type: ignore[index]
        "typed_config"]["route_config"]["virtual_hosts"]
    del vhosts[1]  # drop allow_any
    ds = Downstream("10.20.0.78", 1, "10.20.0.77", 18080, "REDIRECT", 15001, None, True,
                    "other.example:18080", "/")
    assert simulate(client, ds, "client").failure == "no route"
    client.endpoints["outbound|18080||srv.default.svc.cluster.local"] = []
    ds = Downstream("10.20.0.78", 1, "10.20.0.77", 18080, "REDIRECT", 15001, None, True,
                    "srv:18080", "/")
    assert simulate(client, ds, "client").failure == "no endpoint"


def test_missing_parts_are_listed_not_guessed() -> None:
    cfg = EnvoyConfig()
    add_document(cfg, [{"name": "virtualInbound", "address": {"socketAddress": {
        "address": "0.0.0.0", "portValue": 15006}}, "listenerFilters": [
        {"name": "envoy.filters.listener.original_dst"}], "filterChains": [
        {"filterChainMatch": {"destinationPort": 18080}, "filters": [
            {"name": "envoy.filters.network.tcp_proxy",
             "typedConfig": {"cluster": "inbound|18080||"}}]}]}], "listeners.json")
    t = simulate(cfg, inbound(), "server", pod="srv-0 -n demo")
    assert t.failure is None and t.cluster == "inbound|18080||" and t.upstream_source is None
    assert [m.command for m in t.missing] == [
        "istioctl proxy-config cluster srv-0 -n demo --fqdn 'inbound|18080||' -o json"]


def chain(name: str, **match: Any) -> dict[str, Any]:
    return {"name": name, "filter_chain_match": match}


def test_filter_chain_precedence() -> None:
    chains = [
        chain("catchall", prefix_ranges=[{"address_prefix": "0.0.0.0", "prefix_len": 0}]),
        chain("port-tls", destination_port=18080, transport_protocol="tls",
              application_protocols=["istio-http/1.1", "istio-h2"]),
        chain("port-tls-tcp", destination_port=18080, transport_protocol="tls"),
        chain("port-raw", destination_port=18080, transport_protocol="raw_buffer"),
        chain("sni", destination_port=9000, server_names=["*.example.com"]),
        chain("sni-exact", destination_port=9000, server_names=["a.example.com"]),
        chain("sni-none", destination_port=9000),
        chain("local", destination_port=7000, source_type="SAME_IP_OR_LOOPBACK"),
        chain("any", destination_port=7000),
    ]

    def pick(**kw: Any) -> str | None:
        base: dict[str, Any] = {"dst_ip": "10.20.0.77", "dst_port": 18080, "src_ip": "10.20.0.78"}
        return select_filter_chain(chains, ConnInfo(**{**base, **kw})).name

    assert pick(transport_protocol="tls", application_protocols=("istio-http/1.1",)) == "port-tls"
    assert pick(transport_protocol="tls", application_protocols=("istio-peer-exchange",)) == (
        "port-tls-tcp")
    assert pick() == "port-raw"
    assert pick(dst_port=18081) == "catchall"
    assert pick(dst_port=9000, server_name="a.example.com") == "sni-exact"
    assert pick(dst_port=9000, server_name="b.example.com") == "sni"
    assert pick(dst_port=9000, server_name="other.org") == "sni-none"
    assert pick(dst_port=7000, src_ip="127.0.0.1") == "local"
    assert pick(dst_port=7000) == "any"
    choice = select_filter_chain(chains, ConnInfo("10.20.0.77", 18080, "10.20.0.78",
                                                  transport_protocol="tls"))
    assert choice.reasons[0] == "destination_port 18080"


def test_filter_chain_no_backtracking_and_default() -> None:
    chains = [chain("port-tls", destination_port=18080, transport_protocol="tls"),
              chain("catchall")]
    conn = ConnInfo("10.20.0.77", 18080, "10.20.0.78", transport_protocol="raw_buffer")
    # Envoy committed to the destination_port branch and does not fall back to catchall.
    assert select_filter_chain(chains, conn).index is None
    choice = select_filter_chain(chains, conn, {"name": "default"})
    assert choice.default_used and choice.name == "default"


def test_filter_chain_reasons_word_each_stage() -> None:
    chains = [
        chain("blackhole", destination_port=15006),
        chain("tls-http", destination_port=18080, transport_protocol="tls",
              application_protocols=["istio-http/1.0", "istio-http/1.1", "istio-h2"]),
        chain("tls", destination_port=18080, transport_protocol="tls"),
        chain("passthrough", prefix_ranges=[{"address_prefix": "0.0.0.0", "prefix_len": 0}]),
    ]

    def why(chs: list[dict[str, Any]], **kw: Any) -> tuple[str | None, tuple[str, ...]]:
        base: dict[str, Any] = {"dst_ip": "10.20.0.77", "dst_port": 18080, "src_ip": "10.20.0.78"}
        choice = select_filter_chain(chs, ConnInfo(**{**base, **kw}))
        return choice.name, choice.reasons

    # the second ALPN the client offers is the first any chain names
    assert why(chains, transport_protocol="tls", application_protocols=("h2", "istio-http/1.1")
               ) == ("tls-http", ("destination_port 18080", "transport_protocol tls",
                                  "application protocol istio-http/1.1"))
    assert why(chains, transport_protocol="tls", application_protocols=("h2",)) == (
        "tls", ("destination_port 18080", "transport_protocol tls",
                "application protocol h2: chains without application_protocols"))
    assert why(chains, dst_port=9000) == (
        "passthrough", ("destination_port 9000: chains without destination_port",
                        "destination 10.20.0.77 in a /0 range"))
    sni = [chain("exact", server_names=["a.example.com"]),
           chain("wild", server_names=["*.example.com"]), chain("none")]
    assert why(sni, server_name="a.example.com") == ("exact", ("server name a.example.com",))
    assert why(sni, server_name="b.x.example.com") == ("wild", ("server name *.example.com",))
    assert why(sni, server_name="x.org") == (
        "none", ("server name x.org/*.org: chains without server_names",))
    nets = [chain("slash16", prefix_ranges=[{"address_prefix": "10.20.0.0", "prefix_len": 16}]),
            chain("host", prefix_ranges=[{"address_prefix": "10.20.0.77", "prefix_len": 32}])]
    assert why(nets, dst_ip="10.20.0.9") == ("slash16", ("destination 10.20.0.9 in a /16 range",))
    src = [chain("local", source_type="SAME_IP_OR_LOOPBACK"),
           chain("net", source_prefix_ranges=[{"address_prefix": "10.0.0.0", "prefix_len": 8}],
                 source_ports=[40000]),
           chain("any")]
    assert why(src, src_ip="127.0.0.1") == ("local", ("source_type SAME_IP_OR_LOOPBACK",))
    assert why(src) == ("net", ("source_type ANY", "source 10.20.0.78 in a /8 range",
                                "source port 40000"))
    assert why(src, src_port=1) == (None, ("source_type ANY", "source 10.20.0.78 in a /8 range",
                                           "source port 1: chains without source_ports"))


def test_filter_chain_match_read_like_the_proxy() -> None:
    # camelCase (istioctl) keys, a field the proxy does not read, port 0 = any port
    chains = [{"name": "camel", "filter_chain_match": {
        "destinationPort": 18080, "transportProtocol": "tls", "addressSuffix": "ignored",
        "prefixRanges": [{"addressPrefix": "10.20.0.0", "prefixLen": 16}]}},
        {"name": "port0", "filter_chain_match": {"destination_port": 0}}]
    conn = ConnInfo("10.20.0.77", 18080, "10.20.0.78", transport_protocol="tls")
    assert select_filter_chain(chains, conn).reasons == (
        "destination_port 18080", "destination 10.20.0.77 in a /16 range",
        "transport_protocol tls")
    assert select_filter_chain(chains, ConnInfo("10.20.0.77", 80, "10.20.0.78")).name == "port0"
    # Envoy lowercases configured server names (FilterChainManagerImpl)
    upper = [chain("upper", server_names=["A.Example.COM"]), chain("none")]
    assert select_filter_chain(upper, ConnInfo("10.20.0.77", 18080, "10.20.0.78",
                                               server_name="a.example.com")).name == "upper"
    bad = [chain("bad", prefix_ranges=[{"address_prefix": "10.0.0.300", "prefix_len": 8}])]
    with pytest.raises(RemoraError, match=r"chain bad: filter_chains\[0\]\.filter_chain_match"
                                          r"\.prefix_ranges\[0\]: invalid CIDR range"):
        select_filter_chain(bad, conn)


@pytest.mark.parametrize("text,match", [
    ('{"configs": [{"@type": "x"', "not complete JSON"),
    ('{"apiVersion": "v1", "kind": "Pod"}', "not Envoy configuration"),
    ("", "is empty"),
])
def test_bad_config_input(text: str, match: str) -> None:
    with pytest.raises(RemoraError, match=match):
        parse_config_text(EnvoyConfig(), text, "config_dump.json")


def test_no_filter_chain(reference: Path) -> None:
    cfg = load(reference / "server-redirect.json")
    lst = cfg.listener_named("virtualInbound")
    assert lst is not None
    lst["filter_chains"] = [c for c in lst["filter_chains"] if c["name"] != "virtualInbound"]
    for c in lst["filter_chains"]:
        c["filter_chain_match"]["transport_protocol"] = "tls"
    t = simulate(cfg, inbound(), "server", "10.20.0.77")
    assert t.failure == "no filter chain" and "raw_buffer" in t.failure_detail
