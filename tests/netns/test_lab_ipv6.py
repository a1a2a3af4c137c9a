"""The seed's story over IPv6 (`remora demo --ip-family ipv6`), in an isolated lab, with
`remora proxy` as every sidecar; test_lab_ipv6_envoy.py runs it with a real Envoy 1.40
and asserts the same observations (shared below).

REDIRECT: the server logs `RemoteAddr=[::6]:PORT` (Istio's inbound passthrough bind for
IPv6), the server sidecar's access log `inbound|18080|| [::6]:PORT [fd00:10:20::77]:18080
[fd00:10:20::78]:PORT`, ip6tables' `-o lo -s ::6 RETURN`, the cluster's bind `::6`; the
TPROXY fix makes the server log the client pod's own IPv6 address. In the same lab:
cluster DNS answers AAAA (and no A) for the IPv6-only service, the pod's resolv.conf
names the IPv6 DNS address, and a pod without a sidecar reaches the service's IPv6
ClusterIP through the node's ip6tables (kube-proxy) rules (the server sidecar sees it by
its own IPv6 address and, the policy below allowing only the client, refuses it). With `--authz`, an
AuthorizationPolicy whose ipBlocks hold the client's /128 is enforced by the server
sidecar over IPv6 in both modes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from remora.lab import demo
from remora.lab.demo import DemoResult
from remora.lab.settings import LabSettings
from remora.lab.testing import TempLab
from tests.netns.manifests import TOOLBOX

pytestmark = pytest.mark.netns

SERVER6, CLIENT6 = "fd00:10:20::77", "fd00:10:20::78"
SERVICE_CIDR6 = re.compile(r"fd00:96::[0-9a-f:]+")


def run(lab: TempLab, sidecar: str, authz: bool = False) -> tuple[DemoResult, list[str]]:
    lines: list[str] = []
    result = demo.run(lab.state_dir, LabSettings(sidecar=sidecar, ip_family="ipv6"),
                      prefix=lab.prefix, timeout=40, echo=lines.append, authz=authz)
    return result, lines


def assert_ipv6_authz(r: DemoResult, lines: list[str]) -> None:
    """`--authz` over IPv6: ipBlocks [client/128] let the client in and refuse the
    intruder, at the server sidecar, in REDIRECT and in TPROXY."""
    assert "$ remora apply -f allow-simple-client.yaml  # ipBlocks: [fd00:10:20::78/128]" in lines
    assert ":" in r.intruder_ip and r.intruder_ip != CLIENT6
    for key in ("authz-access-log", "authz-tproxy-access-log"):
        log = r.outputs[key]
        assert re.search(r'" 200 .* inbound\|18080\|\| \S+ \S+ \[fd00:10:20::78\]:\d+ ', log), log
        assert re.search(r'" 403 - rbac_access_denied_matched_policy\[none\] .* '
                         rf"\[{r.intruder_ip}\]:\d+ ", log), log
    assert "RBAC: access denied" in r.outputs["intruder-log"]


def assert_ipv6_story(r: DemoResult, lines: list[str]) -> None:
    out = r.outputs
    assert r.ip_family == "ipv6"
    assert (r.server_ip, r.client_ip) == (SERVER6, CLIENT6)
    wide = out["client-pods"].splitlines()
    assert wide[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert re.match(rf"simple-client-\w+-\w{{5}}\s+2/2\s+Running\s+0\s+\S+\s+{CLIENT6}\s",
                    wide[1]), wide
    assert re.search(r"simple-server-svc\s+ClusterIP\s+fd00:96::[0-9a-f:]+\s+<none>\s+"
                     r"18080/TCP", out["services"]), out["services"]
    # an IPv6-only cluster's injection: the same istio-init args, no dual-stack env
    init = json.loads(out["server-json"])["spec"]["initContainers"][0]
    assert init["args"][:9] == ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337",
                                "-m", "REDIRECT"]
    assert "env" not in init
    # REDIRECT over IPv6: the app sees ::6
    server_lines = out["server-log"].splitlines()
    assert server_lines and all(
        re.fullmatch(r"X-Forwarded-For=, RemoteAddr=\[::6\]:\d+", line)
        for line in server_lines), server_lines
    assert re.search(r'^\[\S+\] "GET /common/sauth HTTP/1\.1" 200 - via_upstream - "-" 0 60 '
                     r'\d+ \d+ "-" "Go-http-client/1\.1" "[0-9a-f-]{36}" '
                     r'"simple-server-svc\.demo-to:18080" "\[fd00:10:20::77\]:18080" '
                     r"inbound\|18080\|\| \[::6\]:\d+ \[fd00:10:20::77\]:18080 "
                     r"\[fd00:10:20::78\]:\d+ "
                     r"outbound_\.18080_\._\.simple-server-svc\.demo-to\.svc\.cluster\.local "
                     r"default$", out["access-log"], re.M), out["access-log"]
    nat = out["nat"]  # ip6tables -t nat -L -v
    assert re.search(r"RETURN\s+all\s+--\s+any\s+lo\s+::6\s+anywhere", nat), nat
    assert re.search(r"REDIRECT\s+tcp\s+--\s+any\s+any\s+anywhere\s+anywhere\s+"
                     r"redir ports 15006", nat)
    assert re.search(r"redir ports 15001", nat)
    assert re.search(r"^::\s+15006 Trans: raw_buffer; App: HTTP; Addr: \*:18080\s+"
                     r"Cluster: inbound\|18080\|\|$", out["listeners"], re.M), out["listeners"]
    assert '"address": "::6"' in out["cluster-json"]
    # TPROXY over IPv6: the app sees the client pod's own address
    assert r.tproxy_pod != r.server_pod
    after = out["tproxy-log"].splitlines()
    assert after and re.fullmatch(rf"X-Forwarded-For=, RemoteAddr=\[{CLIENT6}\]:\d+",
                                  after[-1]), after
    assert re.search(rf"inbound\|18080\|\| \[{CLIENT6}\]:\d+ \[{r.tproxy_ip}\]:18080 "
                     rf"\[{CLIENT6}\]:\d+ ", out["tproxy-access-log"]), out["tproxy-access-log"]
    assert re.search(r"TPROXY\s+tcp\s+--\s+any\s+any\s+anywhere\s+!localhost\s+"
                     r"TPROXY redirect :::15006 mark 0x539/0xffffffff", out["mangle"])
    steps = [line for line in lines if line.startswith("==> ")]
    assert any("RemoteAddr=[::6]" in s for s in steps)
    assert all(s.rstrip().endswith(".") for s in steps)


def assert_lab_ipv6_services(lab: TempLab, r: DemoResult) -> None:
    """AAAA, the pod's resolv.conf and kube-proxy's ip6tables rules, in the demo's lab."""
    def ok(*args: str, stdin: str | None = None) -> str:
        proc = lab.remora(*args, stdin=stdin)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    svc = json.loads(ok("get", "svc", "-n", "demo-to", "simple-server-svc", "-o", "json"))
    spec = svc["spec"]
    assert (spec["ipFamilies"], spec["ipFamilyPolicy"]) == (["IPv6"], "SingleStack")
    assert SERVICE_CIDR6.fullmatch(spec["clusterIP"]) and spec["clusterIPs"] == [
        spec["clusterIP"]]
    described = ok("describe", "svc", "-n", "demo-to", "simple-server-svc")
    assert "IP Family Policy: SingleStack\nIP Families:      IPv6\n" in described, described
    assert f"Endpoints:        [{r.tproxy_ip}]:18080\n" in described, described
    pod = r.client_pod
    # the pod's resolv.conf: the IPv6 DNS address, reachable from an IPv6-only pod
    conf = ok("exec", "-n", "demo-from", pod, "--", "cat", "/etc/resolv.conf")
    assert "nameserver fd00:96::a\n" in conf and "nameserver 172.16.0.10" not in conf
    lookup = ("import socket;print(sorted({a[4][0] for a in socket.getaddrinfo("
              "'simple-server-svc.demo-to', 18080, type=socket.SOCK_STREAM)}))")
    answer = ok("exec", "-n", "demo-from", pod, "--", sys.executable, "-c", lookup)
    assert answer.strip() == repr([spec["clusterIP"]])  # AAAA only: no A record
    # the pod's record by its IPv6 address (`:` as `-`)
    pod_name = "fd00-10-20--78.demo-from.pod.cluster.local"
    found = ok("exec", "-n", "demo-from", pod, "--", "getent", "ahostsv6", pod_name)
    assert found.split()[0] == CLIENT6
    # a pod without a sidecar: kube-proxy's ip6tables rules DNAT the ClusterIP
    ok("apply", "-f", "-", "--wait", "--timeout", "30", stdin=TOOLBOX)
    body = ok("exec", "-n", "plain", "toolbox", "--", "curl", "-sS", "-g", "--max-time", "5",
              f"http://[{spec['clusterIP']}]:18080/common/sauth")
    # the demo's --authz policy allows only the client's /128: the server sidecar (TPROXY
    # by now) sees the toolbox's own IPv6 address and refuses it
    assert body == "RBAC: access denied"
    toolbox = json.loads(ok("get", "po", "-n", "plain", "toolbox", "-o", "json"))
    assert toolbox["status"]["podIPs"] == [{"ip": toolbox["status"]["podIP"]}]
    assert ":" in toolbox["status"]["podIP"]
    denied = ""
    for _ in range(30):  # the access log is written as the request ends
        denied = ok("logs", "-n", "demo-to", r.tproxy_pod, "-c", "istio-proxy")
        if f"[{toolbox['status']['podIP']}]:" in denied:
            break
        subprocess.run(["sleep", "0.3"], check=True)
    assert re.search(r'" 403 - rbac_access_denied_matched_policy\[none\] .* '
                     rf"\[{toolbox['status']['podIP']}\]:\d+ ", denied), denied
    described = ok("describe", "pod", "-n", "plain", "toolbox")
    assert re.search(rf"^IPs:\n  IP:\s+{re.escape(toolbox['status']['podIP'])}$", described,
                     re.M), described
    # the node's ip6tables nat table holds the service's chain (kube-proxy's IPv6 proxier)
    node = f"{lab.prefix}node-1"
    rules = subprocess.run(["ip", "netns", "exec", node, "ip6tables-save", "-t", "nat"],
                           capture_output=True, text=True, check=True).stdout
    assert re.search(rf"-A REMORA-SERVICES -d {re.escape(spec['clusterIP'])}/128 -p tcp .*"
                     r"-j REMORA-SVC-", rules), rules


def test_ipv6_demo_with_remora_proxy() -> None:
    with TempLab() as lab:
        result, lines = run(lab, "remora", authz=True)
        assert lines[0].endswith("sidecar: remora proxy, IPv6")
        assert_ipv6_story(result, lines)
        assert_ipv6_authz(result, lines)
        assert_lab_ipv6_services(lab, result)
        lab.close()
        assert lab.leftovers() == []
