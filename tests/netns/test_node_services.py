"""Services on the node: ClusterIP through kube-proxy-style DNAT, and cluster DNS."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from remora.node.testing import TempNode

pytestmark = pytest.mark.netns

# Answers every connection with the server's own pod IP (from the downward API).
SERVE_OWN_IP = (
    "import os,socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
    "s.bind(('0.0.0.0',18080));s.listen()\n"
    "while True:\n c,a=s.accept();c.sendall(os.environ['POD_IP'].encode());c.close()"
)
ASK = (
    "import socket,sys,time\n"
    "seen=[]\n"
    "for i in range(int(sys.argv[3])):\n"
    " for t in range(50):\n"
    "  try:\n   c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=2);break\n"
    "  except ConnectionRefusedError: time.sleep(0.05)\n"
    " seen.append(c.recv(100).decode());c.close()\n"
    "print(' '.join(seen))"
)
RESOLVE = (
    "import socket,sys\n"
    "for name in sys.argv[1:]:\n"
    " try: print(name, sorted({a[4][0] for a in socket.getaddrinfo(name, 80)}))\n"
    " except socket.gaierror as e: print(name, 'ERROR', e.errno)"
)


def objects() -> list[dict[str, Any]]:
    server = {"name": "demo", "image": "vasth/simple-server",
              "command": [sys.executable, "-c", SERVE_OWN_IP],
              "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
              "readinessProbe": {"tcpSocket": {"port": 18080}}}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo-to"}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo-from"}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "simple-server", "namespace": "demo-to"},
         "spec": {"replicas": 2, "selector": {"matchLabels": {"web": "server"}},
                  "template": {"metadata": {"labels": {"web": "server"}},
                               "spec": {"containers": [server]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "simple-server-svc", "namespace": "demo-to"},
         "spec": {"selector": {"web": "server"}, "ports": [{"port": 18080, "targetPort": 18080}]}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "nobody", "namespace": "demo-to"},
         "spec": {"selector": {"web": "none"}, "ports": [{"port": 80}]}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "client", "namespace": "demo-from"},
         "spec": {"containers": [{"name": "demo", "image": "x", "command": ["sleep", "300"]}]}},
    ]


@pytest.fixture(scope="module")
def node() -> Iterator[TempNode]:
    with TempNode() as node:
        node.client.apply(objects())
        node.client.wait_ready(timeout=20)
        yield node
    assert not node.leftovers()


def cluster_ip(node: TempNode, name: str) -> str:
    svc = {s["metadata"]["name"]: s for s in node.client.get("Service", "demo-to")}[name]
    ip = svc["spec"]["clusterIP"]
    assert ip.startswith("172.16.")
    return str(ip)


def test_cluster_ip_reaches_every_endpoint_by_dnat(node: TempNode) -> None:
    servers = {p["status"]["podIP"] for p in node.client.get("Pod", "demo-to")}
    assert len(servers) == 2
    ip = cluster_ip(node, "simple-server-svc")
    out = node.run("client", [sys.executable, "-c", ASK, ip, "18080", "30"], "demo-from")
    assert out.returncode == 0, out.stderr
    seen = out.stdout.split()
    assert len(seen) == 30 and set(seen) == servers  # both endpoints got connections


def test_service_without_endpoints_refuses(node: TempNode) -> None:
    ip = cluster_ip(node, "nobody")
    code = ("import socket,sys\ntry: socket.create_connection((sys.argv[1],80),timeout=3)\n"
            "except ConnectionRefusedError: print('refused')")
    out = node.run("client", [sys.executable, "-c", code, ip], "demo-from")
    assert out.stdout.strip() == "refused", out.stderr


def test_dns_names_resolve_with_getent(node: TempNode) -> None:
    ip = cluster_ip(node, "simple-server-svc")
    for name in ("simple-server-svc.demo-to", "simple-server-svc.demo-to.svc",
                 "simple-server-svc.demo-to.svc.cluster.local"):
        out = node.run("client", ["getent", "hosts", name], "demo-from")
        assert out.returncode == 0, (name, out.stderr)
        assert out.stdout.split()[0] == ip
    # the short name resolves only inside the service's own namespace (search list)
    server = node.client.get("Pod", "demo-to")[0]
    assert node.run(server, ["getent", "hosts", "simple-server-svc"]).stdout.split()[0] == ip
    assert node.run("client", ["getent", "hosts", "simple-server-svc"], "demo-from").returncode == 2


def test_dns_names_resolve_with_python_getaddrinfo(node: TempNode) -> None:
    ip = cluster_ip(node, "simple-server-svc")
    names = ["simple-server-svc.demo-to", "simple-server-svc.demo-to.svc",
             "simple-server-svc.demo-to.svc.cluster.local", "no-such-svc.demo-to"]
    out = node.run("client", [sys.executable, "-c", RESOLVE, *names], "demo-from")
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    for name in names[:3]:
        assert lines[name] == repr([ip])
    assert lines["no-such-svc.demo-to"].startswith("ERROR")


def test_pod_resolv_conf_is_kubernetes_clusterfirst(node: TempNode) -> None:
    out = node.run("client", ["cat", "/etc/resolv.conf"], "demo-from")
    assert out.stdout.splitlines() == [
        "search demo-from.svc.cluster.local svc.cluster.local cluster.local",
        "nameserver 172.16.0.10",
        "options ndots:5",
    ]


def test_new_service_is_in_dns_and_rules_at_once(node: TempNode) -> None:
    node.client.apply([{"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": "later", "namespace": "demo-to"},
                        "spec": {"selector": {"web": "server"},
                                 "ports": [{"port": 8080, "targetPort": 18080}]}}])
    ip = cluster_ip(node, "later")
    code = ("import socket,time\nfor i in range(100):\n"
            " try: print(socket.gethostbyname('later.demo-to')); break\n"
            " except OSError: time.sleep(0.05)")
    out = node.run("client", [sys.executable, "-c", code], "demo-from")
    assert out.stdout.strip() == ip
    out = node.run("client", [sys.executable, "-c", ASK, ip, "8080", "1"], "demo-from")
    assert out.stdout.strip().startswith("10.20.0.")


def test_endpoint_reaches_its_own_service_hairpin(node: TempNode) -> None:
    ip = cluster_ip(node, "simple-server-svc")
    server = node.client.get("Pod", "demo-to")[0]
    out = node.run(server, [sys.executable, "-c", ASK, ip, "18080", "20"])
    assert out.returncode == 0, out.stderr
    # with two endpoints, 20 connections land on the pod itself too (kube-proxy masquerades
    # that hairpin case so the reply comes back through the node)
    assert server["status"]["podIP"] in out.stdout.split()


def test_dns_over_tcp(node: TempNode) -> None:
    ip = cluster_ip(node, "simple-server-svc")
    code = (
        "import socket,struct,sys\n"
        "from remora.node import dns\n"
        "q=dns.build_query(77,'simple-server-svc.demo-to.svc.cluster.local')\n"
        "s=socket.create_connection(('172.16.0.10',53),timeout=3)\n"
        "s.sendall(struct.pack('!H',len(q))+q)\n"
        "n=struct.unpack('!H',s.recv(2))[0];data=b''\n"
        "while len(data)<n: data+=s.recv(n-len(data))\n"
        "print(dns.parse_response(data))")
    out = node.run("client", [sys.executable, "-c", code], "demo-from")
    assert out.stdout.strip() == repr((77, 0, [ip])), out.stderr
