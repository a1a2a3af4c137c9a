"""A dual-stack lab (`remora demo --ip-family dual`): the seed's story runs over IPv4, the
cluster's primary family, exactly as in an IPv4 lab (the seed's own service is
SingleStack, as Kubernetes defaults it), and a PreferDualStack service answers on both of
its ClusterIPs (the demo's last steps): from the meshed client through its sidecar, and
from a pod without a sidecar through kube-proxy's iptables and ip6tables rules, where the
TPROXY server sees the caller's address of the family it used. A and AAAA records,
describe's IPs, the injected ISTIO_DUAL_STACK and istio-init's ip6tables rules in the pod.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from remora.lab import demo
from remora.lab.settings import LabSettings
from remora.lab.testing import TempLab
from tests.netns.manifests import TOOLBOX
from tests.netns.test_seed_demo import assert_seed_observations

pytestmark = pytest.mark.netns

BODY = '{"code": 0, "status": "fail", "user": {"id": "test_common"}}'


def test_dual_stack_lab() -> None:
    check_dual_stack_lab("remora")


def check_dual_stack_lab(sidecar: str) -> None:
    lines: list[str] = []
    with TempLab() as lab:
        r = demo.run(lab.state_dir, LabSettings(ip_family="dual", sidecar=sidecar),
                     prefix=lab.prefix, timeout=40, echo=lines.append)
        name = "real Envoy" if sidecar == "envoy" else "remora proxy"
        assert lines[0].endswith(f"sidecar: {name}, dual stack")
        assert_seed_observations(r, lines)  # IPv4 first: the seed's story as it was

        def ok(*args: str, stdin: str | None = None) -> str:
            proc = lab.remora(*args, stdin=stdin)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            return proc.stdout

        # the pods have both families, IPv4 first
        client = json.loads(ok("get", "po", "-n", "demo-from", r.client_pod, "-o", "json"))
        assert client["status"]["podIPs"] == [{"ip": "10.20.0.78"}, {"ip": "fd00:10:20::78"}]
        assert re.search(r"^IPs:\n  IP:\s+10\.20\.0\.78\n  IP:\s+fd00:10:20::78$",
                         ok("describe", "pod", "-n", "demo-from", r.client_pod), re.M)
        init = client["spec"]["initContainers"][0]
        assert init["env"] == [{"name": "ISTIO_DUAL_STACK", "value": "true"}]
        rules6 = ok("exec", "-n", "demo-from", r.client_pod, "--", "ip6tables-save", "-t", "nat")
        assert "-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN" in rules6, rules6
        # the seed's service: SingleStack IPv4 (no ipFamilyPolicy), an A record only
        seed = json.loads(ok("get", "svc", "-n", "demo-to", "simple-server-svc", "-o", "json"))
        assert (seed["spec"]["ipFamilies"], seed["spec"]["ipFamilyPolicy"]) == (
            ["IPv4"], "SingleStack")
        ok("apply", "-f", "-", "--wait", "--timeout", "30", stdin=TOOLBOX)  # the plain pod
        dual = json.loads(ok("get", "svc", "-n", "demo-to", "simple-server-dual", "-o", "json"))
        v4, v6 = dual["spec"]["clusterIPs"]
        assert dual["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
        assert dual["spec"]["ipFamilyPolicy"] == "PreferDualStack"
        assert v4.startswith("172.16.") and v6.startswith("fd00:96::")
        described = ok("describe", "svc", "-n", "demo-to", "simple-server-dual")
        assert re.search(r"^IP Family Policy:\s+PreferDualStack\nIP Families:\s+IPv4,IPv6\n"
                         rf"IP:\s+{v4}\nIPs:\s+{v4},{v6}$", described, re.M), described
        # A and AAAA from the cluster DNS (resolv.conf names both DNS addresses)
        lookup = ("import socket;print(sorted({a[4][0] for a in socket.getaddrinfo("
                  "'simple-server-dual.demo-to', 18080, type=socket.SOCK_STREAM)}))")
        assert ok("exec", "-n", "demo-from", r.client_pod, "--", sys.executable, "-c",
                  lookup).strip() == repr(sorted([v4, v6]))
        assert ok("exec", "-n", "demo-from", r.client_pod, "--", sys.executable, "-c",
                  lookup.replace("simple-server-dual", "simple-server-svc")).strip() == repr(
                      [seed["spec"]["clusterIP"]])
        # the demo's last steps: the meshed client over each family, through its sidecar;
        # the answer is the server's, and the access log names the ClusterIP dialled
        assert r.outputs["dual-curl-ipv6"] == r.outputs["dual-curl-ipv4"] == BODY
        access = r.outputs["dual-access-log"]
        assert len(access.splitlines()) == 2, access
        for ip in (v6, v4):
            host = re.escape(f"[{ip}]" if ":" in ip else ip)
            assert re.search(r" 200 .*outbound\|18080\|\|simple-server-dual\.demo-to\.svc\."
                             rf"cluster\.local \S+ {host}:18080 ", access), access
        assert any(line.startswith("$ remora logs -n demo-from ") and
                   line.endswith("-c istio-proxy | grep simple-server-dual") for line in lines)
        # Istio's dual stack (ISTIO_DUAL_STACK): one EDS endpoint per pod at its primary
        # address, the IPv6 one as additional_addresses (Happy Eyeballs fallback). Both
        # requests go to the server over IPv4 (UPSTREAM_HOST), whichever ClusterIP the
        # app dialled, and the TPROXY server sees the client's IPv4 address for both.
        server_ip4, client_ip4 = r.tproxy_ip, "10.20.0.78"  # the TPROXY pod by now
        assert ":" not in server_ip4
        for line in access.splitlines():
            assert re.search(rf' "{re.escape(server_ip4)}:18080" outbound\|18080\|\|', line), line
        server = r.outputs["dual-server-access-log"]
        assert len(server.splitlines()) == 2, server
        for line in server.splitlines():
            # DOWNSTREAM_LOCAL_ADDRESS and DOWNSTREAM_REMOTE_ADDRESS are IPv4; with TPROXY
            # the sidecar dials the app from the client's own address (original_src)
            assert re.search(rf" inbound\|18080\|\| {re.escape(client_ip4)}:\d+ "
                             rf"{re.escape(server_ip4)}:18080 {re.escape(client_ip4)}:\d+ ",
                             line), line
        # a pod without a sidecar over each family (kube-proxy: iptables and ip6tables);
        # the server runs TPROXY now, so it logs the caller's address of that family
        toolbox = json.loads(ok("get", "po", "-n", "plain", "toolbox", "-o", "json"))
        t4, t6 = (x["ip"] for x in toolbox["status"]["podIPs"])
        for ip, caller in ((v6, f"[{t6}]"), (v4, t4)):
            host = f"[{ip}]" if ":" in ip else ip
            assert ok("exec", "-n", "plain", "toolbox", "--", "curl", "-sS", "-g",
                      "--max-time", "5", f"http://{host}:18080/common/sauth") == BODY
            log = ""
            for _ in range(30):
                log = ok("logs", "-n", "demo-to", "-l", "web=server", "--tail", "50")
                if f"RemoteAddr={caller}:" in log:
                    break
                subprocess.run(["sleep", "0.3"], check=True)
            assert re.search(rf"RemoteAddr={re.escape(caller)}:\d+$", log, re.M), log
        # explain, live, for each family of the dual-stack service's ClusterIPs
        for to, fam in ((f"[{v6}]:18080", []), ("simple-server-dual.demo-to:18080",
                                                ["--family", "ipv6"]),
                        (f"{v4}:18080", [])):
            doc = json.loads(ok("explain", "source-ip", "--from", "deploy/simple-client",
                                "-n", "demo-from", "--to", to, *fam, "--path",
                                "/common/sauth", "-o", "json"))
            live = doc["live"]
            v6_asked = to.startswith("[") or bool(fam)
            # the sidecars reach the server over IPv4 either way (Istio's EDS: the pod's
            # primary address), so the walk and probe take that path, never an IPv6
            # client against an IPv4 server; an IPv6 ask says so
            assert live["destination"]["host"] == v4
            assert live["probe"]["status"] == 200, live["probe"]
            assert live["client_pod"]["ip"] == client_ip4
            [c_line] = live["client_access_log"]
            assert c_line["upstream_host"] == f"{server_ip4}:18080"  # IPv4 either way
            real = [n for n in live["notes"] if "IPv6 is not the path the traffic takes" in n]
            assert bool(real) == v6_asked, live["notes"]
            if real:
                assert f"[{v6}]:18080" in real[0] and f"IPv4 ClusterIP {v4}" in real[0]
            assert doc["verdict"]["fixes"] == [], doc["verdict"]  # TPROXY already applied
            [s_line] = live["server_access_log"]
            assert s_line["upstream_local_address"].startswith(f"{client_ip4}:")
            assert doc["verdict"]["confirmed"] is True, doc["verdict"]
            assert doc["verdict"]["app_sees"] == client_ip4, doc["verdict"]
        lab.close()
        assert lab.leftovers() == []
