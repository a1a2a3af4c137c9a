from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remora.errors import RemoraError, UsageError
from remora.node import ipam
from remora.node.ipam import AddressPlan


def test_default_plan_puts_the_seed_pods_on_node_one() -> None:
    plan = AddressPlan.build()
    node = plan.node(1)
    assert str(node.subnet) == "10.20.0.0/24" and str(node.gateway) == "10.20.0.1"
    assert ipaddress.IPv4Address("10.20.0.77") in node.subnet
    assert str(plan.node(2).subnet) == "10.20.1.0/24"
    assert str(plan.node(2).gateway) == "10.20.1.1"
    assert str(plan.node(1).node_ip) == "192.168.0.1"
    assert str(plan.dns_ip) == "172.16.0.10"
    assert plan.node_of("10.20.1.9") == 2 and plan.node_of("172.16.0.1") is None


def test_pod_ips_are_lowest_free_from_the_start_offset() -> None:
    plan = AddressPlan.build()
    assert ipam.allocate_pod_ip(plan, 1, []) == "10.20.0.2"
    assert ipam.allocate_pod_ip(plan, 1, ["10.20.0.2", "10.20.0.3"]) == "10.20.0.4"
    assert ipam.allocate_pod_ip(plan, 1, ["10.20.0.3"]) == "10.20.0.2"  # released one reused
    assert ipam.allocate_pod_ip(plan, 2, []) == "10.20.1.2"
    seed = AddressPlan.build(pod_ip_start=77)
    assert ipam.allocate_pod_ip(seed, 1, []) == "10.20.0.77"
    assert ipam.allocate_pod_ip(seed, 1, ["10.20.0.77"]) == "10.20.0.78"


def test_node_subnet_exhaustion_is_a_clear_error() -> None:
    plan = AddressPlan.build()
    used = [f"10.20.0.{i}" for i in range(2, 255)]
    with pytest.raises(RemoraError, match="no free pod address"):
        ipam.allocate_pod_ip(plan, 1, used)


def test_bad_plans_are_refused() -> None:
    with pytest.raises(UsageError, match="overlaps"):
        AddressPlan.build(pod_cidr="10.0.0.0/8", service_cidr="10.96.0.0/12")
    with pytest.raises(UsageError, match="not an IPv4 network"):
        AddressPlan.build(pod_cidr="10.20.0.1/16")
    with pytest.raises(UsageError, match="smaller than one node"):
        AddressPlan.build(pod_cidr="10.20.0.0/25")
    with pytest.raises(UsageError, match="does not fit"):
        AddressPlan.build(pod_cidr="10.20.0.0/23").node(3)


def test_cluster_ip_is_stable_and_skips_reserved_and_used() -> None:
    plan = AddressPlan.build()
    first = ipam.allocate_cluster_ip(plan, "demo-to", "simple-server-svc", [])
    assert first == ipam.allocate_cluster_ip(plan, "demo-to", "simple-server-svc", [])
    assert ipaddress.IPv4Address(first) in plan.service_cidr
    second = ipam.allocate_cluster_ip(plan, "demo-to", "simple-server-svc", [first])
    assert second != first and ipaddress.IPv4Address(second) in plan.service_cidr
    assert first not in plan.reserved_service_ips()


@given(st.lists(st.integers(0, 15), max_size=16))
def test_cluster_ip_never_hands_out_taken_or_reserved(taken: list[int]) -> None:
    plan = AddressPlan.build(service_cidr="172.16.0.0/28")
    used = [str(plan.service_cidr.network_address + i) for i in taken]
    free = set(map(str, plan.service_cidr)) - set(used) - plan.reserved_service_ips()
    if not free:
        with pytest.raises(RemoraError, match="full"):
            ipam.allocate_cluster_ip(plan, "ns", "svc", used)
        return
    assert ipam.allocate_cluster_ip(plan, "ns", "svc", used) in free


def test_requested_cluster_ip_is_checked() -> None:
    plan = AddressPlan.build()
    assert ipam.check_cluster_ip(plan, "172.16.234.188", "svc:a/b", {}) == "172.16.234.188"
    with pytest.raises(UsageError, match="already allocated to svc:x/y"):
        ipam.check_cluster_ip(plan, "172.16.234.188", "svc:a/b", {"172.16.234.188": "svc:x/y"})
    with pytest.raises(UsageError, match="not allocatable"):
        ipam.check_cluster_ip(plan, "10.0.0.1", "svc:a/b", {})
    with pytest.raises(UsageError, match="not allocatable"):
        ipam.check_cluster_ip(plan, "172.16.0.10", "svc:a/b", {})  # the DNS address
