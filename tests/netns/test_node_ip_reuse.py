"""A pod that gets a deleted pod's IP is reachable at once (no stale neighbour entry).

The node reaches its pods through the bridge, so it caches each pod IP's MAC. Without a
MAC derived from the IP (and a flush of the entry on attach/detach) the entry for a reused
IP still names the deleted pod's MAC, REACHABLE for 15-45 s, and every frame to the new pod
is addressed to a MAC nobody has.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from remora.node import naming
from remora.node.testing import TempNode

pytestmark = pytest.mark.netns

# Prints 'listening' once bound, then answers every connection with the peer's address.
ECHO_PEER = (
    "import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
    "s.bind(('0.0.0.0',int(sys.argv[1])));s.listen();"
    "print('listening',flush=True)\n"
    "while True:\n c,a=s.accept();c.sendall(a[0].encode());c.close()"
)
# Connects within BUDGET seconds (retrying refusals and timeouts), prints what it read.
CONNECT_WITHIN = (
    "import socket,sys,time\n"
    "end=time.monotonic()+float(sys.argv[3])\n"
    "while True:\n"
    " left=end-time.monotonic()\n"
    " if left<=0: print('unreachable');sys.exit(1)\n"
    " try:\n  c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=left);break\n"
    " except OSError: time.sleep(0.02)\n"
    "print(c.recv(100).decode())"
)


def pod(name: str, argv: list[str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"containers": [{"name": "main", "image": "x", "command": argv}]}}


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def by_name(node: TempNode, name: str) -> dict[str, Any] | None:
    return next((p for p in node.client.get("Pod", "default") if p["metadata"]["name"] == name),
                None)


def listening(node: TempNode, name: str) -> dict[str, Any] | None:
    p = by_name(node, name)
    if p and p["status"].get("ready") and "listening" in node.client.logs(
            "default", name)["text"]:
        return p
    return None


def connect(node: TempNode, client: str, ip: str, budget: float) -> str:
    out = node.run(client, [sys.executable, "-c", CONNECT_WITHIN, ip, "9000", str(budget)])
    return out.stdout.strip()


def eth0_mac(node: TempNode, name: str) -> str:
    out = node.run(name, ["ip", "-j", "link", "show", naming.POD_IFNAME])
    return str(json.loads(out.stdout)[0]["address"])


def test_pod_reusing_a_deleted_pods_ip_is_reachable_at_once() -> None:
    server = [sys.executable, "-c", ECHO_PEER, "9000"]
    with TempNode() as node:
        node.client.apply([pod("a", server)])
        a = wait_for(lambda: listening(node, "a"))
        node.client.apply([pod("b", ["sleep", "300"])])
        b = node.client.wait_ready("default", timeout=10, names=["b"])[0]
        ip = a["status"]["podIP"]
        assert b["status"]["podIP"] != ip
        # B talks to A: the node now holds ip -> A's MAC as a REACHABLE neighbour
        assert connect(node, "b", ip, 5.0) == b["status"]["podIP"]

        node.client.delete("Pod", "a")
        wait_for(lambda: by_name(node, "a") is None)
        node.client.apply([pod("c", server)])
        c = wait_for(lambda: listening(node, "c"))
        assert c["status"]["podIP"] == ip  # the released address is handed out again

        assert connect(node, "b", ip, 1.0) == b["status"]["podIP"]
    assert not node.leftovers()


def test_pod_mac_is_derived_from_its_ip() -> None:
    with TempNode() as node:
        node.client.apply([pod("m", ["sleep", "300"])])
        m = node.client.wait_ready(timeout=10)[0]
        octets = [int(x) for x in m["status"]["podIP"].split(".")]
        # Docker's scheme: 02:42 (locally administered, unicast) + the four IP bytes
        assert eth0_mac(node, "m") == "02:42:" + ":".join(f"{o:02x}" for o in octets)
    assert not node.leftovers()
