"""Dual-stack pods on two nodes (node runtime only): each pod has an IPv4 and an IPv6
address of its node's ranges, pods reach each other over both families on one node and
across the fabric without NAT, and a PreferDualStack service's two ClusterIPs lead
through kube-proxy's iptables and ip6tables rules to the endpoint's address of the
caller's family."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from remora.node.testing import TempNode

pytestmark = pytest.mark.netns

# A TCP server on [::] that takes both families (v4-mapped) and answers with the peer
ECHO_PEER = (
    "import socket,sys;s=socket.socket(socket.AF_INET6);"
    "s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0);"
    "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('::',int(sys.argv[1])));"
    "s.listen()\n"
    "while True:\n c,a=s.accept();c.sendall(a[0].removeprefix('::ffff:').encode());c.close()"
)
CONNECT = (
    "import socket,sys,time\n"
    "for i in range(100):\n"
    " try:\n  c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=2);break\n"
    " except OSError: time.sleep(0.05)\n"
    "print(c.recv(100).decode())"
)


def pod(name: str, argv: list[str], node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "net", "labels": {"app": name}},
            "spec": {"nodeName": node,
                     "containers": [{"name": "main", "image": "local", "command": argv}]}}


@pytest.fixture(scope="module")
def dual() -> Iterator[TempNode]:
    with TempNode(nodes=2, ip_family="dual") as node:
        node.client.apply([
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "net"}},
            pod("server", [sys.executable, "-c", ECHO_PEER, "9000"], node="1"),
            pod("client", ["sleep", "300"], node="1"),
            pod("far", ["sleep", "300"], node="2"),
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "echo", "namespace": "net"},
             "spec": {"ipFamilyPolicy": "RequireDualStack", "selector": {"app": "server"},
                      "ports": [{"port": 80, "targetPort": 9000}]}},
        ])
        node.client.wait_ready("net", timeout=20)
        yield node
    assert not node.leftovers()


def addresses(node: TempNode) -> dict[str, list[str]]:
    return {p["metadata"]["name"]: [x["ip"] for x in p["status"]["podIPs"]]
            for p in node.client.get("Pod", "net")}


def peer_seen(node: TempNode, source: str, target: str, port: int = 9000) -> str:
    out = node.run(pod(source, [], "1"), [sys.executable, "-c", CONNECT, target, str(port)])
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_pods_get_both_families_from_their_nodes_ranges(dual: TempNode) -> None:
    ips = addresses(dual)
    for name, net4, net6 in (("server", "10.20.0.0/24", "fd00:10:20::/64"),
                             ("far", "10.20.1.0/24", "fd00:10:20:1::/64")):
        v4, v6 = ips[name]
        assert ipaddress.ip_address(v4) in ipaddress.ip_network(net4)
        assert ipaddress.ip_address(v6) in ipaddress.ip_network(net6)
        assert v6.rsplit(":", 1)[1] == v4.rsplit(".", 1)[1]  # ::N beside .N
    nodes = dual.client.nodes()
    assert [(n["subnet6"], n["gateway6"], n["nodeIP6"]) for n in nodes] == [
        ("fd00:10:20::/64", "fd00:10:20::1", "fd00:192:168::1"),
        ("fd00:10:20:1::/64", "fd00:10:20:1::1", "fd00:192:168::2")]


def test_both_families_on_one_node_and_across_nodes_without_nat(dual: TempNode) -> None:
    ips = addresses(dual)
    server4, server6 = ips["server"]
    for source in ("client", "far"):
        v4, v6 = ips[source]
        assert peer_seen(dual, source, server6) == v6
        assert peer_seen(dual, source, server4) == v4


def test_dual_stack_cluster_ips_reach_the_endpoint_of_each_family(dual: TempNode) -> None:
    (svc,) = dual.client.get("Service", "net")
    cluster4, cluster6 = svc["spec"]["clusterIPs"]
    assert svc["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    ips = addresses(dual)
    for source in ("client", "far"):
        v4, v6 = ips[source]
        assert peer_seen(dual, source, cluster6, 80) == v6
        assert peer_seen(dual, source, cluster4, 80) == v4
