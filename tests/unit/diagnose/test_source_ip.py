"""The verdict of `explain source-ip` on the seed's evidence, Istio's rules and the
reference Envoy configs: REDIRECT -> the app sees 127.0.0.6, TPROXY -> the client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remora.diagnose.evidence import files as ef
from remora.diagnose.iptables.save import parse_iptables_save
from remora.diagnose.source_ip.compare import compare_table
from remora.diagnose.source_ip.evidence import Evidence
from remora.diagnose.source_ip.explain import explain_source_ip
from remora.diagnose.source_ip.render import render_json, render_text
from remora.diagnose.source_ip.svg import path_hops, render_svg
from remora.errors import RemoraError

PATCH = ('\'{"spec":{"template":{"metadata":{"annotations":'
         '{"sidecar.istio.io/interceptionMode":"TPROXY"}}}}}\'')


def seed_redirect(data: Path) -> Evidence:
    ev = Evidence()
    ef.add_iptables(ev.server, data / "seed_redirect_nat.txt")
    ef.add_config(ev.server, data / "seed_virtualinbound_listener.json")
    ef.add_config(ev.server, data / "seed_inbound_cluster.json")
    ef.add_access_log(ev.server, data / "seed_server_access.log")
    ef.add_access_log(ev.server, data / "seed_server_app.log")
    ev.server.pod, ev.server.namespace = "simple-server-86b499d4dd-bjrjz", "demo-to"
    return ev


def reference_pair(reference: Path, goldens: Path, mode: str) -> Evidence:
    """Client and server with the reference configs and Istio's rules for ``mode``."""
    ev = Evidence()
    ef.add_config(ev.client, reference / "client-redirect.json")
    ef.add_iptables(ev.client, goldens / "DERIVED-default-injection-redirect.txt.notgolden")
    if mode == "TPROXY":
        ef.add_config(ev.server, reference / "server-tproxy.json")
        ef.add_iptables(ev.server, goldens / "inbound-ports-wildcard-tproxy.golden")
    else:
        ef.add_config(ev.server, reference / "server-redirect.json")
        ef.add_iptables(ev.server, goldens / "DERIVED-default-injection-redirect.txt.notgolden")
    ev.target.host, ev.target.port = "srv.default.svc.cluster.local", 18080
    return ev


def test_seed_redirect_app_sees_127_0_0_6(data: Path) -> None:
    r = explain_source_ip(seed_redirect(data))
    v = r.verdict
    assert r.mode == "REDIRECT"
    assert r.facts["client_ip"].value == "10.20.0.78"  # from DOWNSTREAM_REMOTE_ADDRESS
    assert r.facts["server_ip"].value == "10.20.0.77"
    assert v.failure is None and v.app_sees == "127.0.0.6" and v.sees_client is False
    assert v.confirmed is True and "127.0.0.6:44213" in v.confirmation
    assert "RemoteAddr=127.0.0.6:44213" in v.confirmation  # the app's own log agrees
    assert v.xff_carries_client is False
    step3, step4 = r.steps[2], r.steps[3]
    assert step3.walk is not None and step3.walk.capture.port == 15006
    assert step4.sidecar is not None and step4.sidecar.cluster == "inbound|18080||"
    assert step4.follow_up is not None and step4.follow_up.capture.kind == "none"
    assert step4.follow_up.capture.decided_by is not None
    assert step4.follow_up.capture.decided_by.ref() == "nat/ISTIO_OUTPUT #1"
    assert len(v.explanation_127) == 2
    assert "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN" in v.explanation_127[1]
    cmds = v.fixes[0].commands
    assert cmds[0] == f"remora patch deployment simple-server -n demo-to -p {PATCH}"
    assert cmds[1] == f"kubectl patch deployment simple-server -n demo-to -p {PATCH}"
    assert any("NET_ADMIN" in c for c in v.fixes[0].cost)
    assert any("mangle" in c for c in v.fixes[0].cost)
    assert "X-Forwarded-For" in v.fixes[1].commands[0]
    # what could not be established, with the commands that would
    whats = [m.what for m in r.missing]
    assert "client pod capture rules" in whats and "client sidecar config" in whats
    assert any("iptables-save" in m.command for m in r.missing)


def test_seed_tproxy_listings_app_sees_client(data: Path, reference: Path) -> None:
    ev = Evidence()
    ef.add_iptables(ev.server, data / "seed_tproxy_mangle.txt")
    ef.add_iptables(ev.server, data / "seed_tproxy_nat.txt")
    ev.client.ip = "10.20.0.78"
    ev.target.port = 18080
    r = explain_source_ip(ev)
    assert r.mode == "TPROXY"
    assert r.steps[2].walk is not None and r.steps[2].walk.capture.kind == "TPROXY"
    assert r.verdict.app_sees == "10.20.0.78" and r.verdict.inferred  # no config: from the mode
    assert r.verdict.sees_client and not r.verdict.fixes
    assert any("ip rule" in m.command for m in r.missing)
    # with the sidecar's config the same verdict comes from original_src itself
    ef.add_config(ev.server, reference / "server-tproxy.json")
    r = explain_source_ip(ev)
    assert r.verdict.app_sees == "10.20.0.78" and not r.verdict.inferred
    assert r.steps[3].sidecar is not None and r.steps[3].sidecar.upstream_mark == 1337
    assert r.steps[3].follow_up is not None and r.steps[3].follow_up.capture.kind == "none"


@pytest.mark.parametrize("mode,sees", [("REDIRECT", "127.0.0.6"), ("TPROXY", "10.20.0.78")])
def test_reference_configs_and_istio_rules(reference: Path, goldens: Path, mode: str,
                                           sees: str) -> None:
    r = explain_source_ip(reference_pair(reference, goldens, mode))
    assert [s.status for s in r.steps] == ["ok", "ok", "ok", "ok"]
    s1, s2, s3, s4 = r.steps
    assert s1.walk is not None and s1.walk.capture.port == 15001
    assert s2.sidecar is not None and s2.sidecar.endpoint == "10.20.0.77:18080"
    assert s2.follow_up is not None and s2.follow_up.capture.kind == "none"  # no loop
    assert s3.walk is not None and s3.walk.capture.kind == mode
    assert s4.sidecar is not None and s4.sidecar.upstream_source == sees
    assert r.verdict.app_sees == sees and r.verdict.sees_client is (mode == "TPROXY")
    assert r.verdict.confirmed is None  # no access log given
    assert r.facts["client_ip"].source == "client config node id"


def test_mismatched_mode_and_config_fails(reference: Path, goldens: Path) -> None:
    """TPROXY rules with a REDIRECT config: the listener is not transparent."""
    ev = reference_pair(reference, goldens, "REDIRECT")
    ev.server.iptables = parse_iptables_save(
        (goldens / "inbound-ports-wildcard-tproxy.golden").read_text())[0]
    r = explain_source_ip(ev)
    assert r.steps[3].status == "failed" and r.verdict.app_sees is None
    assert r.verdict.failure is not None and "dropped" in r.verdict.failure


def test_loop_without_the_127_0_0_6_rule(reference: Path, goldens: Path) -> None:
    ev = reference_pair(reference, goldens, "REDIRECT")
    text = (goldens / "DERIVED-default-injection-redirect.txt.notgolden").read_text()
    text = text.replace("-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN\n", "")
    ev.server.iptables = parse_iptables_save(text)[0]
    r = explain_source_ip(ev)
    assert r.steps[3].status == "failed" and r.steps[3].summary.startswith("loop")
    assert r.verdict.failure is not None and "loop" in r.verdict.failure


def test_excluded_inbound_port_reaches_app_directly(reference: Path, goldens: Path) -> None:
    ev = reference_pair(reference, goldens, "REDIRECT")
    ev.target.port = 15020  # excluded by -d 15090,15021,15020
    r = explain_source_ip(ev)
    assert r.steps[2].status == "not captured"
    assert r.verdict.app_sees == "10.20.0.78" and r.verdict.sees_client
    assert "excluded port 15020" in r.verdict.app_sees_why


def test_log_that_contradicts_the_rules(reference: Path, goldens: Path, data: Path) -> None:
    ev = reference_pair(reference, goldens, "TPROXY")
    ef.add_access_log(ev.server, data / "seed_server_access.log")
    r = explain_source_ip(ev)
    # issue 14: the access log's UPSTREAM_LOCAL_ADDRESS is the strongest evidence; it wins
    # over the TPROXY model, and the output says what the model said and why it was wrong
    v = r.verdict
    assert v.app_sees == "127.0.0.6" and v.kind == "established" and v.confirmed is False
    assert "127.0.0.6:44213" in v.confirmation
    assert v.model_note.startswith("the model said 10.20.0.78")
    assert "the log wins: the model said 10.20.0.78" in render_text(r)


def test_renderings(data: Path) -> None:
    r = explain_source_ip(seed_redirect(data))
    text = render_text(r)
    assert "the app sees 127.0.0.6 (not the client 10.20.0.78)" in text
    assert "nat/ISTIO_IN_REDIRECT #1  [0 pkts]" in text and "<- decides" in text
    assert "not established from the evidence" in text
    doc = json.loads(render_json(r))
    assert doc["verdict"]["app_sees"] == "127.0.0.6"
    assert doc["steps"][2]["iptables"]["capture"]["decided_by"] == "nat/ISTIO_IN_REDIRECT #1"
    captions, in_path, hops = path_hops(r)
    assert in_path == [True, True, True, True]
    assert captions[1].endswith("(assumed)")  # no client evidence: Istio's default assumed
    changed = [h for h in hops if h.source_changed]
    assert len(changed) == 1 and changed[0].src == "127.0.0.6" and changed[0].to == 3
    svg = render_svg(r)
    assert svg.startswith("<svg") and "source changes here" in svg


def test_compare_table(data: Path, reference: Path, goldens: Path) -> None:
    ev = reference_pair(reference, goldens, "REDIRECT")
    rows = compare_table(ev, explain_source_ip(ev))
    by = {(row.mode, row.header_option.startswith("XFF")): row for row in rows[:4]}
    assert by[("REDIRECT", False)].remote_addr == "127.0.0.6" and by[("REDIRECT", False)].current
    assert by[("REDIRECT", True)].x_forwarded_for == "10.20.0.78"
    assert by[("TPROXY", False)].remote_addr == "10.20.0.78"
    assert by[("TPROXY", False)].x_forwarded_for == "only what the client sent"
    seed = seed_redirect(data)
    rows = compare_table(seed, explain_source_ip(seed))
    assert [r.remote_addr for r in rows[:4]] == ["127.0.0.6", "127.0.0.6", "10.20.0.78",
                                                 "10.20.0.78"]


def test_no_evidence_and_unknown_port() -> None:
    with pytest.raises(RemoraError, match="no evidence"):
        explain_source_ip(Evidence())
    ev = Evidence()
    ev.server.iptables = parse_iptables_save("*nat\n-A PREROUTING -p tcp -j RETURN\nCOMMIT\n")[0]
    with pytest.raises(RemoraError, match="destination port"):
        explain_source_ip(ev)


def test_port_from_the_inbound_cluster_name(data: Path) -> None:
    """The seed's nat listing and its `inbound|18080||` cluster JSON alone: the port is
    in the cluster's name, so explain infers instead of asking for --to (issue 13)."""
    ev = Evidence()
    ef.add_iptables(ev.server, data / "seed_redirect_nat.txt")
    ef.add_config(ev.server, data / "seed_inbound_cluster.json")
    report = explain_source_ip(ev)
    assert report.facts["port"].value == "18080"
    assert "inbound|18080||" in report.facts["port"].source
    assert report.verdict.app_sees == "127.0.0.6"
    assert report.verdict.kind == "inferred"
    # two inbound ports named: no single answer, so it still asks
    ev.server.config.clusters["inbound|9090||"] = dict(ev.server.config.clusters[
        "inbound|18080||"], name="inbound|9090||")
    with pytest.raises(RemoraError, match="destination port"):
        explain_source_ip(ev)


def istio_dumps(data: Path, goldens: Path) -> Evidence:
    """istioctl-style config dumps (camelCase, mTLS, EDS, istio.alpn) for the seed's pods."""
    ev = Evidence()
    ef.add_config(ev.server, data / "istio_server_config_dump.json")
    ef.add_config(ev.client, data / "istio_client_config_dump.json")
    ef.add_iptables(ev.server, data / "seed_redirect_nat.txt")
    ef.add_iptables(ev.client, goldens / "DERIVED-default-injection-redirect.txt.notgolden")
    ev.target.host = "simple-server-svc.demo-to"
    return ev


def test_istio_config_dumps_mtls_path(data: Path, goldens: Path) -> None:
    ev = istio_dumps(data, goldens)
    ef.add_access_log(ev.server, data / "seed_server_access.log")
    r = explain_source_ip(ev)
    assert r.facts["service_ip"].value == "172.16.234.188"  # from the route's domains
    c, s = r.steps[1].sidecar, r.steps[3].sidecar
    assert c is not None and s is not None
    assert c.handoff is not None and c.listener == "0.0.0.0_18080"
    assert c.cluster == "outbound|18080||simple-server-svc.demo-to.svc.cluster.local"
    assert c.cluster_type == "EDS" and c.endpoint == "10.20.0.77:18080"
    assert c.upstream_tls is not None and c.upstream_tls.mode == "TLS"
    assert c.upstream_tls.sni == "outbound_.18080_._.simple-server-svc.demo-to.svc.cluster.local"
    assert c.upstream_tls.alpn == ("istio-http/1.1", "istio", "http/1.1")  # istio.alpn
    # the server picks the mTLS HTTP chain for port 18080, by Envoy's precedence
    assert s.transport_protocol == "tls" and s.chain == "0.0.0.0_18080"
    assert s.chain_match == ("Trans: tls; App: istio-http/1.0,istio-http/1.1,istio-h2; "
                             "Addr: *:18080")
    assert s.chain_reasons == ("destination_port 18080", "transport_protocol tls",
                               "application protocol istio-http/1.1")
    assert s.network_filter == "envoy.filters.network.http_connection_manager"
    assert r.verdict.app_sees == "127.0.0.6" and r.verdict.confirmed
    # the pod names in the fix and in the commands come from the Istio node ids
    assert r.verdict.fixes[0].commands[0].startswith(
        "remora patch deployment simple-server -n demo-to -p")
    assert [m.what for m in r.missing] == [
        "server pod mangle table (a TPROXY or REDIRECT rule there could decide first)"]
    assert "simple-server-86b499d4dd-bjrjz -n demo-to" in r.missing[0].command


def test_istio_config_dump_without_endpoints(data: Path, goldens: Path) -> None:
    ev = istio_dumps(data, goldens)
    assert ev.client.config is not None
    ev.client.config.endpoints.clear()
    ev.client.config.has_endpoints = False
    r = explain_source_ip(ev)
    assert r.steps[1].status == "unknown"
    cmd = ("istioctl proxy-config endpoint simple-client-54f4f5cccb-mzjkw -n demo-from "
           "--cluster 'outbound|18080||simple-server-svc.demo-to.svc.cluster.local' -o json")
    assert cmd in [m.command for m in r.missing]
    # the server side still decides the verdict: its sidecar dials from 127.0.0.6
    assert r.verdict.app_sees == "127.0.0.6"


def test_what_if_tproxy_config_is_the_tproxy_reference(reference: Path) -> None:
    """The compare table's TPROXY transformation of the REDIRECT reference config gives
    exactly the TPROXY reference config that a real Envoy runs."""
    from remora.diagnose.envoy.config import EnvoyConfig, parse_config_text
    from remora.diagnose.source_ip.compare import what_if_config

    def load(name: str) -> EnvoyConfig:
        cfg = EnvoyConfig()
        parse_config_text(cfg, (reference / name).read_text(), name)
        return cfg

    redirect, tproxy = load("server-redirect.json"), load("server-tproxy.json")
    assert redirect.listeners != tproxy.listeners
    assert what_if_config(redirect, "TPROXY", False).listeners == tproxy.listeners
    assert what_if_config(tproxy, "REDIRECT", False).listeners == redirect.listeners


@pytest.mark.parametrize("rules,config,seen", [
    ("redirect.rules", "server-redirect.json", "127.0.0.6"),
    ("tproxy.rules", "server-tproxy.json", "10.20.0.78"),
])
def test_reference_rules_as_observed_with_real_envoy(reference: Path, rules: str, config: str,
                                                     seen: str) -> None:
    """reference/envoy-sidecar/README.md: with these rules and configs a real Envoy gave the
    seed's server RemoteAddr=127.0.0.6 (REDIRECT) and 10.20.0.78 (TPROXY)."""
    ev = Evidence()
    ef.add_iptables(ev.server, reference / rules)
    ef.add_config(ev.server, reference / config)
    ev.client.ip = "10.20.0.78"
    r = explain_source_ip(ev)
    assert r.verdict.failure is None and r.verdict.app_sees == seen
    assert r.steps[3].follow_up is not None and r.steps[3].follow_up.capture.kind == "none"


def test_server_only_dump_and_log_pick_the_http_mtls_chain(data: Path) -> None:
    """Without the client's config, the log's SNI and protocol stand in for the client's
    TLS hello (ALPN istio-http/1.1 for HTTP/1.1), so the HTTP mTLS chain is chosen."""
    ev = Evidence()
    ef.add_config(ev.server, data / "istio_server_config_dump.json")
    ef.add_iptables(ev.server, data / "seed_redirect_nat.txt")
    ef.add_access_log(ev.server, data / "seed_server_access.log")
    r = explain_source_ip(ev)
    s = r.steps[3].sidecar
    assert s is not None and s.application_protocols[0] == "istio-http/1.1"
    assert s.network_filter == "envoy.filters.network.http_connection_manager"
    assert any("assumed from its protocol" in n for n in r.steps[1].notes)
    assert r.verdict.app_sees == "127.0.0.6" and r.verdict.confirmed


def test_client_loop_without_the_gid_rules(reference: Path, goldens: Path) -> None:
    """A TPROXY-mode sidecar runs as uid 0 / gid 1337: without the --gid-owner RETURN
    rules its own outbound connection is redirected back to 15001 (reference README)."""
    ev = reference_pair(reference, goldens, "REDIRECT")
    text = (goldens / "inbound-ports-wildcard-tproxy.golden").read_text()
    text = "\n".join(line for line in text.splitlines() if "--gid-owner" not in line)
    last = "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"
    text = text.replace(last, last + "\n-A ISTIO_OUTPUT -j ISTIO_REDIRECT")  # -i '*'
    ev.client.iptables = parse_iptables_save(text)[0]
    r = explain_source_ip(ev)
    step2 = r.steps[1]
    assert step2.status == "failed" and step2.summary.startswith("loop")
    assert step2.follow_up is not None and step2.follow_up.packet.uid == 0
    assert r.verdict.failure is not None and r.verdict.failure.startswith("step 2")
