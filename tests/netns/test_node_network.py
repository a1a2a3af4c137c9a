"""Pods as namespaces: addresses, routing on one node and across nodes, no NAT."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from remora.node import naming
from remora.node.testing import TempNode

pytestmark = pytest.mark.netns

# A one-shot TCP server: prints the peer address of the first connection, then exits.
ECHO_PEER = (
    "import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
    "s.bind(('0.0.0.0',int(sys.argv[1])));s.listen();"
    "print('listening',flush=True)\n"
    "while True:\n c,a=s.accept();c.sendall(a[0].encode());c.close();print('peer',a[0],flush=True)"
)
CONNECT = (
    "import socket,sys,time\n"
    "for i in range(100):\n"
    " try:\n  c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=2);break\n"
    " except OSError: time.sleep(0.05)\n"
    "print(c.recv(100).decode())"
)


def pod(name: str, argv: list[str], node: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "local", "command": argv}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "net", "labels": {"app": name}},
            "spec": spec}


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[TempNode]:
    with TempNode(nodes=2) as node:
        node.client.apply([
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "net"}},
            pod("server", [sys.executable, "-c", ECHO_PEER, "9000"], node="1"),
            pod("client", ["sleep", "300"], node="1"),
            pod("far", ["sleep", "300"], node="2"),
        ])
        node.client.wait_ready("net", timeout=20)
        yield node
    assert not node.leftovers()


def pods_by_name(node: TempNode) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in node.client.get("Pod", "net")}


def test_pod_addresses_come_from_their_nodes_slash24(two_nodes: TempNode) -> None:
    pods = pods_by_name(two_nodes)
    nodes = {n["index"]: n for n in two_nodes.client.nodes()}
    assert nodes[1]["subnet"] == "10.20.0.0/24" and nodes[1]["gateway"] == "10.20.0.1"
    assert nodes[2]["subnet"] == "10.20.1.0/24"
    for name, index in (("server", 1), ("client", 1), ("far", 2)):
        ip = ipaddress.IPv4Address(pods[name]["status"]["podIP"])
        assert ip in ipaddress.IPv4Network(nodes[index]["subnet"])
        assert pods[name]["spec"]["nodeName"] == nodes[index]["name"]
    # eth0 inside the pod carries the address, the default route points at the gateway
    out = two_nodes.run(pods["client"], ["ip", "-j", "route", "show", "default"])
    assert json.loads(out.stdout)[0]["gateway"] == "10.20.0.1"
    # the pod namespace has its own lo, up
    out = two_nodes.run(pods["client"], ["ip", "-j", "addr", "show", "lo"])
    assert "UP" in json.loads(out.stdout)[0]["flags"]


def test_two_pods_on_one_node_reach_each_other(two_nodes: TempNode) -> None:
    pods = pods_by_name(two_nodes)
    server_ip = pods["server"]["status"]["podIP"]
    out = two_nodes.run(pods["client"], [sys.executable, "-c", CONNECT, server_ip, "9000"])
    assert out.returncode == 0, out.stderr
    # the server saw the client's own pod IP
    assert out.stdout.strip() == pods["client"]["status"]["podIP"]


def test_pods_on_different_nodes_reach_each_other_without_nat(two_nodes: TempNode) -> None:
    pods = pods_by_name(two_nodes)
    server_ip = pods["server"]["status"]["podIP"]
    out = two_nodes.run(pods["far"], [sys.executable, "-c", CONNECT, server_ip, "9000"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == pods["far"]["status"]["podIP"]
    assert out.stdout.strip().startswith("10.20.1.")


def test_host_namespace_is_untouched(two_nodes: TempNode) -> None:
    links = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True)
    names = {link["ifname"] for link in json.loads(links.stdout)}
    ours = {naming.pod_veth(p["metadata"]["uid"]) for p in pods_by_name(two_nodes).values()}
    assert ours.isdisjoint(names)
    assert naming.BRIDGE not in names and naming.FABRIC_BRIDGE not in names
    # ...and the node namespace does hold the bridge and the pods' veths
    out = subprocess.run(["ip", "-n", f"{two_nodes.prefix}node-1", "-j", "link"],
                         capture_output=True, text=True, check=True)
    in_node = {link["ifname"] for link in json.loads(out.stdout)}
    assert naming.BRIDGE in in_node
    assert ours & in_node
