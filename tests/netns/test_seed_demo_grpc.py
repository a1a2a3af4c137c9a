"""`remora demo --grpc --sidecar envoy` in an isolated lab: the seed's story over gRPC
(HTTP/2 through both sidecars), every observation asserted; and `--sidecar remora` says
at once that remora proxy has no HTTP/2 yet, before anything starts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import resources as package_files

import pytest

from remora.lab import demo_grpc
from remora.lab.settings import LabSettings
from remora.lab.testing import TempLab

pytestmark = [pytest.mark.netns, pytest.mark.envoy]

SERVER_IP, CLIENT_IP = "10.20.0.77", "10.20.0.78"
SNI = r"outbound_\.18080_\._\.simple-grpc-server-svc\.demo-to\.svc\.cluster\.local"


def access_line(local: str, sni: str = SNI) -> str:
    """The server sidecar's line for one call from the client pod (Istio's default
    format): HTTP/2, 200, the gRPC request's size, grpcio's user agent, the cluster, the
    upstream local address LOCAL, the pod's address, the client pod, SNI, route."""
    return (r'^\[\S+\] "POST /remora\.demo\.Simple/Sauth HTTP/2" 200 - via_upstream - "-" '
            r'\d+ \d+ \d+ \d+ "-" "grpc-python/[\d.]+ [^"]*" "[0-9a-f-]{36}" '
            r'"simple-grpc-server-svc\.demo-to:18080" "\S+:18080" '
            rf"inbound\|18080\|\| {local}:\d+ \S+:18080 {re.escape(CLIENT_IP)}:\d+ "
            rf"{sni} default$")


@pytest.mark.parametrize("mtls", [True, False], ids=["mtls", "plaintext"])
def test_grpc_demo_with_real_envoy(mtls: bool) -> None:
    """With mTLS (ALPN istio-h2 between the sidecars) and without (h2c prior knowledge)."""
    lines: list[str] = []
    sni = SNI if mtls else "-"
    with TempLab() as lab:
        r = demo_grpc.run(lab.state_dir, LabSettings(sidecar="envoy", mtls=mtls),
                          prefix=lab.prefix, timeout=40, echo=lines.append)
        lab.close()
        left = lab.leftovers()
    assert left == []
    out = r.outputs
    assert lines[0].endswith("sidecar: real Envoy")
    assert (r.server_ip, r.client_ip) == (SERVER_IP, CLIENT_IP)
    assert re.search(r"simple-grpc-server-svc\s+ClusterIP\s+172\.16\.\d+\.\d+\s+<none>\s+"
                     r"18080/TCP", out["services"])
    # REDIRECT: every call's peer, as grpcio sees it, is 127.0.0.6
    server_lines = out["server-log"].splitlines()
    assert server_lines and all(
        re.fullmatch(r"Method=/remora\.demo\.Simple/Sauth, Peer=ipv4:127\.0\.0\.6:\d+", x)
        for x in server_lines), server_lines
    # grpc-status 0 back at the client, through both sidecars
    client_lines = out["client-log"].splitlines()
    assert client_lines and all(
        x == 'status=OK code=0 reply={"code": 0, "status": "fail", "user": '
             '{"id": "test_common"}}' for x in client_lines), client_lines
    # the server sidecar's access log: HTTP/2, 200, from the client pod, to the app from
    # 127.0.0.6, over mTLS
    assert re.search(access_line(r"127\.0\.0\.6", sni), out["access-log"], re.M), \
        out["access-log"]
    # inbound chains for mTLS (istio-h2 among the ALPNs) and plain text
    for match in (r"Trans: raw_buffer; Addr: \*:18080",
                  r"Trans: tls; App: istio-http/1\.0,istio-http/1\.1,istio-h2; Addr: \*:18080"
                  )[:2 if mtls else 1]:
        assert re.search(rf"^0\.0\.0\.0 15006 {match}\s+Cluster: inbound\|18080\|\|$",
                         out["listeners"], re.M), out["listeners"]
    # the inbound cluster: HTTP/2 to the app, bound to 127.0.0.6
    (cluster,) = json.loads(out["cluster-json"])
    assert cluster["typedExtensionProtocolOptions"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicitHttpConfig"] == {
        "http2ProtocolOptions": {}}
    assert cluster["upstreamBindConfig"]["sourceAddress"]["address"] == "127.0.0.6"
    # TPROXY: a new pod, and the app sees the client pod's own address
    assert r.tproxy_pod != r.server_pod
    tproxy_lines = out["tproxy-log"].splitlines()
    assert any(re.fullmatch(rf"Method=/remora\.demo\.Simple/Sauth, "
                            rf"Peer=ipv4:{re.escape(CLIENT_IP)}:\d+", x)
               for x in tproxy_lines), tproxy_lines
    # original_src: the sidecar connects to the app as the client
    assert re.search(access_line(re.escape(CLIENT_IP), sni), out["tproxy-access-log"], re.M), \
        out["tproxy-access-log"]
    assert "status=OK code=0" in out["tproxy-client-log"]


def test_grpc_demo_on_remora_proxy_refuses_at_once() -> None:
    with TempLab() as lab:
        proc = subprocess.run([sys.executable, "-m", "remora", "demo", "--grpc",
                               "--sidecar", "remora", "--state-dir", str(lab.state_dir),
                               "--prefix", lab.prefix], capture_output=True, text=True,
                              timeout=60)
        lab.close()
        left = lab.leftovers()
    assert proc.returncode == 1
    assert proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line == ("remora: error: remora demo --grpc: remora proxy does not implement "
                    "HTTP/2 yet, and the gRPC story needs it on both sidecars; nothing was "
                    "started (fix: `sudo remora demo --grpc --sidecar envoy` (a real Envoy "
                    "1.40 as every sidecar))")
    assert left == []


def test_remora_lab_refuses_a_grpc_service_at_apply() -> None:
    """A running remora-proxy lab refuses the gRPC Service before anything is applied
    (every sidecar would get an HTTP/2 cluster it refuses), with the fix."""
    root = package_files.files("remora.lab") / "grpc"
    with TempLab() as lab, package_files.as_file(root / "grpc-server.yaml") as server:
        assert lab.remora(*lab.up_args()).returncode == 0
        ns = lab.remora("create", "ns", "demo-to")
        assert ns.returncode == 0, ns.stderr
        refused = lab.remora("apply", "-f", str(server))
        svcs = lab.remora("get", "svc", "-n", "demo-to")
        deps = lab.remora("get", "deploy", "-n", "demo-to")
        lab.close()
        left = lab.leftovers()
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("remora: error: Service/demo-to/simple-grpc-server-svc port 18080 "
                           "(grpc) is GRPC: every sidecar would speak HTTP/2 to it, and remora "
                           "proxy does not implement HTTP/2 yet; nothing was applied (fix: "
                           "run the lab with a real Envoy as the sidecar"), line
    assert "simple-grpc-server" not in svcs.stdout + deps.stdout
    assert left == []
