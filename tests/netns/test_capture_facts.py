"""What capture reads from the namespace: IPv6 (first address) and resolv.conf servers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from remora.capture import apply, facts
from tests.lab import Lab
from tests.netns.capture_helpers import injector_config, ip, save

pytestmark = pytest.mark.netns


def test_ipv6_is_detected_from_the_first_address(lab: Lab) -> None:
    v4 = lab.namespace("a4")
    assert not facts.first_address_is_ipv6(v4.path)  # only lo
    lab.run(v4, ["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"])
    lab.run(v4, ["ip", "addr", "add", "10.1.0.1/24", "dev", "d0"])
    lab.run(v4, ["ip", "addr", "add", "fd00::1/64", "dev", "d0", "nodad"])
    assert not facts.first_address_is_ipv6(v4.path)

    v6 = lab.namespace("a6")
    lab.run(v6, ["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"])
    lab.run(v6, ["ip", "link", "set", "d0", "up"])  # adds a link-local fe80:: (skipped)
    lab.run(v6, ["ip", "addr", "add", "fd00::1/64", "dev", "d0", "nodad"])
    assert facts.first_address_is_ipv6(v6.path)
    outcome = apply.apply(injector_config(), v6.path)
    assert outcome.ruleset.ipv6
    assert "-A ISTIO_OUTPUT -d ::1/128 -j RETURN" in save(lab, v6, ipv6=True)
    assert "::6/128" in ip(lab, v6, "-6", "addr", "show", "dev", "lo")
    apply.cleanup(injector_config(), v6.path)
    assert "ISTIO" not in save(lab, v6, ipv6=True)


def test_dns_servers_come_from_the_namespace_resolv_conf(lab: Lab) -> None:
    ns = lab.namespace("dns")
    conf_dir = Path("/etc/netns") / ns.name
    conf_dir.mkdir(parents=True)
    try:
        (conf_dir / "resolv.conf").write_text("nameserver 10.96.0.10\nsearch cluster.local\n")
        apply.apply(injector_config("REDIRECT", "--redirect-dns"), ns.path)
        rules = save(lab, ns)
        assert ("-A ISTIO_OUTPUT_DNS -d 10.96.0.10/32 -p udp -m udp --dport 53 "
                "-j REDIRECT --to-ports 15053") in rules
        assert "-A ISTIO_INBOUND -s 10.96.0.10/32 -p udp -m udp --sport 53 -j CT --zone 1" in rules
    finally:
        shutil.rmtree(conf_dir)
