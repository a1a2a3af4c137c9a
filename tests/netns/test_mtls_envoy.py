"""The same mTLS mesh with real Envoy as both sidecars and mixed with remora proxy.

Each side runs the control plane's generated files unchanged. What must agree, whichever
proxy is on which side: the handshake succeeds, the server sees the SNI
``outbound_.18080_._.FQDN`` and serves the request on the HTTP (istio-http ALPN) chain,
the client's principal reaches the server's RBAC (a DENY on it answers 403 ``RBAC: access
denied`` naming the rule), and an ALLOW by ipBlocks lets the real client address in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import proxyharness as ph
from tests.lab import CLIENT_IP, Lab
from tests.netns.mtls_mesh import SNI, URL, mesh

pytestmark = [pytest.mark.netns, pytest.mark.envoy]
IMPOSTOR = "spiffe://cluster.local/ns/demo-to/sa/impostor"
PAIRS = [("envoy", "envoy"), ("remora", "envoy"), ("envoy", "remora"), ("remora", "remora")]
DENY_CLIENT = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: demo-to}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/demo-from/sa/default"]}}]}]
"""
ALLOW_CLIENT_IP = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: client-ip, namespace: demo-to}
spec:
  rules: [{from: [{source: {ipBlocks: ["10.20.0.78/32"]}}]}]
"""


def _ids(pair: tuple[str, str]) -> str:
    return f"server-{pair[0]}-client-{pair[1]}"


@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
def test_handshake_sni_alpn(tmp_path: Path, pair: tuple[str, str]) -> None:
    if "remora" in pair and ph.remora_proxy_problem():
        pytest.skip(str(ph.remora_proxy_problem()))
    with Lab("me") as lab:
        m = mesh(lab, tmp_path, pair[0], pair[1], policies=ALLOW_CLIENT_IP)
        out = ph.run_client(lab, m.client, URL, 2)
        assert all('"code": 0' in line for line in out), (out, m.server_sidecar.stderr_tail())
        lines = [ph.parse_access_log(x) for x in m.server_sidecar.wait_access_log(2)]
        assert [x["requested_server_name"] for x in lines] == [SNI, SNI]
        assert all(x["downstream_remote_address"].startswith(CLIENT_IP + ":") for x in lines)
        stats = m.server_sidecar.stats()
        assert stats["listener.0.0.0.0_15006.ssl.handshake"] >= 1
        assert stats["http.inbound_0.0.0.0_18080.downstream_rq_total"] == 2
        assert stats["http.inbound_0.0.0.0_18080.rbac.allowed"] == 2


@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
def test_rbac_deny_by_principal(tmp_path: Path, pair: tuple[str, str]) -> None:
    if "remora" in pair and ph.remora_proxy_problem():
        pytest.skip(str(ph.remora_proxy_problem()))
    with Lab("me") as lab:
        m = mesh(lab, tmp_path, pair[0], pair[1], policies=DENY_CLIENT)
        out = ph.run_client(lab, m.client, URL, 1)
        assert out == ["RBAC: access denied"] or "403" in " ".join(out), out
        line = ph.parse_access_log(m.server_sidecar.wait_access_log(1)[-1])
        assert line["response_code"] == "403"
        assert line["response_code_details"] == \
            "rbac_access_denied_matched_policy[ns[demo-to]-policy[deny-client]-rule[0]]"
        assert m.server_sidecar.stats()["http.inbound_0.0.0.0_18080.rbac.denied"] == 1


@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
@pytest.mark.parametrize("problem", ["wrong-identity", "expired"])
def test_bad_server_certificate_refused_with_reason(tmp_path: Path, pair: tuple[str, str],
                                                    problem: str) -> None:
    if "remora" in pair and ph.remora_proxy_problem():
        pytest.skip(str(ph.remora_proxy_problem()))
    with Lab("me") as lab:
        m = mesh(lab, tmp_path, pair[0], pair[1], server_expired=problem == "expired",
                 server_identity=IMPOSTOR if problem == "wrong-identity" else None)
        out = ph.run_client(lab, m.client, URL, 1)
        line = ph.parse_access_log(m.client_sidecar.wait_access_log(1)[-1])
        assert line["response_code"] == "503", (out, line)
        # the same reason whichever proxy is the client (Envoy 1.40's text, observed)
        verify = ("TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:"
                  "verify_cert_failed:_")
        detail = ("X509_verify_cert:_certificate_verification_error_at_depth_0:_certificate_"
                  "has_expired" if problem == "expired" else
                  f"SAN_matcher,_certificate_SANs_are_[{IMPOSTOR}]")
        assert line["upstream_transport_failure_reason"] == verify + detail + ":TLS_error_end"
