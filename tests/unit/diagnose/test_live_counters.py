"""Counters read before and after a live probe, and the probe's access-log lines (no lab)."""

from __future__ import annotations

import ipaddress

from remora.diagnose.evidence.lab_counters import LiveCounters, annotate, complete_tables
from remora.diagnose.evidence.lab_probe import parse_response_head, probe_entries, request_bytes
from remora.diagnose.iptables.model import Packet, Ruleset
from remora.diagnose.iptables.save import parse_iptables_save
from remora.diagnose.iptables.walk import walk

NAT = """*nat
:PREROUTING ACCEPT [{p}:0]
:OUTPUT ACCEPT [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
[{o}:{ob}] -A OUTPUT -j ISTIO_OUTPUT
[3:180] -A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
[0:0] -A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
[{r}:{rb}] -A ISTIO_OUTPUT -j ISTIO_REDIRECT
[{r}:{rb}] -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
"""


def rules(o: int, r: int, p: int = 0) -> str:
    return NAT.format(o=o, ob=o * 60, r=r, rb=r * 60, p=p)


def test_annotate_marks_the_rules_the_probe_moved() -> None:
    before = parse_iptables_save(rules(7, 2))[0]
    after = parse_iptables_save(rules(8, 3))[0]
    moved = annotate(before, after)
    assert [(m.chain, m.index, m.delta, m.packets) for m in moved] == [
        ("OUTPUT", 1, 1, 8), ("ISTIO_OUTPUT", 3, 1, 3), ("ISTIO_REDIRECT", 1, 1, 3)]
    assert moved[2].line() == ("nat/ISTIO_REDIRECT #1  +1 (3 pkts)  "
                               "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001")
    # the walk shows them with their totals and what moved
    pkt = Packet(ipaddress.ip_address("10.20.0.78"), ipaddress.ip_address("172.16.1.170"),
                 18080, sport=40000, out_iface="eth0", uid=0, gid=0)
    w = walk(after, pkt, "local")
    shown = {s.ref(): s.counters for s in w.steps if s.matched}
    assert shown["nat/ISTIO_REDIRECT #1"] == "3 pkts, +1 during the probe"
    assert shown["nat/OUTPUT #1"] == "8 pkts, +1 during the probe"
    unchanged = [s.counters for s in w.steps if s.ref() == "nat/ISTIO_OUTPUT #1"]
    assert unchanged == ["3 pkts, unchanged during the probe"]


def test_changed_rules_are_not_paired() -> None:
    before = parse_iptables_save(rules(7, 2).replace("15001", "15002"))[0]
    after = parse_iptables_save(rules(8, 3))[0]
    moved = annotate(before, after)
    assert [(m.chain, m.index) for m in moved] == [("OUTPUT", 1), ("ISTIO_OUTPUT", 3)]
    redirect = after.tables["nat"].chains["ISTIO_REDIRECT"].rules[0]
    assert not isinstance(redirect.counters, LiveCounters)


def test_a_pod_without_rules_is_not_captured_rather_than_unknown() -> None:
    empty = complete_tables(Ruleset(origin="iptables-save -c printed nothing"))
    assert set(empty.tables) == {"nat", "mangle"}
    pkt = Packet(ipaddress.ip_address("10.20.0.78"), ipaddress.ip_address("10.20.0.77"),
                 18080, sport=40000, in_iface="eth0")
    w = walk(empty, pkt, "arriving")
    assert w.capture.kind == "none" and w.missing_tables == ()


LOG = """\
2026-11-23T23:40:46.000Z warning envoy misc something unrelated {
[2026-11-23T23:41:52.818Z] "GET /common/sauth HTTP/1.1" 200 - via_upstream - "-" 0 60 0 0 "-" \
"Go-http-client/1.1" "13f3ef88-2509-4615-8c88-7eb6930ad568" "simple-server-svc.demo-to:18080" \
"10.20.0.77:18080" inbound|18080|| 127.0.0.6:35823 10.20.0.77:18080 10.20.0.78:49132 - default
[2026-11-23T23:41:53.001Z] "GET /common/sauth HTTP/1.1" 200 - via_upstream - "-" 0 60 0 0 "-" \
"remora-explain-probe/RID-1" "RID-1" "simple-server-svc.demo-to:18080" \
"10.20.0.77:18080" inbound|18080|| 127.0.0.6:35824 10.20.0.77:18080 10.20.0.78:49133 - default
"""


def test_probe_lines_are_found_by_request_id_with_their_line_number() -> None:
    found = probe_entries(LOG, "RID-1", "istio-proxy log")
    assert [(e.line, e.upstream_local_address, e.direction) for e in found] == [
        (3, "127.0.0.6:35824", "inbound")]
    assert probe_entries(LOG, "RID-2", "istio-proxy log") == []


def test_request_and_response_head() -> None:
    raw = request_bytes("/common/sauth", "simple-server-svc.demo-to:18080", "RID-1")
    assert raw.startswith(b"GET /common/sauth HTTP/1.1\r\nHost: simple-server-svc.demo-to:18080")
    assert b"\r\nx-request-id: RID-1\r\n" in raw and raw.endswith(b"\r\n\r\n")
    status, line, headers = parse_response_head(
        b"HTTP/1.1 503 Service Unavailable\r\nServer: istio-envoy\r\n\r\nno healthy upstream")
    assert (status, line, headers) == (503, "HTTP/1.1 503 Service Unavailable",
                                       {"server": "istio-envoy"})
    assert parse_response_head(b"SSH-2.0-OpenSSH\r\n")[0] is None
