"""Auto mTLS, PeerAuthentication and AuthorizationPolicy in the generated config: the
seed's listener table, the client's TLS cluster, validated by Envoy and loaded by remora."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane.ca import CertificateAuthority
from remora.controlplane.files import write_config
from remora.controlplane.generate import generate, static_bootstrap
from remora.controlplane.model import Snapshot
from remora.proxy.config.bootstrap import parse_bootstrap
from remora.proxy.server.runtime import Server
from remora.resources.loader import load_manifests
from remora.resources.security import AuthorizationPolicy, PeerAuthentication
from tests import proxyharness as ph
from tests.unit.controlplane.seed import CLIENT_IP, SERVER_IP, seed

OUTBOUND = "outbound|18080||simple-server-svc.demo-to.svc.cluster.local"
SNI = "outbound_.18080_._.simple-server-svc.demo-to.svc.cluster.local"
POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: demo-to}
spec:
  rules: [{from: [{source: {ipBlocks: ["10.20.0.78"]}}]}]
"""


def with_policies(snap: Snapshot, text: str) -> Snapshot:
    objs = load_manifests(text).objects
    return replace(snap, peer_authentications=tuple(
        o for o in objs if isinstance(o, PeerAuthentication)),
        authorization_policies=tuple(o for o in objs if isinstance(o, AuthorizationPolicy)))


def mode_policy(mode: str) -> str:
    return (f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: "
            f"{{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: {mode}}}}}\n")


def chains_of(cfg: Any, port: int) -> list[tuple[str, tuple[str, ...], bool]]:
    vi = next(x for x in cfg.listeners if x["name"] == "virtualInbound")
    out = []
    for c in vi["filter_chains"]:
        m = c.get("filter_chain_match", {})
        if m.get("destination_port") == port:
            out.append((m.get("transport_protocol", ""), tuple(m.get("application_protocols", ())),
                        "transport_socket" in c))
    return out


def test_permissive_server_has_the_seed_listener_table() -> None:
    snap, server, _ = seed()
    cfg = generate(snap, server, SERVER_IP, "/cfg", certs_dir="/certs")
    mtls_http = ("istio-http/1.0", "istio-http/1.1", "istio-h2")
    # seed: tls+istio-http | raw+HTTP | tls+TCP TLS | raw | tls  (the seed's port sniffs)
    assert chains_of(cfg, 18080) == [
        ("tls", mtls_http, True), ("raw_buffer", ("http/1.0", "http/1.1", "h2c"), False),
        ("tls", ("istio-peer-exchange", "istio"), True), ("raw_buffer", (), False),
        ("tls", (), False)]
    vi = next(x for x in cfg.listeners if x["name"] == "virtualInbound")
    names = [f["name"] for f in vi["listener_filters"]]
    assert names == ["envoy.filters.listener.original_dst", "envoy.filters.listener.tls_inspector",
                     "envoy.filters.listener.http_inspector"]
    ts = vi["filter_chains"][1]["transport_socket"]["typed_config"]
    assert ts["require_client_certificate"] is True
    # Istio's BuildInboundTLS (pilot/pkg/security/authn/utils.go): TLS 1.2 to 1.3 and
    # SupportedCiphers, on every inbound chain that terminates mTLS
    istio_params = {"tls_minimum_protocol_version": "TLSv1_2",
                    "tls_maximum_protocol_version": "TLSv1_3",
                    "cipher_suites": [
                        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
                        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
                        "AES256-GCM-SHA384", "AES128-GCM-SHA256"]}
    terminating = [fc["transport_socket"]["typed_config"] for fc in vi["filter_chains"]
                   if fc.get("transport_socket", {}).get("name") == "envoy.transport_sockets.tls"
                   and "require_client_certificate" in fc["transport_socket"]["typed_config"]]
    assert len(terminating) >= 2
    assert all(t["common_tls_context"]["tls_params"] == istio_params for t in terminating)
    assert cfg.files["sds/default.json"]["resources"][0]["tls_certificate"][
        "certificate_chain"]["filename"] == "/certs/cert-chain.pem"


@pytest.mark.parametrize("mode, expect", [
    ("STRICT", [("tls", True), ("tls", True)]),
    ("DISABLE", [("raw_buffer", False), ("raw_buffer", False)]),
])
def test_strict_and_disable(mode: str, expect: list[tuple[str, bool]]) -> None:
    snap, server, _ = seed()
    snap = with_policies(snap, mode_policy(mode))
    cfg = generate(snap, server, SERVER_IP, "/cfg", certs_dir="/certs")
    assert [(t, ts) for t, _, ts in chains_of(cfg, 18080)] == expect


def test_client_cluster_uses_mtls_to_a_meshed_server_only() -> None:
    snap, _server, client = seed()
    cfg = generate(snap, client, CLIENT_IP, "/cfg", certs_dir="/certs")
    cluster = next(c for c in cfg.clusters if c["name"] == OUTBOUND)
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == SNI
    common = tls["common_tls_context"]
    # Istio's defaultUpstreamCommonTLSContext: the versions, Envoy's client cipher list
    assert common["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_2",
                                    "tls_maximum_protocol_version": "TLSv1_3"}
    # the seed's port sniffs: the HTTP chain's ALPN, as Istio's istio.alpn filter sets it
    # for HTTP, without a plain codec name (its cluster follows the downstream's protocol)
    assert common["alpn_protocols"] == ["istio-http/1.1", "istio"]
    assert common["combined_validation_context"]["default_validation_context"] == {
        "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {
            "exact": "spiffe://cluster.local/ns/demo-to/sa/default"}}]}
    # destination DISABLE -> plain text (auto mTLS follows the server's policy)
    disabled = with_policies(snap, mode_policy("DISABLE"))
    cfg = generate(disabled, client, CLIENT_IP, "/cfg", certs_dir="/certs")
    assert "transport_socket" not in next(c for c in cfg.clusters if c["name"] == OUTBOUND)
    # no certs_dir: the plaintext mesh of before
    cfg = generate(snap, client, CLIENT_IP, "/cfg")
    assert "transport_socket" not in next(c for c in cfg.clusters if c["name"] == OUTBOUND)


def test_rbac_filters_go_before_tcp_proxy_and_router() -> None:
    snap, server, _ = seed()
    snap = with_policies(snap, POLICIES)
    cfg = generate(snap, server, SERVER_IP, "/cfg", certs_dir="/certs")
    vi = next(x for x in cfg.listeners if x["name"] == "virtualInbound")
    for chain in vi["filter_chains"]:
        if chain["name"] == "virtualInbound-blackhole":
            continue
        first = chain["filters"][0]
        if first["name"] == "envoy.filters.network.http_connection_manager":
            assert first["typed_config"]["http_filters"][0]["name"] == "envoy.filters.http.rbac"
        else:
            assert first["name"] == "envoy.filters.network.rbac"


def _write(tmp_path: Path, snap: Snapshot, pod: Any, ip: str) -> tuple[Path, Path]:
    d = tmp_path / pod.metadata.name
    certs = tmp_path / f"{pod.metadata.name}-certs"
    CertificateAuthority(tmp_path / "ca").ensure_workload(certs, pod.metadata.namespace)
    cfg = generate(snap, pod, ip, str(d), certs_dir=str(certs))
    write_config(cfg)
    static = tmp_path / f"{pod.metadata.name}-static.json"
    static.write_text(json.dumps(static_bootstrap(cfg)))
    return d / "bootstrap.json", static


@pytest.mark.parametrize("mode", ["PERMISSIVE", "STRICT"])
def test_remora_proxy_loads_mtls_config(tmp_path: Path, mode: str) -> None:
    snap, server, client = seed()
    snap = with_policies(snap, mode_policy(mode) + "---\n" + POLICIES)
    for pod, ip in ((server, SERVER_IP), (client, CLIENT_IP)):
        for path in _write(tmp_path, snap, pod, ip):
            proxy = Server(parse_bootstrap(json.loads(path.read_text()), str(path)))
            proxy.load()
            vi = proxy.listeners["virtualInbound"].config
            assert any(c.transport is not None for c in vi.filter_chains)
            if pod is client:
                cluster = proxy.cluster_manager.get(OUTBOUND)
                assert cluster is not None and cluster.config.transport is not None
                assert cluster.config.transport.sni == SNI


@pytest.mark.envoy
@pytest.mark.parametrize("mode", ["PERMISSIVE", "STRICT", "DISABLE"])
def test_real_envoy_validates_mtls_config(tmp_path: Path, mode: str) -> None:
    snap, server, client = seed()
    snap = with_policies(snap, mode_policy(mode) + "---\n" + POLICIES)
    for pod, ip in ((server, SERVER_IP), (client, CLIENT_IP)):
        for path in _write(tmp_path, snap, pod, ip):
            ok, said = ph.envoy_validate(path)
            assert ok, said


def test_istioctl_listener_table_matches_the_seed(data_dir: Path) -> None:
    """The MATCH column of `proxy-config listener` for 15006 is the seed's, line for line
    (seed lines 464-473; the seed's Istio names the passthrough cluster ...Ipv4)."""
    from remora.controlplane.generate import LISTENER_TYPE
    from remora.diagnose.proxy_config.dump import parse_config_dump
    from remora.diagnose.proxy_config.render import render

    snap, server, _ = seed()
    cfg = generate(snap, server, SERVER_IP, "/cfg", certs_dir="/certs")
    dump = {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                         "dynamic_listeners": [{"name": x["name"], "active_state": {"listener": {
                             "@type": LISTENER_TYPE, **x}}} for x in cfg.listeners]}]}
    table = render(parse_config_dump(json.dumps(dump).encode()), "listener", fmt="table")
    match = re.compile(r"(Trans: .*?Addr: \S+)")
    ours = [m.group(1) for line in table.splitlines() if " 15006 " in line
            if (m := match.search(line))]
    seed_text = (data_dir / "seed" / "000_1398f3c2bea01311.txt").read_text().splitlines()
    theirs = [m.group(1) for line in seed_text[463:473] if (m := match.search(line))]
    assert len(theirs) == 10
    assert ours == theirs
