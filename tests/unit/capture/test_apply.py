"""apply / verify / cleanup decisions, driven by an in-memory iptables (no root needed)."""

from __future__ import annotations

import socket

import pytest

from remora.capture import apply, render
from remora.capture.argv import parse_args
from remora.capture.config import CaptureConfig, with_overrides
from remora.capture.routing import Item, RecordingRouting
from remora.errors import RemoraError
from tests.unit.capture.fake_iptables import FakeIptables

INJECTOR = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
            "-b", "*", "-d", "15090,15021,15020"]


def config(*extra: str, ipv6: bool = False) -> CaptureConfig:
    return with_overrides(parse_args([*INJECTOR, *extra], env={}), enable_ipv6=ipv6,
                          dns_servers_v4=(), dns_servers_v6=())


def test_dry_run_is_the_golden_transcript_and_names_the_routing() -> None:
    c = config("-m", "TPROXY")
    fake = FakeIptables()
    runner = fake.runner(dry=True)
    outcome = apply.apply(c, None, runner=runner, routing=RecordingRouting())
    assert runner.transcript() == render.transcript(outcome.ruleset)
    assert outcome.notes == ["would run: ip rule add fwmark 1337 lookup 133",
                             "would run: ip route add local default dev lo table 133"]


def test_apply_then_apply_again_changes_nothing() -> None:
    fake, routes = FakeIptables(), RecordingRouting()
    c = config("-m", "TPROXY")
    assert apply.apply(c, None, runner=fake.runner(), routing=routes).action == "applied"
    snapshot = repr(fake.v4)
    assert routes.state == {Item("rule", socket.AF_INET), Item("route", socket.AF_INET)}
    runner = fake.runner()
    assert apply.apply(c, None, runner=runner, routing=routes).action == "already-installed"
    assert repr(fake.v4) == snapshot
    assert not [argv for argv, _ in runner.calls if argv[0].endswith("-restore")]
    assert apply.verify(c, None, runner=fake.runner(), routing=routes).ok


def test_missing_routing_is_repaired_on_reapply() -> None:
    fake, routes = FakeIptables(), RecordingRouting()
    c = config("-m", "TPROXY")
    apply.apply(c, None, runner=fake.runner(), routing=routes)
    routes.state = {Item("rule", socket.AF_INET)}
    v = apply.verify(c, None, runner=fake.runner(), routing=routes)
    assert v.missing == ["ip route add local default dev lo table 133"]
    apply.apply(c, None, runner=fake.runner(), routing=routes)
    assert Item("route", socket.AF_INET) in (routes.state or set())


def test_drift_is_refused_untouched_then_reconciled_in_one_restore() -> None:
    fake, routes = FakeIptables(), RecordingRouting()
    apply.apply(config(), None, runner=fake.runner(), routing=routes)
    fake.v4["nat"]["ISTIO_OUTPUT"].pop()  # someone removed the catch-all redirect
    drifted = repr(fake.v4)
    v = apply.verify(config(), None, runner=fake.runner(), routing=routes)
    assert v.missing == ["nat: -A ISTIO_OUTPUT -j ISTIO_REDIRECT"] and not v.unexpected
    with pytest.raises(RemoraError) as err:
        apply.apply(config(), None, runner=fake.runner(), routing=routes)
    assert "--reconcile" in (err.value.fix or "")
    assert repr(fake.v4) == drifted
    runner = fake.runner()
    outcome = apply.apply(config("--reconcile"), None, runner=runner, routing=routes)
    assert outcome.action == "reconciled"
    restores = [stdin for argv, stdin in runner.calls if argv[0] == "iptables-restore"]
    assert len(restores) == 1 and "-X ISTIO_OUTPUT" in (restores[0] or "")
    assert apply.verify(config(), None, runner=fake.runner(), routing=routes).ok


def test_cleanup_removes_istio_part_only_and_tproxy_leftovers() -> None:
    fake, routes = FakeIptables(), RecordingRouting()
    fake.v4 = {"nat": {"PREROUTING": [], "INPUT": [], "OUTPUT": ["-p udp -j RETURN"],
                       "POSTROUTING": []}}
    apply.apply(config("-m", "TPROXY", "-c", "eth9"), None, runner=fake.runner(),
                routing=routes)
    assert fake.v4["mangle"]["OUTPUT"]
    # A plain (REDIRECT, no -c) cleanup still knows the TPROXY mangle rules are Istio's.
    outcome = apply.cleanup(config("-c", "eth9"), None, runner=fake.runner(), routing=routes)
    assert "mangle" not in fake.v4  # emptied, and dropped like a table nobody created
    assert fake.v4["nat"]["OUTPUT"] == ["-p udp -j RETURN"]
    assert set(fake.v4["nat"]) == {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}
    assert not routes.state
    assert any("ip rule" in note for note in outcome.notes)


def test_failed_ipv6_restore_rolls_back_ipv4() -> None:
    fake, routes = FakeIptables(fail={"ip6tables-restore"}), RecordingRouting()
    with pytest.raises(RemoraError, match="ip6tables-restore rejected"):
        apply.apply(config(ipv6=True), None, runner=fake.runner(), routing=routes)
    assert "ISTIO" not in repr(fake.v4) and not routes.state


def test_failed_routing_rolls_back_rules_and_routes() -> None:
    fake = FakeIptables()
    routes = RecordingRouting(fail_on=Item("route", socket.AF_INET))
    with pytest.raises(RemoraError, match="ip route add local default"):
        apply.apply(config("-m", "TPROXY"), None, runner=fake.runner(), routing=routes)
    assert "ISTIO" not in repr(fake.v4)
    assert not routes.state  # the rule added before the failing route is gone again


def test_failed_ipv4_restore_changes_nothing() -> None:
    fake, routes = FakeIptables(fail={"iptables-restore"}), RecordingRouting()
    with pytest.raises(RemoraError, match="rejected the capture rules") as err:
        apply.apply(config("-m", "TPROXY"), None, runner=fake.runner(), routing=routes)
    assert "nothing was changed" in (err.value.fix or "")
    assert fake.v4 == {} and not routes.state


def test_missing_binaries_are_named() -> None:
    fake = FakeIptables()
    runner = fake.runner()
    runner.missing = frozenset({"iptables-restore"})
    with pytest.raises(RemoraError, match="iptables-restore is not installed") as err:
        apply.apply(config(), None, runner=runner, routing=RecordingRouting())
    assert "apt-get install iptables" in (err.value.fix or "")
    assert runner.calls == []


def test_ipv6_adds_loopback_address_and_v6_routing() -> None:
    fake, routes = FakeIptables(), RecordingRouting()
    apply.apply(config("-m", "TPROXY", ipv6=True), None, runner=fake.runner(), routing=routes)
    assert routes.state == {Item("addr", socket.AF_INET6), Item("rule", socket.AF_INET),
                            Item("rule", socket.AF_INET6), Item("route", socket.AF_INET),
                            Item("route", socket.AF_INET6)}
    assert "-o lo -s ::6/128 -j RETURN" in fake.v6["nat"]["ISTIO_OUTPUT"]
