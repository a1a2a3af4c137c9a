"""`explain source-ip` over IPv6 and dual stack (issue 12): ip6tables rules and IPv6
config, offline, and `::6` explained in the same two sentences as 127.0.0.6.

The evidence is real: the seed's pods injected and configured by remora's control plane
for dual stack and IPv6 (tests/unit/controlplane/seed.py: `dual`, `v6_only`; the inbound
cluster binds 127.0.0.6 with ::6 as extra_source_addresses, as Istio's
buildInboundPassthroughCluster), with the ip6tables rules remora's istio-iptables builds
from the injected istio-init args (`--ipv6`, as istio-init runs in an IPv6 pod), and the
listings the real ip6tables v1.8.9 prints for those rules (tests/data/diagnose/seed_ipv6_*,
made in a throwaway network namespace; origin in tests/data/README.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from remora.capture.argv import parse_args
from remora.capture.model import build
from remora.capture.render import restore
from remora.controlplane.generate import generate, static_bootstrap
from remora.diagnose.envoy.config import EnvoyConfig, add_document
from remora.diagnose.evidence import files as ef
from remora.diagnose.iptables.save import parse_iptables_save
from remora.diagnose.source_ip.evidence import Evidence
from remora.diagnose.source_ip.explain import Report, explain_source_ip
from remora.diagnose.source_ip.render import render_text
from remora.resources.objects import Pod
from tests.unit.controlplane.seed import (
    CLIENT_IP,
    CLIENT_IP6,
    CLUSTER_IP,
    CLUSTER_IP6,
    FQDN,
    SERVER_IP,
    SERVER_IP6,
    dual,
    v6_only,
)


def rules_of(pod: Pod, family: int) -> str:
    (init,) = [c for c in pod.spec.initContainers if c.name == "istio-init"]
    model = build(dataclasses.replace(parse_args(list(init.args)), enable_ipv6=True))
    return restore(model.v6 if family == 6 else model.v4)


def config_of(snapshot: object, pod: Pod, ip: str) -> EnvoyConfig:
    cfg = EnvoyConfig()
    sidecar = generate(snapshot, pod, ip, "/etc/remora")  # type: ignore[arg-type]
    add_document(cfg, static_bootstrap(sidecar), pod.metadata.name)
    return cfg


def evidence(tproxy: bool, v6only: bool = False, v6_primary: bool = False) -> Evidence:
    snapshot, server, client = v6_only(tproxy) if v6only else dual(tproxy, v6_primary)
    if v6_primary:
        # a SingleStack IPv6 service in the dual-stack cluster: its EDS endpoints are the
        # pods' IPv6 addresses (a dual-stack service's are each pod's primary address,
        # IPv4 here, with the IPv6 one as additional_addresses, as istiod sends them)
        snapshot = dataclasses.replace(snapshot, cluster_ips={FQDN: (CLUSTER_IP6,)})
    ev = Evidence()
    for pe, pod, ip in ((ev.server, server, SERVER_IP6 if v6only else SERVER_IP),
                        (ev.client, client, CLIENT_IP6 if v6only else CLIENT_IP)):
        for family in (4, 6):
            for rs in parse_iptables_save(rules_of(pod, family)):
                rs.family = family
                pe.add_rules(rs)
        pe.config = config_of(snapshot, pod, ip)
    return ev


def _why(r: Report) -> str:
    return " ".join(r.verdict.explanation_127)


@pytest.mark.parametrize("tproxy", [False, True])
def test_dual_stack_each_family_gets_its_answer(tproxy: bool) -> None:
    # over IPv4: 127.0.0.6 (or the client's IPv4 address), from the IPv4 rules
    ev = evidence(tproxy)
    ev.target.host, ev.target.port = CLUSTER_IP, 18080
    r4 = explain_source_ip(ev)
    assert [s.status for s in r4.steps] == ["ok"] * 4, [s.summary for s in r4.steps]
    assert r4.verdict.app_sees == (CLIENT_IP if tproxy else "127.0.0.6")
    # over IPv6 (an IPv6 service, so its EDS endpoints are the pods' IPv6 addresses): the
    # connection to its IPv6 ClusterIP walks ip6tables and the
    # sidecar binds ::6 (extra_source_addresses), or keeps the client's IPv6 address
    ev = evidence(tproxy, v6_primary=True)
    ev.target.host, ev.target.port = CLUSTER_IP6, 18080
    ev.client.ip, ev.server.ip = CLIENT_IP6, SERVER_IP6
    r6 = explain_source_ip(ev)
    assert [s.status for s in r6.steps] == ["ok"] * 4, [s.summary for s in r6.steps]
    assert r6.mode == ("TPROXY" if tproxy else "REDIRECT")
    assert r6.verdict.app_sees == (CLIENT_IP6 if tproxy else "::6")
    walked = [r.rule for s in r6.steps if s.walk for r in s.walk.steps]
    assert walked and not any("127.0.0" in text for text in walked)
    step2, step4 = r6.steps[1], r6.steps[3]
    assert step2.sidecar is not None and step2.sidecar.endpoint == f"[{SERVER_IP6}]:18080"
    assert step4.sidecar is not None
    if tproxy:
        assert step4.sidecar.upstream_source == CLIENT_IP6
        assert "TPROXY" in r6.steps[2].summary and ":::15006" not in r6.steps[2].summary
        return
    assert step4.sidecar.upstream_source == "::6"
    assert "extra_source_addresses" in step4.sidecar.upstream_source_why
    # the sidecar's own connection ::6 -> the pod's IPv6 address is let out by the ::6 rule
    assert step4.follow_up is not None and step4.follow_up.capture.kind == "none"
    assert "-s ::6/128" in step4.follow_up.capture.decided_by.rule  # type: ignore[union-attr]
    # the same two sentences as for 127.0.0.6, with IPv6's addresses and rules
    assert len(r6.verdict.explanation_127) == 2
    why = _why(r6)
    assert "So Istio binds its inbound connections to ::6 (upstream_bind_config" in why
    assert "`-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN` (in this pod" in why
    assert "! -d ::1/128" in why and "/32" not in why  # no IPv4 rule quoted
    text = render_text(r6)
    assert "the app sees ::6 (not the client fd00:10:20::78)" in text


def test_ipv6_only_pods_from_the_pod_ips_alone() -> None:
    """IPv6-only pods: the node ids carry IPv6 addresses, so IPv6 is chosen without --to."""
    ev = evidence(tproxy=False, v6only=True)
    ev.target.host = "simple-server-svc.demo-to"
    r = explain_source_ip(ev)
    assert r.facts["server_ip"].value == SERVER_IP6
    assert r.verdict.app_sees == "::6"
    assert r.steps[3].sidecar is not None
    assert r.steps[3].sidecar.upstream_source_why.endswith("::6")


def test_real_ip6tables_listings(data: Path) -> None:
    """What ip6tables v1.8.9 prints for those rules: -L -v, -L -v -n, ip6tables-save."""
    for name in ("seed_ipv6_redirect_nat.txt", "seed_ipv6_redirect_nat_numeric.txt",
                 "seed_ipv6_redirect.ip6tables-save"):
        ev = Evidence()
        ef.add_iptables(ev.server, data / name)
        assert ev.server.iptables is None and ev.server.iptables6 is not None, name
        ef.add_config(ev.server, data / "seed_inbound_cluster.json")
        r = explain_source_ip(ev)
        # no address in the evidence but IPv6 rules: IPv6 documentation placeholders
        assert r.facts["server_ip"].value == "2001:db8::20", name
        assert r.facts["port"].value == "18080"
        assert r.steps[2].walk is not None
        assert r.steps[2].walk.capture.kind == "REDIRECT", name
        assert r.steps[2].walk.capture.port == 15006
    ev = Evidence()
    ef.add_iptables(ev.server, data / "seed_ipv6_tproxy_listing.txt")
    ef.add_iptables(ev.server, data / "seed_redirect_nat.txt")  # IPv4 beside it: kept apart
    assert ev.server.iptables is not None and ev.server.iptables6 is not None
    ev.server.ip, ev.client.ip = SERVER_IP6, CLIENT_IP6
    ev.target.port = 18080
    r = explain_source_ip(ev)
    assert r.mode == "TPROXY"
    step3 = r.steps[2]
    assert step3.walk is not None and step3.walk.capture.kind == "TPROXY"
    assert step3.walk.capture.port == 15006
    assert "ip6tables-save" in "\n".join(m.command for m in r.missing)


@pytest.mark.parametrize("tproxy", [False, True])
@pytest.mark.parametrize("family", [4, 6])
def test_native_nftables_rules_both_families(data: Path, tproxy: bool, family: int) -> None:
    """Istio's native nftables mode: `nft list ruleset` as the real nft 1.0 prints the
    tables remora's istio-iptables writes for the seed's dual-stack server (inet tables,
    one rule per family where an address is matched). The same answers as iptables."""
    ev = evidence(tproxy, v6_primary=family == 6)
    ev.server.iptables = ev.server.iptables6 = None
    name = f"seed_nft_{'tproxy' if tproxy else 'redirect'}_ruleset.txt"
    ef.add_iptables(ev.server, data / name)
    assert ev.server.iptables is not None and ev.server.iptables6 is not None
    assert ev.server.iptables.family == 4 and ev.server.iptables6.family == 6
    host, server_ip, client_ip = ((CLUSTER_IP6, SERVER_IP6, CLIENT_IP6) if family == 6
                                  else (CLUSTER_IP, SERVER_IP, CLIENT_IP))
    ev.target.host, ev.target.port = host, 18080
    ev.server.ip, ev.client.ip = server_ip, client_ip
    r = explain_source_ip(ev)
    assert [s.status for s in r.steps] == ["ok"] * 4, [s.summary for s in r.steps]
    assert r.mode == ("TPROXY" if tproxy else "REDIRECT")
    step3 = r.steps[2]
    assert step3.walk is not None
    assert step3.walk.capture.kind == ("TPROXY" if tproxy else "REDIRECT")
    assert step3.walk.capture.port == 15006
    bound = "::6" if family == 6 else "127.0.0.6"
    assert r.verdict.app_sees == (client_ip if tproxy else bound)
    if not tproxy:
        assert f"-A ISTIO_OUTPUT -o lo -s {bound}" in " ".join(r.verdict.explanation_127)


def test_nft_golden_script_form(goldens: Path) -> None:
    """The `add rule inet ...` script istio-iptables applies with `nft -f` (Istio's nft
    golden for TPROXY mode) reads the same way."""
    ev = Evidence()
    ef.add_iptables(ev.server, goldens.parent / "istio-nftables" / "tproxy.golden")
    assert ev.server.iptables is not None and ev.server.iptables6 is not None
    mangle = ev.server.iptables6.tables["mangle"].chains["ISTIO_TPROXY"].rules
    assert [r.target.name for r in mangle] == ["TPROXY"]
    assert mangle[0].target.to_port == 15006
    inbound = ev.server.iptables.tables["mangle"].chains["ISTIO_INBOUND"].rules
    assert any("127.0.0.6" in r.text() for r in inbound)
    assert not any("::6" in r.text() for r in inbound)
