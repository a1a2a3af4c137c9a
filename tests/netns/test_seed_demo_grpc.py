"""`remora demo --grpc` in an isolated lab, with remora proxy and with a real Envoy as the
sidecars: the seed's story over gRPC (HTTP/2 through both sidecars), every observation
asserted, the same assertions for both."""

from __future__ import annotations

import json
import re

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
@pytest.mark.parametrize("sidecar", ["remora", "envoy"])
def test_grpc_demo(sidecar: str, mtls: bool) -> None:
    """With mTLS (ALPN istio-h2 between the sidecars) and without (h2c prior knowledge)."""
    lines: list[str] = []
    sni = SNI if mtls else "-"
    with TempLab() as lab:
        r = demo_grpc.run(lab.state_dir, LabSettings(sidecar=sidecar, mtls=mtls),
                          prefix=lab.prefix, timeout=40, echo=lines.append)
        lab.close()
        left = lab.leftovers()
    assert left == []
    out = r.outputs
    assert lines[0].endswith("sidecar: " + ("real Envoy" if sidecar == "envoy"
                                            else "remora proxy"))
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
