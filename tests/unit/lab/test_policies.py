"""Security policies through the lab without a node: the node store keeps them and hands
them over in ClusterSnapshot.policies, MeshSetup compiles them into the sidecars' files
(and drops them again), the rotation timer's pass re-issues only certificates past half
their life, and `get` prints them with the CRDs' columns."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from remora.controlplane.ca import CertificateAuthority
from remora.errors import RemoraError
from remora.lab import settings as lab_settings
from remora.lab import tables
from remora.lab.demo import allow_policy
from remora.lab.manifests import from_text, namespace, seed_text
from remora.lab.settings import LabSettings
from remora.lab.setup import MeshSetup
from remora.node import desired, views
from remora.node.config import NodeConfig
from remora.node.hooks import ClusterSnapshot, PodContext
from remora.node.store import Store
from remora.resources.loader import parse_object
from remora.resources.naming import pod_from_deployment
from remora.resources.objects import Deployment

NS = namespace("demo-to", {"istio-injection": "enabled"})
RULE = "ns[demo-to]-policy[allow-simple-client]-rule[0]"


def policy() -> dict[str, Any]:
    return from_text(allow_policy("10.20.0.78"), "policy").objects[0]


def meshed_context(tmp_path: Path, setup: MeshSetup) -> PodContext:
    dep = from_text(seed_text("server.yaml"), "server.yaml").objects[0]
    typed, _ = parse_object(dep, "server")
    assert isinstance(typed, Deployment)
    pod = setup.admit(pod_from_deployment(typed).to_dict(), NS)
    return PodContext("demo-to", pod["metadata"]["name"], "uid-1", "rl-pod-1", "10.20.0.77",
                      1, "rl-node-1", pod, tmp_path / "pods" / "p1", tmp_path)


def test_node_store_keeps_policies_for_the_snapshot(tmp_path: Path) -> None:
    store = Store(tmp_path / "remora.db")
    plan = NodeConfig(state_dir=tmp_path).plan()
    assert desired.apply(store, plan, [policy()]) == [
        "authorizationpolicy/allow-simple-client created"]
    snap = views.snapshot(store, [], [])
    assert [p["metadata"]["name"] for p in snap.policies] == ["allow-simple-client"]
    assert snap.policies[0]["spec"]["rules"][0]["from"][0]["source"]["ipBlocks"] == [
        "10.20.0.78/32"]
    assert desired.delete(store, "AuthorizationPolicy", "demo-to", "allow-simple-client") == [
        "authorizationpolicy/allow-simple-client deleted"]
    assert views.snapshot(store, [], []).policies == []
    # a namespace takes its policies with it
    desired.apply(store, plan, [policy()])
    desired.delete(store, "Namespace", "", "demo-to")
    assert views.snapshot(store, [], []).policies == []


def test_policies_reach_and_leave_the_sidecar_config(tmp_path: Path) -> None:
    setup = MeshSetup()
    ctx = meshed_context(tmp_path, setup)
    setup.prepare(ctx)
    lds = ctx.pod_dir / "envoy" / "lds.json"
    assert RULE not in lds.read_text()
    live = {**ctx.pod, "status": {"podIP": "10.20.0.77", "ready": True}}
    setup.cluster_changed(ClusterSnapshot(namespaces=[NS], pods=[live], policies=[policy()]),
                          [ctx])
    text = lds.read_text()
    assert RULE in text and "10.20.0.78" in text and "envoy.filters.http.rbac" in text
    setup.cluster_changed(ClusterSnapshot(namespaces=[NS], pods=[live]), [ctx])
    assert RULE not in lds.read_text()


def test_prepare_uses_the_policies_of_the_pass(tmp_path: Path) -> None:
    setup = MeshSetup()
    ctx = meshed_context(tmp_path, setup)
    ctx = PodContext(**{**ctx.__dict__, "cluster": ClusterSnapshot(namespaces=[NS],
                                                                   policies=[policy()])})
    setup.prepare(ctx)
    assert RULE in (ctx.pod_dir / "envoy" / "lds.json").read_text()


def serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_rotation_pass_reissues_only_certificates_past_half_life(tmp_path: Path) -> None:
    lab_settings.save(tmp_path, LabSettings(cert_ttl="10m"))
    setup = MeshSetup()
    ctx = meshed_context(tmp_path, setup)
    setup.prepare(ctx)
    chain = ctx.pod_dir / "certs" / "cert-chain.pem"
    fresh = serial(chain)
    cert = x509.load_pem_x509_certificate(chain.read_bytes())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(minutes=11)
    setup.rotate_due()
    assert serial(chain) == fresh  # not due: untouched (no reload in the sidecar)
    # a certificate issued 8 minutes ago (the timer missed nothing else): past half life
    ca = CertificateAuthority(tmp_path / "ca")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=8)
    ca.write_workload(ctx.pod_dir / "certs", ca.issue("demo-to", "default",
                                                      dt.timedelta(minutes=10), old))
    aged = serial(chain)
    setup.rotate_due()
    assert serial(chain) not in (aged, fresh)
    # a pod that is gone is forgotten by the timer
    setup.cleanup(ctx)
    before = chain.stat().st_mtime_ns
    time.sleep(0.01)
    setup.rotate_due()
    assert chain.stat().st_mtime_ns == before


def test_rotation_check_interval_follows_the_ttl(tmp_path: Path) -> None:
    setup = MeshSetup()
    ctx = meshed_context(tmp_path, setup)
    lab_settings.save(tmp_path, LabSettings(cert_ttl="100s"))
    setup.prepare(ctx)
    assert setup._check_every() == 10.0
    lab_settings.save(tmp_path, LabSettings())
    assert setup._check_every() == 60.0


def test_bad_cert_ttl_is_refused_up_front() -> None:
    with pytest.raises(RemoraError, match="bad certificate TTL"):
        LabSettings(cert_ttl="soon").check()


def test_get_tables_for_policies() -> None:
    assert tables.kind_of("ap") == tables.kind_of("authorizationpolicies") == \
        "AuthorizationPolicy"
    assert tables.kind_of("pa") == "PeerAuthentication"
    obj = {**policy(), "metadata": {**policy()["metadata"], "creationTimestamp": 0}}
    text = tables.table("AuthorizationPolicy", [obj], now=125)
    assert text.splitlines()[0].split() == ["NAME", "ACTION", "AGE"]
    assert text.splitlines()[1].split() == ["allow-simple-client", "ALLOW", "2m5s"]
    pa = {"kind": "PeerAuthentication", "metadata": {"name": "default",
                                                     "creationTimestamp": 0},
          "spec": {"mtls": {"mode": "STRICT"}}}
    listed = tables.table("PeerAuthentication", [pa], now=5, kind_prefix=True)
    assert listed.splitlines()[1].split() == [
        "peerauthentication.security.istio.io/default", "STRICT", "5s"]


def test_proxy_config_secret_reads_the_pods_config_dir(tmp_path: Path) -> None:
    from remora.cli.proxy_config import _config_dir

    pod = {"metadata": {"namespace": "demo-to", "name": "s-1", "uid": "u-9"}}
    assert _config_dir(tmp_path, pod) == tmp_path / "pods" / "demo-to_s-1_u-9" / "envoy"


def test_describe_policy_as_kubectl_describes_a_custom_resource() -> None:
    from remora.lab.describe import custom_resource, smart_label

    assert [smart_label(f) for f in ("ipBlocks", "apiVersion", "matchLabels", "a.b")] == [
        "Ip Blocks", "API Version", "Match Labels", "a.b"]
    lines = custom_resource(policy(), 0).splitlines()
    assert lines[:6] == ["Name:         allow-simple-client", "Namespace:    demo-to",
                         "Labels:       <none>", "Annotations:  <none>",
                         "API Version:  security.istio.io/v1",
                         "Kind:         AuthorizationPolicy"]
    assert lines[6:] == ["Spec:", "  Action:  ALLOW", "  Rules:", "    From:",
                         "      Source:", "        Ip Blocks:", "          10.20.0.78/32",
                         "  Selector:", "    Match Labels:", "      Web:  server",
                         "Events:  <none>"]


def test_peer_authentication_strict_reaches_the_sidecar(tmp_path: Path) -> None:
    setup = MeshSetup()
    ctx = meshed_context(tmp_path, setup)
    setup.prepare(ctx)
    lds = ctx.pod_dir / "envoy" / "lds.json"
    assert '"raw_buffer"' in lds.read_text()  # PERMISSIVE by default: plain text too
    strict = from_text("""\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: demo-to
spec:
  mtls:
    mode: STRICT
""", "pa").objects[0]
    live = {**ctx.pod, "status": {"podIP": "10.20.0.77", "ready": True}}
    setup.cluster_changed(ClusterSnapshot(namespaces=[NS], pods=[live], policies=[strict]),
                          [ctx])
    text = lds.read_text()
    assert '"raw_buffer"' not in text and '"tls"' in text
