from __future__ import annotations

import re

from remora.node.kubeproxy import ServicePort, render, sep_chain, svc_chain

SVC = ServicePort("demo-to", "simple-server-svc", "", "TCP", "172.16.234.188", 18080,
                  (("10.20.0.77", 18080), ("10.20.0.79", 18080), ("10.20.0.80", 18080)))


def rules(text: str, chain: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"-A {chain} ")]


def test_service_jumps_to_its_chain_and_spreads_over_endpoints() -> None:
    text = render([SVC])
    svc = svc_chain(SVC)
    assert rules(text, "REMORA-SERVICES") == [
        f"-A REMORA-SERVICES -d 172.16.234.188/32 -p tcp -m tcp --dport 18080 -m comment "
        f'--comment "demo-to/simple-server-svc cluster IP" -j {svc}']
    picks = rules(text, svc)
    assert len(picks) == 3
    probabilities = [re.search(r"--probability (\S+)", r) for r in picks]
    assert [p.group(1) if p else None for p in probabilities] == [
        "0.33333333333", "0.50000000000", None]  # 1/3, then 1/2 of the rest, then the last
    for pick, (ip, port) in zip(picks, SVC.endpoints, strict=True):
        sep = sep_chain(SVC, ip, port)
        assert pick.endswith(f"-j {sep}")
        assert rules(text, sep) == [
            f"-A {sep} -s {ip}/32 -j REMORA-MARK-MASQ",
            f"-A {sep} -p tcp -m tcp -j DNAT --to-destination {ip}:{port}"]


def test_chains_are_declared_and_tables_committed() -> None:
    text = render([SVC])
    declared = set(re.findall(r"^:(\S+)", text, re.M))
    used = set(re.findall(r"-j (REMORA-\S+)", text))
    assert used <= declared
    assert text.count("COMMIT") == 2 and text.startswith("*nat\n")
    assert "-A PREROUTING -m comment --comment \"remora service portals\" -j REMORA-SERVICES" \
        in text


def test_service_without_endpoints_rejects_in_filter() -> None:
    empty = ServicePort("demo", "nobody", "http", "TCP", "172.16.1.1", 80, ())
    text = render([empty])
    nat, filt = text.split("*filter")
    assert "172.16.1.1" not in nat
    assert ('-A REMORA-SERVICES -d 172.16.1.1/32 -p tcp -m tcp --dport 80 -m comment '
            '--comment "demo/nobody:http has no endpoints" -j REJECT --reject-with '
            "icmp-port-unreachable") in filt


def test_chain_names_depend_on_service_and_endpoint() -> None:
    other = ServicePort("demo-to", "other", "", "TCP", "172.16.1.2", 18080, SVC.endpoints)
    assert svc_chain(SVC) != svc_chain(other)
    assert svc_chain(SVC) == svc_chain(SVC) and len(svc_chain(SVC)) <= 28  # iptables' limit
    assert sep_chain(SVC, "10.20.0.77", 18080) != sep_chain(SVC, "10.20.0.79", 18080)


def test_rendering_is_deterministic_whatever_the_input_order() -> None:
    a = ServicePort("a", "x", "", "UDP", "172.16.0.20", 53, (("10.20.0.5", 53),))
    assert render([SVC, a]) == render([a, SVC])
    assert "-p udp -m udp --dport 53" in render([a])
