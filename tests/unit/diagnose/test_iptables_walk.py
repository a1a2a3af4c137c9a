"""The packet walk over Istio's rules: what is captured, where, and why not."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from remora.diagnose.iptables.listing import parse_listing
from remora.diagnose.iptables.model import Packet, Ruleset
from remora.diagnose.iptables.save import parse_iptables_save
from remora.diagnose.iptables.walk import walk

IP = ipaddress.ip_address
CLIENT, SERVER, VIP = IP("10.20.0.78"), IP("10.20.0.77"), IP("172.16.234.188")


def inbound(port: int, src: ipaddress.IPv4Address = CLIENT, **kw: object) -> Packet:
    return Packet(src, SERVER, port, in_iface="eth0", **kw)  # type: ignore[arg-type]


def local(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, port: int, iface: str,
          uid: int, gid: int, mark: int = 0) -> Packet:
    return Packet(src, dst, port, out_iface=iface, uid=uid, gid=gid, mark=mark)


@pytest.fixture(scope="module")
def seed_redirect(data: Path) -> Ruleset:
    return parse_listing((data / "seed_redirect_nat.txt").read_text())


@pytest.fixture(scope="module")
def seed_tproxy(data: Path) -> Ruleset:
    rs = parse_listing((data / "seed_tproxy_mangle.txt").read_text())
    rs.merge(parse_listing((data / "seed_tproxy_nat.txt").read_text()))
    return rs


@pytest.fixture(scope="module")
def derived_redirect(goldens: Path) -> Ruleset:
    text = (goldens / "DERIVED-default-injection-redirect.txt.notgolden").read_text()
    return parse_iptables_save(text)[0]


def test_seed_inbound_is_redirected_to_15006(seed_redirect: Ruleset) -> None:
    w = walk(seed_redirect, inbound(18080), "arriving")
    assert w.capture.kind == "REDIRECT" and w.capture.port == 15006
    assert w.capture.decided_by is not None
    assert w.capture.decided_by.ref() == "nat/ISTIO_IN_REDIRECT #1"
    assert w.capture.decided_by.counters == "0 pkts"
    chains = [s.chain for s in w.steps if s.matched]
    assert chains == ["PREROUTING", "ISTIO_INBOUND", "ISTIO_IN_REDIRECT"]
    skipped = [s.why_not for s in w.steps if s.matched is False]
    assert skipped == ["--dport 15008", "--dport ssh", "--dport 15090", "--dport 15021",
                       "--dport 15020"]


@pytest.mark.parametrize("port", [15021, 22, 15090, 15020, 15008])
def test_seed_excluded_inbound_ports(seed_redirect: Ruleset, port: int) -> None:
    w = walk(seed_redirect, inbound(port), "arriving")
    assert w.capture.kind == "none"
    assert w.capture.reason.startswith(f"excluded port {port} ")


def test_seed_outbound_app_goes_to_15001(seed_redirect: Ruleset) -> None:
    w = walk(seed_redirect, local(CLIENT, VIP, 18080, "eth0", 0, 0), "local")
    assert (w.capture.kind, w.capture.port) == ("REDIRECT", 15001)
    assert w.capture.decided_by and w.capture.decided_by.ref() == "nat/ISTIO_REDIRECT #1"


def test_seed_proxy_traffic_is_not_captured(seed_redirect: Ruleset) -> None:
    w = walk(seed_redirect, local(CLIENT, SERVER, 18080, "eth0", 1337, 1337), "local")
    assert w.capture.kind == "none" and "uid 1337" in w.capture.reason
    # the inbound sidecar's connection to the app, bound to 127.0.0.6
    w = walk(seed_redirect, local(IP("127.0.0.6"), SERVER, 18080, "lo", 1337, 1337), "local")
    assert w.capture.kind == "none"
    assert w.capture.decided_by and w.capture.decided_by.ref() == "nat/ISTIO_OUTPUT #1"
    assert "127.0.0.6" in w.capture.reason
    # without the bind it would come from the pod IP and loop back to 15006
    w = walk(seed_redirect, local(SERVER, SERVER, 18080, "lo", 1337, 1337), "local")
    assert (w.capture.kind, w.capture.port) == ("REDIRECT", 15006)


def test_seed_tproxy_inbound(seed_tproxy: Ruleset) -> None:
    w = walk(seed_tproxy, inbound(18080), "arriving")
    assert (w.capture.kind, w.capture.port, w.capture.mark) == ("TPROXY", 15006, 0x539)
    assert w.final_mark == 0x539
    assert w.capture.decided_by and w.capture.decided_by.ref() == "mangle/ISTIO_TPROXY #1"
    # later packets of the connection are diverted (marked and accepted), not TPROXY'd
    w = walk(seed_tproxy, inbound(18080, ctstate="ESTABLISHED"), "arriving")
    assert w.capture.kind == "none" and w.final_mark == 0x539
    assert "ISTIO_DIVERT" in (w.capture.decided_by.ref() if w.capture.decided_by else "")


def test_seed_tproxy_sidecar_to_app_with_original_src(seed_tproxy: Ruleset) -> None:
    # original_src: source = client IP, mark 1337; TPROXY sidecar runs as uid 0 gid 1337
    w = walk(seed_tproxy, local(CLIENT, SERVER, 18080, "lo", 0, 1337, mark=0x539), "local")
    assert w.capture.kind == "none"
    first = w.steps[0]
    assert first.ref() == "mangle/OUTPUT #1" and first.action == "RETURN"


def test_listing_and_save_forms_agree(seed_redirect: Ruleset, derived_redirect: Ruleset) -> None:
    """The seed's listing and the injector's rules decide the same packets the same way
    (the seed also excludes port 22, which the injector's defaults do not)."""
    packets = [
        (inbound(18080), "arriving"), (inbound(15021), "arriving"), (inbound(15008), "arriving"),
        (local(CLIENT, VIP, 18080, "eth0", 0, 0), "local"),
        (local(CLIENT, SERVER, 18080, "eth0", 1337, 1337), "local"),
        (local(IP("127.0.0.6"), SERVER, 18080, "lo", 1337, 1337), "local"),
        (local(SERVER, SERVER, 18080, "lo", 1337, 1337), "local"),
        (local(SERVER, IP("127.0.0.1"), 8080, "lo", 0, 0), "local"),
    ]
    for pkt, path in packets:
        a = walk(seed_redirect, pkt, path)  # type: ignore[arg-type]
        b = walk(derived_redirect, pkt, path)  # type: ignore[arg-type]
        assert (a.capture.kind, a.capture.port) == (b.capture.kind, b.capture.port), pkt


def test_golden_tproxy_excludes(goldens: Path) -> None:
    rs = parse_iptables_save((goldens / "tproxy.golden").read_text())[0]
    w = walk(rs, local(CLIENT, IP("9.9.1.1"), 80, "eth0", 0, 0), "local")
    assert (w.capture.kind, w.capture.port) == ("REDIRECT", 15001)
    w = walk(rs, local(CLIENT, IP("1.1.2.3"), 80, "eth0", 0, 0), "local")
    assert w.capture.kind == "none" and "excluded CIDR 1.1.0.0/16" in w.capture.reason
    w = walk(rs, local(CLIENT, IP("8.8.8.8"), 80, "eth0", 0, 0), "local")
    assert w.capture.kind == "none"  # only 9.9.0.0/16 is included
    w = walk(rs, Packet(CLIENT, SERVER, 18080, in_iface="not-istio-nic"), "arriving")
    assert w.capture.kind == "none" and "excluded interface not-istio-nic" in w.capture.reason
    w = walk(rs, inbound(18080), "arriving")
    assert w.capture.kind == "TPROXY"


def test_missing_tables_are_reported(seed_redirect: Ruleset) -> None:
    w = walk(seed_redirect, inbound(18080), "arriving")
    assert w.missing_tables == ("mangle",)


def test_redirect_rewrites_the_rest_of_the_walk(seed_redirect: Ruleset) -> None:
    w = walk(seed_redirect, local(CLIENT, VIP, 18080, "eth0", 0, 0), "local")
    assert w.packet.dst == VIP and w.packet.dport == 18080  # what went in
    assert w.final_packet is not None
    assert (w.final_packet.dst, w.final_packet.dport) == (IP("127.0.0.1"), 15001)
    w = walk(seed_redirect, inbound(18080), "arriving")
    assert w.final_packet is not None and w.final_packet.dport == 15006


def test_target_prints_do_not_make_a_rule_uncertain() -> None:
    text = ("Chain INPUT (policy ACCEPT 0 packets, 0 bytes)\n"
            " pkts bytes target     prot opt in     out     source               destination\n"
            "    0     0 REJECT     tcp  --  any    any     anywhere             anywhere"
            "             tcp dpt:18080 reject-with icmp-port-unreachable\n")
    rs = parse_listing(text, table="filter")
    w = walk(rs, inbound(18080), "arriving")
    assert w.capture.kind == "DROP" and w.uncertain == ()
    assert walk(rs, inbound(8080), "arriving").capture.kind == "none"
