"""apply / verify / apply again / drift / reconcile / cleanup on a real kernel."""

from __future__ import annotations

import pytest

from remora.capture import apply, state
from remora.capture.argv import parse_args
from remora.capture.config import CaptureConfig
from remora.capture.routing import Pyroute2Routing
from remora.capture.runner import SubprocessRunner
from remora.errors import RemoraError
from tests.lab import Lab, Namespace
from tests.netns.capture_helpers import INJECTOR_ARGS, injector_config, ip, save

pytestmark = pytest.mark.netns

FOREIGN = [
    ["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9999", "-j", "RETURN"],
    ["iptables", "-t", "mangle", "-A", "PREROUTING", "-i", "eth0", "-j", "RETURN"],
]


def _istio_save(lab: Lab, ns: Namespace, config: CaptureConfig
                ) -> tuple[state.View, state.View]:
    """(installed, expected) Istio parts, computed the way verify does."""
    session = apply.Session(config, ns.path, SubprocessRunner(), Pyroute2Routing())
    ours = session.ours(session.v4)
    actual = state.istio_view(state.parse_save(save(lab, ns)), ours)
    expected = state.istio_view(session.canonical(session.v4), ours)
    return actual, expected


@pytest.mark.parametrize("mode", ["REDIRECT", "TPROXY"])
def test_apply_twice_verify_cleanup(lab: Lab, mode: str) -> None:
    _, ns = lab.pair()
    for argv in FOREIGN:  # somebody else's rules, which capture must leave alone
        lab.run(ns, argv)
    before, rules_before = save(lab, ns), ip(lab, ns, "rule")
    config = injector_config(mode, "--redirect-dns", "--capture-all-dns", "-c", "eth9")

    assert apply.apply(config, ns.path).action == "applied"
    after_first = save(lab, ns)
    actual, expected = _istio_save(lab, ns, config)
    assert actual == expected and actual  # iptables-save holds exactly the model
    assert "ISTIO_OUTPUT_DNS" in after_first and "-j CT --zone 1" in after_first
    assert apply.verify(config, ns.path).ok

    again = apply.apply(config, ns.path)
    assert again.action == "already-installed"
    assert save(lab, ns) == after_first  # nothing changed, nothing duplicated
    assert ip(lab, ns, "rule").count("lookup 133") == (1 if mode == "TPROXY" else 0)

    apply.cleanup(config, ns.path)
    assert save(lab, ns) == before
    assert ip(lab, ns, "rule") == rules_before
    assert "ISTIO" not in save(lab, ns)
    assert not apply.verify(config, ns.path).ok


def test_drift_is_reported_refused_and_reconciled(lab: Lab) -> None:
    ns = lab.namespace("dr")
    config = injector_config()
    apply.apply(config, ns.path)
    lab.run(ns, ["iptables", "-t", "nat", "-D", "ISTIO_INBOUND", "-p", "tcp", "--dport",
                 "15021", "-j", "RETURN"])
    lab.run(ns, ["iptables", "-t", "nat", "-A", "ISTIO_OUTPUT", "-d", "10.9.9.9", "-j",
                 "RETURN"])
    result = apply.verify(config, ns.path)
    assert not result.ok
    assert any("--dport 15021" in line for line in result.missing)
    assert any("10.9.9.9" in line for line in result.unexpected)

    drifted = save(lab, ns)
    with pytest.raises(RemoraError, match="differ from the requested") as refused:
        apply.apply(config, ns.path)
    assert "--reconcile" in (refused.value.fix or "")
    assert save(lab, ns) == drifted  # refused: untouched

    reconciled = parse_args([*INJECTOR_ARGS, "--reconcile"], env={})
    assert apply.apply(reconciled, ns.path).action == "reconciled"
    assert apply.verify(config, ns.path).ok


def test_failed_restore_leaves_namespace_as_it_was(lab: Lab) -> None:
    ns = lab.namespace("fr")
    lab.run(ns, FOREIGN[0])
    before = save(lab, ns)
    # A group that does not exist: iptables-restore rejects `--gid-owner`, atomically.
    bad = parse_args(INJECTOR_ARGS, env={"ISTIO_OUTBOUND_OWNER_GROUPS": "no-such-group-remora"})
    with pytest.raises(RemoraError, match="rejected"):
        apply.apply(bad, ns.path)
    assert save(lab, ns) == before
    tproxy = parse_args([*INJECTOR_ARGS, "-m", "TPROXY"],
                        env={"ISTIO_OUTBOUND_OWNER_GROUPS": "no-such-group-remora"})
    with pytest.raises(RemoraError):
        apply.apply(tproxy, ns.path)
    assert "lookup 133" not in ip(lab, ns, "rule")  # routing only after rules succeed


def test_dual_stack_installs_ipv6_rules_and_address(lab: Lab) -> None:
    ns = lab.namespace("v6")
    before4, before6 = save(lab, ns), save(lab, ns, ipv6=True)
    config = injector_config("TPROXY", "--dual-stack")
    outcome = apply.apply(config, ns.path)
    assert outcome.ruleset.ipv6
    v6 = save(lab, ns, ipv6=True)
    assert "-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN" in v6
    assert "::6/128" in ip(lab, ns, "-6", "addr", "show", "dev", "lo")
    assert "lookup 133" in ip(lab, ns, "-6", "rule")
    assert apply.verify(config, ns.path).ok
    apply.cleanup(config, ns.path)
    assert save(lab, ns) == before4 and save(lab, ns, ipv6=True) == before6
    assert "::6/128" not in ip(lab, ns, "-6", "addr", "show", "dev", "lo")
    assert "lookup 133" not in ip(lab, ns, "-6", "rule")


def test_nftables_backend_apply_twice_verify_cleanup(lab: Lab) -> None:
    ns = lab.namespace("nft")
    before = lab.run(ns, ["nft", "list", "ruleset"]).stdout
    config = injector_config("TPROXY", "--native-nftables", "--redirect-dns",
                             "--capture-all-dns")
    assert apply.apply(config, ns.path).action == "applied"
    tables = lab.run(ns, ["nft", "list", "tables"]).stdout.decode()
    assert tables.split() == ["table", "inet", "istio-proxy-nat", "table", "inet",
                              "istio-proxy-mangle", "table", "inet", "istio-proxy-raw"]
    assert "ISTIO" not in save(lab, ns)  # no iptables rules with this backend
    assert apply.verify(config, ns.path).ok
    assert apply.apply(config, ns.path).action == "already-installed"
    assert ip(lab, ns, "rule").count("lookup 133") == 1
    redirect = injector_config("REDIRECT", "--native-nftables")
    assert not apply.verify(redirect, ns.path).ok
    with pytest.raises(RemoraError, match="differ"):
        apply.apply(redirect, ns.path)
    apply.cleanup(config, ns.path)
    assert lab.run(ns, ["nft", "list", "ruleset"]).stdout == before
    assert "lookup 133" not in ip(lab, ns, "rule")
