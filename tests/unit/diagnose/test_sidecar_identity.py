"""The sidecar's uid/gid and TPROXY's policy routing in `explain source-ip`: from the
evidence when known (live: the sidecar's /proc/PID/status and `ip rule` in the pod;
offline: --sidecar-uid/--sidecar-gid, --ip-rules), else Istio's defaults, said as assumed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from remora.cli.main import main
from remora.diagnose.evidence import files as ef
from remora.diagnose.evidence.lab_pod_facts import parse_status_ids, sidecar_ids, sidecar_pid
from remora.diagnose.evidence.target import LabPod
from remora.diagnose.iptables.policy_routing import check_tproxy, parse_policy_text
from remora.diagnose.iptables.walk import WalkResult
from remora.diagnose.source_ip.evidence import Evidence
from remora.diagnose.source_ip.explain import explain_source_ip
from remora.errors import RemoraError

REDIRECT_RULES = "DERIVED-default-injection-redirect.txt.notgolden"
TPROXY_RULES = "inbound-ports-wildcard-tproxy.golden"
ISTIO_ROUTING = """\
$ ip rule show
0:\tfrom all lookup local
32765:\tfrom all fwmark 0x539 lookup 133
32766:\tfrom all lookup main
32767:\tfrom all lookup default
$ ip route show table 133
local default dev lo scope host
"""


def pair(reference: Path, goldens: Path, mode: str) -> Evidence:
    ev = Evidence()
    ef.add_config(ev.client, reference / "client-redirect.json")
    ef.add_iptables(ev.client, goldens / REDIRECT_RULES)
    server = "server-tproxy.json" if mode == "TPROXY" else "server-redirect.json"
    ef.add_config(ev.server, reference / server)
    ef.add_iptables(ev.server, goldens / (TPROXY_RULES if mode == "TPROXY" else REDIRECT_RULES))
    ev.target.host, ev.target.port = "srv.default.svc.cluster.local", 18080
    return ev


def deciding_rule(walk: WalkResult) -> str:
    """The text of the rule that decided a walk (its capture.decided_by)."""
    assert walk.capture.decided_by is not None
    ref = walk.capture.decided_by.ref()
    [step] = [s for s in walk.steps if f"{s.table}/{s.chain} #{s.index}" == ref]
    return str(step.rule)


def test_unknown_ids_are_istios_defaults_and_said_so(reference: Path, goldens: Path) -> None:
    r = explain_source_ip(pair(reference, goldens, "TPROXY"))
    follow = r.steps[1].follow_up
    assert follow is not None and (follow.packet.uid, follow.packet.gid) == (1337, 1337)
    assert deciding_rule(follow) == "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"
    server_follow = r.steps[3].follow_up
    assert server_follow is not None
    assert (server_follow.packet.uid, server_follow.packet.gid) == (0, 1337)
    assert any(a.startswith("the client sidecar runs as uid 1337 and gid 1337 (Istio's "
                            "default in REDIRECT mode") for a in r.assumptions)
    assert any(a.startswith("the server sidecar runs as uid 0 and gid 1337 (Istio's "
                            "default in TPROXY mode") for a in r.assumptions)


def test_a_uid_0_gid_1337_sidecar_is_let_out_by_the_gid_rule(reference: Path,
                                                               goldens: Path) -> None:
    """Istio's TPROXY sidecar (and a sidecar started by hand as uid 0 / gid 1337) runs as
    uid 0 / gid 1337: the kernel lets its connections out by `--gid-owner 1337`, and so
    must the trace."""
    ev = pair(reference, goldens, "REDIRECT")
    ev.client.proxy_uid, ev.client.proxy_gid = 0, 1337
    ev.server.proxy_uid, ev.server.proxy_gid = 0, 1337
    r = explain_source_ip(ev)
    follow = r.steps[1].follow_up
    assert follow is not None and (follow.packet.uid, follow.packet.gid) == (0, 1337)
    assert follow.capture.kind == "none"
    assert deciding_rule(follow) == "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN"
    assert not any("sidecar runs as" in a for a in r.assumptions)
    # the loop 127.0.0.6 avoids is the one of the sidecar's own group
    assert r.verdict.app_sees == "127.0.0.6"
    assert "--gid-owner 1337 -j ISTIO_IN_REDIRECT" in r.verdict.explanation_127[0]


def test_only_a_gid_given_assumes_the_uid(reference: Path, goldens: Path) -> None:
    ev = pair(reference, goldens, "REDIRECT")
    ev.client.proxy_gid = 1337
    r = explain_source_ip(ev)
    assert any(a.startswith("the client sidecar runs as uid 1337 (") for a in r.assumptions)


def test_policy_routing_parse_and_check() -> None:
    pr = parse_policy_text(ISTIO_ROUTING, "ip.txt")
    assert [r.priority for r in pr.rules] == [0, 32765, 32766, 32767]
    assert pr.rules[1].fwmark == 0x539 and pr.rules[1].table == "133"
    assert pr.tables == {"133": ["local default dev lo scope host"]}
    ok = check_tproxy(pr, 1337)
    assert ok.established and "32765: from all fwmark 0x539 lookup 133" in ok.summary
    assert not check_tproxy(pr, 0x538).established  # another mark goes nowhere special
    no_route = parse_policy_text(ISTIO_ROUTING.split("$ ip route")[0])
    check = check_tproxy(no_route, 1337)
    assert not check.established and "table 133 was not collected" in check.summary
    empty_table = parse_policy_text(ISTIO_ROUTING.replace("local default dev lo scope host",
                                                          "10.0.0.0/8 dev eth0"))
    assert "no `local default dev lo` route" in check_tproxy(empty_table, 1337).summary
    no_rule = parse_policy_text("0:\tfrom all lookup local\n32766:\tfrom all lookup main\n")
    assert "no `ip rule` sends fwmark 0x539" in check_tproxy(no_rule, 1337).summary
    # a masked mark and `ip route show table all` lines that name their table
    masked = parse_policy_text("100: from all fwmark 0x539/0xfff lookup 7\n"
                               "local default dev lo table 7 proto kernel scope host\n"
                               "default via 10.0.0.1 dev eth0\n")
    assert masked.tables["7"][0].startswith("local default dev lo table 7")
    assert check_tproxy(masked, 0x1539).established


def test_tproxy_policy_routing_established_or_not(reference: Path, goldens: Path) -> None:
    ev = pair(reference, goldens, "TPROXY")
    r = explain_source_ip(ev)
    assert any("TPROXY policy routing" in m.what for m in r.missing)  # not given: unknown
    ev.server.policy_routing = parse_policy_text(ISTIO_ROUTING)
    r = explain_source_ip(ev)
    assert not any("policy routing" in m.what for m in r.missing)
    [note] = [n for n in r.steps[2].notes if "policy routing" in n]
    assert note.startswith("policy routing: `32765: from all fwmark 0x539 lookup 133`")
    ev.server.policy_routing = parse_policy_text("32766:\tfrom all lookup main\n")
    r = explain_source_ip(ev)
    [note] = [n for n in r.steps[2].notes if "policy routing" in n]
    assert note.startswith("policy routing NOT in place: no `ip rule` sends fwmark 0x539")


def test_proc_status_ids_and_the_sidecar_pid(tmp_path: Path) -> None:
    status = "Name:\tpython3\nUid:\t0\t0\t0\t0\nGid:\t1337\t1337\t1337\t1337\nGroups:\t\n"
    assert parse_status_ids(status) == (0, 1337)
    assert parse_status_ids("Uid:\t5\t6\t7\t8\nGid:\t1\t2\t3\t4\n") == (8, 4)  # fs ids
    assert parse_status_ids("Name: x\n") is None
    # a fake /proc: the process is in the pod's namespace (same inode) -> its ids
    netns_file = tmp_path / "pod-netns"
    netns_file.write_text("")
    proc = tmp_path / "proc"
    (proc / "4242" / "ns").mkdir(parents=True)
    os.symlink(netns_file, proc / "4242" / "ns" / "net")
    (proc / "4242" / "status").write_text(status)
    obj = {"status": {"containerStatuses": [
        {"name": "demo", "remora": {"pid": 11}},
        {"name": "istio-proxy", "remora": {"pid": 4242}}]}}
    pod = LabPod("srv", "demo-to", "10.20.0.77", str(netns_file), True, "demo", obj=obj)
    assert sidecar_pid(pod) == 4242
    ids = sidecar_ids(pod, proc=str(proc))
    assert ids is not None and (ids.uid, ids.gid) == (0, 1337)
    assert ids.source == "/proc/4242/status of demo-to/srv's istio-proxy process"
    # a PID now in another namespace (reused) is not the sidecar
    other = tmp_path / "other-netns"
    other.write_text("")
    os.unlink(proc / "4242" / "ns" / "net")
    os.symlink(other, proc / "4242" / "ns" / "net")
    assert sidecar_ids(pod, proc=str(proc)) is None
    stopped = LabPod("srv", "demo-to", "10.20.0.77", str(netns_file), True, "demo",
                     obj={"status": {"containerStatuses": [
                         {"name": "istio-proxy", "remora": {"pid": 0}}]}})
    assert sidecar_ids(stopped, proc=str(proc)) is None


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["explain", "source-ip", *argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_sidecar_ids_and_ip_rules(reference: Path, goldens: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "ip-rules.txt"
    rules.write_text(ISTIO_ROUTING)
    base = ["--config-dump", f"client={reference / 'client-redirect.json'}",
            "--iptables", f"client={goldens / REDIRECT_RULES}",
            "--config-dump", f"server={reference / 'server-tproxy.json'}",
            "--iptables", f"server={goldens / TPROXY_RULES}",
            "--to", "srv.default.svc.cluster.local:18080"]
    code, out, _ = run([*base, "--sidecar-uid", "client=0", "--sidecar-gid", "client=1337",
                        "--ip-rules", f"server={rules}"], capsys)
    assert code == 0
    assert "(out eth0, uid 0, gid 1337): not captured" in out
    assert "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN  => RETURN" in out
    assert "policy routing: `32765: from all fwmark 0x539 lookup 133`" in out
    assert "TPROXY policy routing" not in out
    assert "the client sidecar runs as" not in out
    assert "the server sidecar runs as uid 0 and gid 1337" in out  # not given: assumed
    code, _, err = run([*base, "--sidecar-uid", "client=proxy"], capsys)
    assert code != 0 and "--sidecar-uid 'proxy' is not a number" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("local default dev lo scope host\n")
    code, _, err = run([*base, "--ip-rules", str(empty)], capsys)
    assert code != 0 and "has no `ip rule show` lines" in err


def test_ip_rules_file_in_a_dump_dir(reference: Path, goldens: Path, tmp_path: Path) -> None:
    server = tmp_path / "server"
    server.mkdir()
    (server / "ip-rules.txt").write_text(ISTIO_ROUTING)
    (server / "iptables.txt").write_text((goldens / TPROXY_RULES).read_text())
    ev = ef.load_dump_dir(tmp_path)
    assert ev.server.policy_routing is not None and ev.server.iptables is not None
    assert any(s.startswith("policy routing: ") for s in ev.server.sources)
    with pytest.raises(RemoraError):
        ef.set_proxy_id(ev.server, "gid", "-1")
