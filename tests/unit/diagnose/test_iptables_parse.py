"""Both iptables readers: the seed's `-L -v` listings and iptables-save / restore text."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from remora.diagnose.evidence.files import parse_iptables_text
from remora.diagnose.iptables.listing import parse_listing
from remora.diagnose.iptables.model import (
    AddrMatch,
    IfaceMatch,
    MarkMatch,
    OwnerMatch,
    PortMatch,
    StateMatch,
)
from remora.diagnose.iptables.save import parse_iptables_save
from remora.errors import RemoraError


def test_seed_redirect_nat_listing(data: Path) -> None:
    rs = parse_listing((data / "seed_redirect_nat.txt").read_text())
    assert set(rs.tables) == {"nat"}
    nat = rs.tables["nat"]
    assert list(nat.chains) == ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "ISTIO_INBOUND",
                                "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT", "ISTIO_REDIRECT"]
    pre = nat.chains["PREROUTING"]
    assert pre.policy == "ACCEPT" and pre.policy_counters and pre.policy_counters.packets == 11627
    assert pre.rules[0].counters and pre.rules[0].counters.bytes == 698_000
    assert pre.rules[0].target.name == "ISTIO_INBOUND"
    inbound = nat.chains["ISTIO_INBOUND"].rules
    ports = [m.ports for r in inbound for m in r.matches if isinstance(m, PortMatch)]
    assert ports == [((15008, 15008),), ((22, 22),), ((15090, 15090),), ((15021, 15021),),
                     ((15020, 15020),)]  # `tcp dpt:ssh` is port 22
    assert nat.chains["ISTIO_IN_REDIRECT"].rules[0].target.to_port == 15006
    assert nat.chains["ISTIO_REDIRECT"].rules[0].target.to_port == 15001
    out = nat.chains["ISTIO_OUTPUT"].rules
    assert len(out) == 9
    first = {type(m): m for m in out[0].matches}
    assert first[IfaceMatch].name == "lo" and first[IfaceMatch].which == "out"
    assert first[AddrMatch].net == ipaddress.ip_network("127.0.0.6/32")
    second = {type(m): m for m in out[1].matches}
    assert second[AddrMatch].negated and second[AddrMatch].net == ipaddress.ip_network(
        "127.0.0.1/32")  # `!localhost`
    assert second[OwnerMatch].which == "uid" and second[OwnerMatch].ids == (1337, 1337)
    third = {type(m): m for m in out[2].matches}
    assert third[OwnerMatch].negated  # `! owner UID match 1337`
    assert out[4].matches[-1].text() == "-m owner --gid-owner 1337"
    assert out[8].target.name == "ISTIO_REDIRECT" and out[8].matches == ()


def test_seed_tproxy_mangle_listing(data: Path) -> None:
    rs = parse_listing((data / "seed_tproxy_mangle.txt").read_text())
    mangle = rs.tables["mangle"]
    tproxy = mangle.chains["ISTIO_TPROXY"].rules[0]
    assert tproxy.target.name == "TPROXY"
    assert (tproxy.target.to_port, tproxy.target.on_ip) == (15006, "0.0.0.0")
    assert tproxy.target.mark == (0x539, 0xFFFFFFFF)
    inbound = mangle.chains["ISTIO_INBOUND"].rules
    assert [type(m) for m in inbound[0].matches][-1] is MarkMatch
    not_1338 = next(m for m in inbound[2].matches if isinstance(m, MarkMatch))
    assert not_1338.negated and not_1338.value == 0x53A
    state = next(m for m in inbound[7].matches if isinstance(m, StateMatch))
    assert state.states == {"RELATED", "ESTABLISHED"}
    # iptables-nft lists --save-mark / --restore-mark as `CONNMARK and 0x0`
    assert mangle.chains["PREROUTING"].rules[1].target.op == "save"
    assert mangle.chains["OUTPUT"].rules[3].target.op == "restore"
    connmark = next(m for m in mangle.chains["OUTPUT"].rules[3].matches
                    if isinstance(m, MarkMatch))
    assert connmark.conn and connmark.value == 0x539
    assert mangle.chains["OUTPUT"].rules[1].target.mark == (0x53A, 0xFFFFFFFF)


def test_seed_tproxy_nat_listing_and_merge(data: Path) -> None:
    rs = parse_listing((data / "seed_tproxy_mangle.txt").read_text())
    rs.merge(parse_listing((data / "seed_tproxy_nat.txt").read_text()))
    assert set(rs.tables) == {"mangle", "nat"}
    assert rs.tables["nat"].chains["PREROUTING"].rules == []
    assert rs.tables["nat"].chains["ISTIO_OUTPUT"].rules[2].counters is not None


def test_table_inferred_without_command_line(data: Path) -> None:
    text = (data / "seed_tproxy_mangle.txt").read_text().replace("$ iptables -t mangle -L -v", "")
    assert set(parse_listing(text).tables) == {"mangle"}
    text = (data / "seed_redirect_nat.txt").read_text().replace("$ iptables -t nat -L -v", "")
    assert set(parse_listing(text).tables) == {"nat"}


def test_numeric_listing_with_line_numbers_and_multiport(data: Path) -> None:
    text = (data / "numeric_listing.txt").read_text()  # iptables -L -v -n --line-numbers
    rs = parse_listing(text, table="nat")
    rules = rs.tables["nat"].chains["ISTIO_OUTPUT"].rules
    assert [r.index for r in rules] == [1, 2, 3]
    multi = next(m for m in rules[1].matches if isinstance(m, PortMatch))
    assert multi.multiport and multi.negated and multi.ports == ((53, 53), (15008, 15008))
    dst = next(m for m in rules[2].matches if isinstance(m, AddrMatch))
    assert dst.net == ipaddress.ip_network("10.96.0.0/12")
    sport = next(m for m in rules[2].matches if isinstance(m, PortMatch))
    assert sport.which == "sport" and sport.ports == ((1000, 2000),)


def test_save_default_injection_and_inserts(goldens: Path) -> None:
    text = (goldens / "DERIVED-default-injection-redirect.txt.notgolden").read_text()
    [rs] = parse_iptables_save(text)
    out = rs.tables["nat"].chains["ISTIO_OUTPUT"].rules
    assert out[0].text() == "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"
    assert out[-1].target.name == "ISTIO_REDIRECT"
    tproxy = (goldens / "inbound-ports-wildcard-tproxy.golden").read_text()
    [rs] = parse_iptables_save(tproxy)
    inbound = rs.tables["mangle"].chains["ISTIO_INBOUND"].rules
    # `-I ISTIO_INBOUND 1/2/3` land before the appended rules, renumbered
    assert [r.index for r in inbound] == [1, 2, 3, 4, 5]
    assert isinstance(inbound[0].matches[-1], MarkMatch)
    assert any(isinstance(m, AddrMatch) for m in inbound[1].matches)
    assert inbound[4].target.name == "ISTIO_TPROXY"
    t = rs.tables["mangle"].chains["ISTIO_TPROXY"].rules[0].target
    assert (t.name, t.to_port, t.mark) == ("TPROXY", 15006, (1337, 0xFFFFFFFF))


def test_save_ipv6_block_is_a_second_family(goldens: Path) -> None:
    families = parse_iptables_save((goldens / "tproxy.golden").read_text())
    assert [f.family for f in families] == [4, 6]
    assert any("::1/128" in r.text() for c in families[1].tables["nat"].chains.values()
               for r in c.rules)


def test_save_counters_and_legacy_command_form() -> None:
    text = ("*nat\n:PREROUTING ACCEPT [5:300]\n"
            "[7:420] -A PREROUTING -p tcp -j ISTIO_INBOUND\nCOMMIT\n")
    [rs] = parse_iptables_save(text)
    rule = rs.tables["nat"].chains["PREROUTING"].rules[0]
    assert rule.counters is not None and rule.counters.packets == 7
    legacy = "iptables -t nat -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"
    [rs] = parse_iptables_save(legacy)
    assert rs.tables["nat"].chains["ISTIO_REDIRECT"].rules[0].target.to_port == 15001


@pytest.mark.parametrize("text", ["hello world\n", "{\"kind\": \"Pod\"}\n", ""])
def test_unrecognised_listing_is_one_line_error(text: str) -> None:
    with pytest.raises(RemoraError, match="not an iptables listing") as info:
        parse_iptables_text(text, "rules.txt")
    assert "\n" not in info.value.one_line()


def test_save_line_that_is_not_a_rule() -> None:
    with pytest.raises(RemoraError, match="line 2 is not a rule"):
        parse_iptables_save("*nat\n-Z PREROUTING\nCOMMIT\n")


def test_one_file_with_both_seed_listings(data: Path) -> None:
    names = ("seed_tproxy_mangle.txt", "seed_tproxy_nat.txt")
    text = "".join((data / n).read_text() for n in names)
    rs = parse_iptables_text(text, "iptables.txt")
    assert set(rs.tables) == {"mangle", "nat"}
    assert rs.tables["nat"].chains["ISTIO_REDIRECT"].rules[0].target.to_port == 15001
    assert rs.tables["mangle"].chains["ISTIO_TPROXY"].rules[0].target.name == "TPROXY"


def test_iptables_S_output_with_and_without_prompt() -> None:
    body = ("-P PREROUTING ACCEPT\n-N ISTIO_INBOUND\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n"
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN\n"
            "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n"
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n")
    for text in ("$ iptables -t nat -S\n" + body, body):
        rs = parse_iptables_text(text, "rules.txt")
        assert list(rs.tables) == ["nat"]
        assert rs.tables["nat"].chains["ISTIO_IN_REDIRECT"].rules[0].target.to_port == 15006
    # no target names the table and no hint: ask for one
    with pytest.raises(RemoraError, match="before any `\\*table` line"):
        parse_iptables_text("-A OUTPUT -p tcp -j ISTIO_OUTPUT\n", "rules.txt")
    assert list(parse_iptables_text("-A OUTPUT -p tcp -j ISTIO_OUTPUT\n", "nat.txt").tables) == [
        "nat"]


def test_listing_without_counters() -> None:
    text = ("Chain ISTIO_REDIRECT (1 references)\n"
            "target     prot opt source               destination\n"
            "REDIRECT   tcp  --  anywhere             anywhere             redir ports 15001\n")
    rule = parse_listing(text).tables["nat"].chains["ISTIO_REDIRECT"].rules[0]
    assert rule.counters is None and rule.target.to_port == 15001


@pytest.mark.parametrize(("spec", "ports"), [
    ("1024:", ((1024, 65535),)), (":1024", ((0, 1024),)), ("80:90", ((80, 90),)),
    ("15008", ((15008, 15008),))])
def test_open_ended_port_ranges_read_as_iptables_means_them(
        spec: str, ports: tuple[tuple[int, int], ...]) -> None:
    # iptables(8): "--dport 1024:" is 1024-65535 and ":1024" is 0-1024, in both the save
    # form and a hand-typed listing
    text = f"*nat\n-A ISTIO_INBOUND -p tcp -m tcp --dport {spec} -j RETURN\nCOMMIT\n"
    [rs] = parse_iptables_save(text)
    [match] = [m for m in rs.tables["nat"].chains["ISTIO_INBOUND"].rules[0].matches
               if isinstance(m, PortMatch)]
    assert match.ports == ports
    listing = ("Chain ISTIO_INBOUND (1 references)\n"
               "target     prot opt source               destination\n"
               f"RETURN     tcp  --  0.0.0.0/0            0.0.0.0/0            tcp dpts:{spec}\n")
    rs = parse_listing(listing, "nat")
    [match] = [m for m in rs.tables["nat"].chains["ISTIO_INBOUND"].rules[0].matches
               if isinstance(m, PortMatch)]
    assert match.ports == ports
