"""IPv6 and dual stack in the node runtime (`remora up --ip-family ipv6|dual`): the
address plan and IPAM, Services' ipFamilies / ipFamilyPolicy as the API server defaults
and checks them (its messages), dual-stack ClusterIPs, AAAA records, kube-proxy's
ip6tables rules, the pods' /etc files. IPv4 labs stay as they were."""

from __future__ import annotations

import ipaddress
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from remora.errors import RemoraError, UsageError
from remora.node import desired, dns, etcfiles, ipam, resolver, views
from remora.node.dns import Zone
from remora.node.ipam import AddressPlan
from remora.node.kubeproxy import ServicePort, render
from remora.node.store import PodRow, Store

DUAL = AddressPlan.build(pod_ip_start=77, ip_family="dual")
V6 = AddressPlan.build(pod_ip_start=77, ip_family="ipv6")
V4 = AddressPlan.build(pod_ip_start=77)


# -- address plan and pod addresses ---------------------------------------------------------
def test_each_node_has_a_64_of_the_ula_48_and_pods_mirror_their_ipv4_offset() -> None:
    node1, node2 = DUAL.node(1), DUAL.node(2)
    assert (str(node1.subnet6), str(node1.gateway6)) == ("fd00:10:20::/64", "fd00:10:20::1")
    assert (str(node2.subnet6), str(node2.gateway6)) == ("fd00:10:20:1::/64",
                                                         "fd00:10:20:1::1")
    assert str(node2.node_ip6) == "fd00:192:168::2"
    assert all(n.subnet6.subnet_of(DUAL.pod_cidr6) for n in (node1, node2))
    assert str(DUAL.pod_cidr6) == "fd00:10:20::/48"
    # the seed's 10.20.0.77 / .78 get fd00:10:20::77 / ::78 beside them (primary first)
    assert ipam.allocate_pod_ips(DUAL, 1, []) == ["10.20.0.77", "fd00:10:20::77"]
    assert ipam.allocate_pod_ips(DUAL, 1, ["10.20.0.77", "fd00:10:20::77"]) == [
        "10.20.0.78", "fd00:10:20::78"]
    assert ipam.allocate_pod_ips(V6, 1, ["fd00:10:20::77"]) == ["fd00:10:20::78"]
    assert ipam.allocate_pod_ips(V6, 2, []) == ["fd00:10:20:1::77"]
    assert ipam.allocate_pod_ips(V4, 1, []) == ["10.20.0.77"]  # as allocate_pod_ip
    # offset 250 -> ::250, distinct from every other offset (decimal digits as hex)
    plan = AddressPlan.build(pod_ip_start=2, ip_family="dual")
    used: list[str] = []
    for _ in range(ipam.pods_per_node(plan)):
        used += ipam.allocate_pod_ips(plan, 1, used)
    v6 = [ip for ip in used if ":" in ip]
    assert len(set(v6)) == len(v6) == ipam.pods_per_node(plan) == ipam.pods_per_node(V4) + 75
    assert all(ipaddress.IPv6Address(ip) in plan.node(1).subnet6 for ip in v6)
    with pytest.raises(RemoraError, match=re.escape("no free pod address left in "
                                                    "10.20.0.0/24 and fd00:10:20::/64")):
        ipam.allocate_pod_ips(plan, 1, used)


def test_unknown_ip_family_is_a_clear_error() -> None:
    with pytest.raises(UsageError) as caught:
        AddressPlan.build(ip_family="ipv5")
    assert caught.value.problem == "unknown IP family 'ipv5'"
    assert "--ip-family dual" in caught.value.fix


def test_ipv6_cluster_ips_come_from_the_service_range_stably_and_skip_reserved() -> None:
    ip = ipam.allocate_cluster_ip(DUAL, "demo-to", "simple-server-svc", [], ipam.IPV6)
    assert ipaddress.IPv6Address(ip) in ipaddress.IPv6Network("fd00:96::/108")
    assert ip == ipam.allocate_cluster_ip(DUAL, "demo-to", "simple-server-svc", [], ipam.IPV6)
    assert ipam.allocate_cluster_ip(DUAL, "demo-to", "simple-server-svc", [ip],
                                    ipam.IPV6) != ip
    assert DUAL.dns_ips() == ["172.16.0.10", "fd00:96::a"] and V6.dns_ips() == ["fd00:96::a"]
    assert V4.dns_ips() == ["172.16.0.10"]
    assert "fd00:96::a" in DUAL.reserved_service_ips()
    with pytest.raises(UsageError, match="not allocatable from fd00:96::/108"):
        ipam.check_cluster_ip(DUAL, "fd00:97::1", "svc:a/b", {})
    assert ipam.check_cluster_ip(DUAL, "fd00:96::1:bc", "svc:a/b", {}) == "fd00:96::1:bc"


# -- ipFamilies / ipFamilyPolicy ----------------------------------------------------------------
@pytest.mark.parametrize(("plan", "spec", "want"), [
    # nothing given: SingleStack, the cluster's default (first) family
    (V4, {}, ((ipam.IPV4,), "SingleStack")),
    (V6, {}, ((ipam.IPV6,), "SingleStack")),
    (DUAL, {}, ((ipam.IPV4,), "SingleStack")),
    # PreferDualStack: both where the cluster has both, else the one it has
    (DUAL, {"ipFamilyPolicy": "PreferDualStack"}, ((ipam.IPV4, ipam.IPV6), "PreferDualStack")),
    (V4, {"ipFamilyPolicy": "PreferDualStack"}, ((ipam.IPV4,), "PreferDualStack")),
    (DUAL, {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"]},
     ((ipam.IPV6, ipam.IPV4), "RequireDualStack")),
    # two families without a policy: RequireDualStack
    (DUAL, {"ipFamilies": ["IPv6", "IPv4"]}, ((ipam.IPV6, ipam.IPV4), "RequireDualStack")),
    (DUAL, {"ipFamilies": ["IPv6"]}, ((ipam.IPV6,), "SingleStack")),
    # families from the requested clusterIPs
    (DUAL, {"clusterIP": "fd00:96::1:bc"}, ((ipam.IPV6,), "SingleStack")),
    (DUAL, {"clusterIPs": ["172.16.0.20", "fd00:96::20"]},
     ((ipam.IPV4, ipam.IPV6), "RequireDualStack")),
])
def test_service_families_default_as_the_api_server_does(
        plan: AddressPlan, spec: dict[str, Any], want: tuple[tuple[str, ...], str]) -> None:
    assert ipam.service_families(plan, spec, "Service/demo-to/x") == want


@pytest.mark.parametrize(("plan", "spec", "message"), [
    (DUAL, {"ipFamilyPolicy": "DualStack"}, 'spec.ipFamilyPolicy: Unsupported value: '
     '"DualStack": supported values: "PreferDualStack", "RequireDualStack", "SingleStack"'),
    (DUAL, {"ipFamilies": ["IPv5"]},
     'spec.ipFamilies[0]: Unsupported value: "IPv5": supported values: "IPv4", "IPv6"'),
    (DUAL, {"ipFamilies": ["IPv4", "IPv4"]}, 'spec.ipFamilies[1]: Duplicate value: "IPv4"'),
    (DUAL, {"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]},
     'spec.ipFamilyPolicy: Invalid value: "SingleStack": must be RequireDualStack or '
     "PreferDualStack when multiple IP families are specified"),
    (V4, {"ipFamilyPolicy": "RequireDualStack"}, 'spec.ipFamilyPolicy: Invalid value: '
     '"RequireDualStack": this cluster is not configured for dual-stack services'),
    (V4, {"ipFamilies": ["IPv6"]},
     'spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster'),
    (DUAL, {"ipFamilies": ["IPv6"], "clusterIP": "172.16.0.20"},
     'spec.clusterIPs[0]: Invalid value: "172.16.0.20": expected an IPv6 value as '
     "indicated by `ipFamilies[0]`"),
])
def test_bad_ip_families_get_kubernetes_messages(plan: AddressPlan, spec: dict[str, Any],
                                                 message: str) -> None:
    with pytest.raises(UsageError) as caught:
        ipam.service_families(plan, spec, "Service/demo-to/x")
    assert caught.value.problem == f"Service/demo-to/x: {message}"
    assert "this lab's families" in caught.value.fix


def svc(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name,
                                                                 "namespace": "demo-to"},
            "spec": {"selector": {"web": "server"}, "ports": [{"port": 18080}], **spec}}


def test_apply_allocates_a_cluster_ip_per_family_primary_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    desired.apply(store, DUAL, [svc("dual", ipFamilyPolicy="PreferDualStack"),
                                svc("v6first", ipFamilies=["IPv6", "IPv4"]),
                                svc("single")])
    got = {s["metadata"]["name"]: s["spec"] for s in views.services(store, DUAL)}
    v4, v6 = got["dual"]["clusterIPs"]
    assert ipam.family_of(v4) == ipam.IPV4 and ipam.family_of(v6) == ipam.IPV6
    assert got["dual"]["clusterIP"] == v4
    assert (got["dual"]["ipFamilies"], got["dual"]["ipFamilyPolicy"]) == (
        ["IPv4", "IPv6"], "PreferDualStack")
    assert [ipam.family_of(ip) for ip in got["v6first"]["clusterIPs"]] == ["IPv6", "IPv4"]
    assert got["v6first"]["ipFamilyPolicy"] == "RequireDualStack"
    assert len(got["single"]["clusterIPs"]) == 1 and got["single"]["ipFamilies"] == ["IPv4"]
    # re-applying keeps the addresses; a bad one refuses the batch with nothing applied
    desired.apply(store, DUAL, [svc("dual", ipFamilyPolicy="PreferDualStack")])
    assert views.services(store, DUAL)[0]["spec"]["clusterIPs"] == [v4, v6]
    with pytest.raises(UsageError, match=r"Service/demo-to/bad: spec.ipFamilies\[0\]"):
        desired.apply(store, DUAL, [svc("other"), svc("bad", ipFamilies=["IPv5"])])
    assert store.get_object("Service", "demo-to", "other") is None


def test_an_ipv4_lab_shows_services_as_before(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    desired.apply(store, V4, [svc("a", ipFamilyPolicy="PreferDualStack")])
    spec = views.services(store, V4)[0]["spec"]
    assert "ipFamilies" not in spec and len(spec["clusterIPs"]) == 1
    desired.apply(store, V4, [svc("b")])
    assert set(views.services(store, V4)[1]["spec"]) == {
        "selector", "ports", "clusterIP", "clusterIPs", "type"}


def test_pods_show_every_address_primary_first() -> None:
    row = PodRow(uid="u", namespace="demo-to", name="p", node=1, netns="n", body={
        "metadata": {"name": "p"}, "spec": {"containers": []}}, ip="10.20.0.77",
        ips=["10.20.0.77", "fd00:10:20::77"], phase="Running")
    pod = views.pod_object(row, [], [])
    assert pod["status"]["podIP"] == "10.20.0.77"
    assert pod["status"]["podIPs"] == [{"ip": "10.20.0.77"}, {"ip": "fd00:10:20::77"}]
    row.ips = []
    assert views.pod_object(row, [], [])["status"]["podIPs"] == [{"ip": "10.20.0.77"}]


def dual_pod(name: str, v4: str, v6: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "demo-to"},
            "status": {"podIP": v4, "podIPs": [{"ip": v4}, {"ip": v6}]}}


def test_service_ports_and_zone_per_family() -> None:
    service = {"metadata": {"name": "s", "namespace": "demo-to"},
               "spec": {"clusterIP": "172.16.0.20", "clusterIPs": ["172.16.0.20", "fd00:96::20"],
                        "ports": [{"port": 80}]}}
    endpoints = {("demo-to", "s"): [{"ip": "10.20.0.77", "port": 8080, "servicePort": 80,
                                     "pod": "p"}]}
    pods = [dual_pod("p", "10.20.0.77", "fd00:10:20::77")]
    ports = views.service_ports([service], endpoints, pods)
    assert [(p.cluster_ip, p.endpoints) for p in ports] == [
        ("172.16.0.20", (("10.20.0.77", 8080),)),
        ("fd00:96::20", (("fd00:10:20::77", 8080),))]
    zone = views.zone("cluster.local", [service], pods)
    assert zone.services == {("demo-to", "s"): "172.16.0.20"}
    assert zone.services6 == {("demo-to", "s"): "fd00:96::20"}
    assert zone.pods == {"10.20.0.77": "demo-to", "fd00:10:20::77": "demo-to"}


# -- DNS ----------------------------------------------------------------------------------------
ZONE = Zone(services={("demo-to", "dual"): "172.16.0.20", ("demo-to", "v4"): "172.16.0.21"},
            services6={("demo-to", "dual"): "fd00:96::20", ("demo-to", "v6"): "fd00:96::21"},
            pods={"fd00:10:20::77": "demo-to", "10.20.0.77": "demo-to"})


def ask(name: str, qtype: int) -> tuple[int, list[str], bytes]:
    reply = ZONE.answer(dns.build_query(7, name, qtype))
    assert reply is not None
    _, rcode, found = dns.parse_response(reply)
    return rcode, found, reply


def test_aaaa_records_for_ipv6_cluster_ips_and_pods() -> None:
    rcode, found, reply = ask("dual.demo-to.svc.cluster.local", dns.TYPE_AAAA)
    assert (rcode, found) == (dns.RCODE_OK, ["fd00:96::20"])
    # the answer's wire form: type AAAA, class IN, 16 bytes of address
    assert struct.pack("!HHIH", dns.TYPE_AAAA, dns.CLASS_IN, dns.TTL, 16) + \
        ipaddress.IPv6Address("fd00:96::20").packed in reply
    assert ask("dual.demo-to.svc.cluster.local", dns.TYPE_A)[:2] == (
        dns.RCODE_OK, ["172.16.0.20"])
    # a name with only the other family: NOERROR, no answer (glibc's A+AAAA lookup succeeds)
    assert ask("v6.demo-to.svc.cluster.local", dns.TYPE_A)[:2] == (dns.RCODE_OK, [])
    assert ask("v4.demo-to.svc.cluster.local", dns.TYPE_AAAA)[:2] == (dns.RCODE_OK, [])
    assert ask("v6.demo-to.svc.cluster.local", dns.TYPE_AAAA)[:2] == (
        dns.RCODE_OK, ["fd00:96::21"])
    # pod records: `:` written `-`
    assert ask("fd00-10-20--77.demo-to.pod.cluster.local", dns.TYPE_AAAA)[:2] == (
        dns.RCODE_OK, ["fd00:10:20::77"])
    assert ask("fd00-10-20--77.demo-to.pod.cluster.local", dns.TYPE_A)[:2] == (
        dns.RCODE_OK, [])
    assert ask("fd00-10-20--77.other.pod.cluster.local", dns.TYPE_AAAA)[0] == \
        dns.RCODE_NXDOMAIN
    assert ask("nope.demo-to.svc.cluster.local", dns.TYPE_AAAA)[0] == dns.RCODE_NXDOMAIN


def test_zone_file_keeps_aaaa_records_and_an_ipv4_zone_as_before() -> None:
    assert resolver.zone_from_json(resolver.zone_to_json(ZONE)) == ZONE
    v4_only = Zone(services={("a", "b"): "172.16.0.2"}, pods={"10.20.0.2": "a"})
    assert set(resolver.zone_to_json(v4_only)) == {"domain", "services", "pods"}


def test_pod_etc_files_name_every_dns_address_and_pod_ip() -> None:
    conf = etcfiles.resolv_conf("demo-to", DUAL.dns_ips())
    assert conf.splitlines()[1:3] == ["nameserver 172.16.0.10", "nameserver fd00:96::a"]
    assert etcfiles.resolv_conf("demo-to", "172.16.0.10") == etcfiles.resolv_conf(
        "demo-to", ["172.16.0.10"])
    hosts = etcfiles.hosts(["10.20.0.77", "fd00:10:20::77"], "p")
    assert hosts.endswith("10.20.0.77\tp\nfd00:10:20::77\tp\n")


# -- kube-proxy ---------------------------------------------------------------------------------
def test_kube_proxy_renders_ip6tables_rules_for_ipv6_cluster_ips() -> None:
    port = ServicePort("demo-to", "s", "", "TCP", "fd00:96::20", 18080,
                       (("fd00:10:20::77", 18080), ("fd00:10:20::78", 18080)))
    text = render([port], ipv6=True)
    assert "-A REMORA-SERVICES -d fd00:96::20/128 -p tcp -m tcp --dport 18080 " in text
    assert "-s fd00:10:20::77/128 -j REMORA-MARK-MASQ" in text
    assert "-j DNAT --to-destination [fd00:10:20::78]:18080" in text
    empty = render([ServicePort("demo-to", "e", "", "TCP", "fd00:96::21", 80)], ipv6=True)
    assert "-d fd00:96::21/128 -p tcp -m tcp --dport 80" in empty
    assert "-j REJECT --reject-with icmp6-port-unreachable" in empty
    # the IPv4 rendering is unchanged by the option's existence
    v4 = render([ServicePort("demo-to", "s", "", "TCP", "172.16.0.20", 80,
                             (("10.20.0.77", 8080),))])
    assert "-d 172.16.0.20/32" in v4 and "--to-destination 10.20.0.77:8080" in v4
    assert "icmp6" not in render([ServicePort("demo-to", "e", "", "TCP", "172.16.0.21", 80)])
