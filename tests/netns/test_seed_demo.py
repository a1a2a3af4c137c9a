"""The seed, end to end: `remora demo` in an isolated lab, every observation asserted.

One run of the demo (remora proxy as the sidecar); test_seed_demo_envoy.py runs the same
flow with a real Envoy and asserts the same observations (shared below).
"""

from __future__ import annotations

import json
import re

import pytest

from remora.lab import demo
from remora.lab.demo import DemoResult
from remora.lab.settings import LabSettings
from remora.lab.testing import TempLab

pytestmark = pytest.mark.netns

SEED_SERVER_IP = "10.20.0.77"
SEED_CLIENT_IP = "10.20.0.78"


def run_demo(sidecar: str) -> tuple[DemoResult, list[str], list[str]]:
    lines: list[str] = []
    with TempLab() as lab:
        result = demo.run(lab.state_dir, LabSettings(sidecar=sidecar), prefix=lab.prefix,
                          timeout=40, echo=lines.append)
        lab.close()
        left = lab.leftovers()
    return result, lines, left


def assert_seed_observations(r: DemoResult, lines: list[str]) -> None:
    out = r.outputs
    # the seed's addresses: server .77, client .78 (pod-ip-start 77, server applied first)
    assert (r.server_ip, r.client_ip) == (SEED_SERVER_IP, SEED_CLIENT_IP)
    wide = out["client-pods"].splitlines()
    assert wide[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert re.match(rf"simple-client-\w+-\w{{5}}\s+2/2\s+Running\s+0\s+\S+\s+{SEED_CLIENT_IP}\s",
                    wide[1])
    assert re.search(r"simple-server-svc\s+ClusterIP\s+172\.16\.\d+\.\d+\s+<none>\s+18080/TCP",
                     out["services"])
    # the injected istio-init, args as Istio's injector writes them (the seed's jq listing)
    init = json.loads(out["server-json"])["spec"]["initContainers"][0]
    assert (init["name"], init["image"]) == ("istio-init", "docker.io/istio/proxyv2:1.11.3")
    assert init["args"][:17] == ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337",
                                 "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d",
                                 "15090,15021,15020"]
    assert any(line == "$ remora get po -n demo-to " + r.server_pod +
               " -o json | jq '.spec.initContainers[]'" for line in lines)
    # REDIRECT: the server sees 127.0.0.6
    server_lines = out["server-log"].splitlines()
    assert server_lines
    assert all(re.fullmatch(r"X-Forwarded-For=, RemoteAddr=127\.0\.0\.6:\d+", line)
               for line in server_lines), server_lines
    # the access log's five-tuple in Istio's order: cluster, upstream local, downstream
    # local, downstream remote
    assert re.search(r'^\[\S+\] "GET /common/sauth HTTP/1\.1" 200 - via_upstream - "-" 0 60 '
                     r'\d+ \d+ "-" "Go-http-client/1\.1" "[0-9a-f-]{36}" '
                     r'"simple-server-svc\.demo-to:18080" "10\.20\.0\.77:18080" '
                     rf"inbound\|18080\|\| 127\.0\.0\.6:\d+ {SEED_SERVER_IP}:18080 "
                     rf"{SEED_CLIENT_IP}:\d+ "
                     r"outbound_\.18080_\._\.simple-server-svc\.demo-to\.svc\.cluster\.local "
                     r"default$", out["access-log"], re.M), out["access-log"]
    # the nat table istio-init installed (REDIRECT)
    nat = out["nat"]
    assert re.search(r"ISTIO_INBOUND\s+tcp\s+--\s+any\s+any\s+anywhere\s+anywhere", nat)
    assert re.search(r"REDIRECT\s+tcp\s+--\s+any\s+any\s+anywhere\s+anywhere\s+"
                     r"redir ports 15006", nat)
    assert re.search(r"RETURN\s+all\s+--\s+any\s+lo\s+127\.0\.0\.6\s+anywhere", nat)
    assert re.search(r"redir ports 15001", nat)
    # listener and cluster tables
    for match in ("Trans: raw_buffer; App: HTTP; Addr: \\*:18080",
                  "Trans: tls; App: istio-http/1\\.0,istio-http/1\\.1,istio-h2; Addr: \\*:18080"):
        assert re.search(rf"^0\.0\.0\.0 15006 {match}\s+Cluster: inbound\|18080\|\|$",
                         out["listeners"], re.M), out["listeners"]
    assert out["clusters"].splitlines()[0].split() == [
        "SERVICE", "FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION", "RULE"]
    assert re.search(r"^\s+18080\s+-\s+inbound\s+ORIGINAL_DST", out["clusters"], re.M)
    assert '"address": "127.0.0.6"' in out["cluster-json"]
    # the fix: a new pod (new name), TPROXY capture, the client's IP at the server
    assert "deployment.apps/simple-server patched" in out["patch"]
    assert 'deployment "simple-server" successfully rolled out' in out["rollout"]
    assert r.tproxy_pod != r.server_pod and r.tproxy_pod.startswith("simple-server-")
    after = out["tproxy-log"].splitlines()
    assert after and re.fullmatch(rf"X-Forwarded-For=, RemoteAddr={SEED_CLIENT_IP}:\d+",
                                  after[-1]), after
    assert re.search(rf"inbound\|18080\|\| {SEED_CLIENT_IP}:\d+ {r.tproxy_ip}:18080 "
                     rf"{SEED_CLIENT_IP}:\d+ ", out["tproxy-access-log"])
    mangle = out["mangle"]
    assert re.search(r"TPROXY\s+tcp\s+--\s+any\s+any\s+anywhere\s+!localhost\s+"
                     r"TPROXY redirect 0\.0\.0\.0:15006 mark 0x539/0xffffffff", mangle)
    assert re.search(r"ISTIO_DIVERT\s+tcp.*ctstate RELATED,ESTABLISHED", mangle)
    # each step says what it shows, in one sentence
    steps = [line for line in lines if line.startswith("==> ")]
    assert len(steps) >= 10
    assert all(s.rstrip().endswith(".") for s in steps)


def test_seed_demo_with_remora_proxy() -> None:
    result, lines, left = run_demo("remora")
    assert_seed_observations(result, lines)
    assert any("remove it all with `remora down" in line for line in lines)
    assert left == []
