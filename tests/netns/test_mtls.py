"""Mutual TLS between remora sidecars, PeerAuthentication, and RBAC by source IP.

The seed's path (client pod -> ClusterIP -> server pod) with the control plane's mTLS
config: the server sidecar's access log carries the SNI
``outbound_.18080_._.simple-server-svc.demo-to.svc.cluster.local`` and the request goes
through the HCM of the istio-http ALPN chain; a client without a sidecar is accepted in
PERMISSIVE and refused in STRICT unless it presents a mesh certificate; an ``ipBlocks``
rule is enforced by the server sidecar in both interception modes, while the app sees the
client's address only in TPROXY; a wrong identity or an expired certificate is refused
with the reason in UPSTREAM_TRANSPORT_FAILURE_REASON.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from tests import proxyharness as ph
from tests.lab import CLIENT_IP, SERVER_IP, Lab
from tests.netns.mtls_mesh import OUTBOUND, SNI, URL, get_from, mesh, peer_authentication

pytestmark = pytest.mark.netns

ONLY_CLIENT = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: demo-to}
spec:
  rules: [{from: [{source: {ipBlocks: ["10.20.0.78"]}}]}]
"""
OTHER_IP = "10.20.0.79"


def _skip_without_proxy() -> None:
    problem = ph.remora_proxy_problem()
    if problem:
        pytest.skip(problem)


def test_remora_to_remora_mtls_sni_in_server_access_log(tmp_path: Path) -> None:
    _skip_without_proxy()
    with Lab("mt") as lab:
        m = mesh(lab, tmp_path, "remora", "remora")
        out = ph.run_client(lab, m.client, URL, 3)
        assert len(out) == 3 and all('"code": 0' in line for line in out), out
        server_lines = [ph.parse_access_log(x) for x in m.server_sidecar.wait_access_log(3)]
        assert [x["requested_server_name"] for x in server_lines] == [SNI] * 3
        assert all(x["upstream_cluster"] == "inbound|18080||" for x in server_lines)
        assert all(x["downstream_remote_address"].startswith(CLIENT_IP + ":")
                   for x in server_lines)
        client_lines = [ph.parse_access_log(x) for x in m.client_sidecar.wait_access_log(3)]
        assert [x["upstream_cluster"] for x in client_lines] == [OUTBOUND] * 3
        stats = m.server_sidecar.stats()
        assert stats["listener.0.0.0.0_15006.ssl.handshake"] >= 1
        # the HTTP chain served it: TLS + HCM exists only on the istio-http ALPN chain
        assert stats["http.inbound_0.0.0.0_18080.downstream_rq_total"] == 3


KINDS = ["remora", pytest.param("envoy", marks=pytest.mark.envoy)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["PERMISSIVE", "STRICT"])
def test_client_without_sidecar(tmp_path: Path, mode: str, kind: str) -> None:
    if kind == "remora":
        _skip_without_proxy()
    with Lab("mt") as lab:
        m = mesh(lab, tmp_path, kind, None, policies=peer_authentication(mode))
        plain = get_from(m.client, None, SERVER_IP, 18080, "/common/sauth")
        certs = m.client_certs
        curl = ["curl", "-sk", "--http1.1", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"]
        url = f"https://{SERVER_IP}:18080/common/sauth"
        no_cert = lab.run(m.client, [*curl, url], check=False)
        with_cert = lab.run(m.client, [*curl, "--cert", str(certs / "cert-chain.pem"),
                                       "--key", str(certs / "key.pem"), url], check=False)
        if mode == "PERMISSIVE":
            assert plain[0] == 200
        else:
            assert plain[0] == 0  # no raw_buffer chain: the sidecar closes the connection
            assert no_cert.returncode != 0  # the handshake needs a client certificate
            # a mesh certificate is accepted by the tls chain, which terminates mTLS
            assert with_cert.stdout == b"200", with_cert.stderr


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["redirect", "tproxy"])
def test_ip_blocks_enforced_by_sidecar_app_sees_client_only_in_tproxy(
        tmp_path: Path, mode: str, kind: str) -> None:
    if kind == "remora":
        _skip_without_proxy()
    with Lab("mt") as lab:
        m = mesh(lab, tmp_path, kind, None, mode=mode, policies=ONLY_CLIENT)
        lab.run(m.client, ["ip", "addr", "add", f"{OTHER_IP}/24", "dev", "eth0"])
        allowed = get_from(m.client, CLIENT_IP, SERVER_IP, 18080, "/common/sauth")
        denied = get_from(m.client, OTHER_IP, SERVER_IP, 18080, "/common/sauth")
        assert allowed[0] == 200
        assert denied == (403, b"RBAC: access denied")
        lines = [ph.parse_access_log(x) for x in m.server_sidecar.wait_access_log(2)]
        assert lines[-1]["response_code_details"] == "rbac_access_denied_matched_policy[none]"
        # what an allowlist inside the app could check: the address it sees
        seen = [line.rsplit("RemoteAddr=", 1)[1].rsplit(":", 1)[0]
                for line in m.app.wait_lines(1) if "RemoteAddr=" in line]
        assert seen == (["127.0.0.6"] if mode == "redirect" else [CLIENT_IP])


def test_wrong_identity_and_expired_certificate_refused(tmp_path: Path) -> None:
    _skip_without_proxy()
    with Lab("mt") as lab:
        m = mesh(lab, tmp_path, "remora", "remora")
        ca = m.ca
        ca.write_workload(m.server_certs, ca.issue(
            "demo-to", identity="spiffe://cluster.local/ns/demo-to/sa/impostor"))
        time.sleep(0.1)
        out = ph.run_client(lab, m.client, URL, 1)
        line = ph.parse_access_log(m.client_sidecar.wait_access_log(1)[-1])
        # UF on the first try; remora's retries then find no other host (UH, URX)
        assert line["response_code"] == "503" and "URX" in line["response_flags"], (out, line)
        assert "CERTIFICATE_VERIFY_FAILED" in line["upstream_transport_failure_reason"], line
        assert "SAN_matcher" in line["upstream_transport_failure_reason"], line
        old = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
        ca.write_workload(m.server_certs, ca.issue("demo-to", now=old))
        time.sleep(0.1)
        ph.run_client(lab, m.client, URL, 1)
        lines = m.client_sidecar.wait_access_log(2)
        line = ph.parse_access_log(lines[-1])
        assert "certificate_has_expired" in line["upstream_transport_failure_reason"] or \
            "expired" in line["upstream_transport_failure_reason"], line
        # a fresh certificate: the next connection works again, no restart
        ca.write_workload(m.server_certs, ca.issue("demo-to"))
        time.sleep(0.1)
        out = ph.run_client(lab, m.client, URL, 1)
        assert '"code": 0' in out[0], out
