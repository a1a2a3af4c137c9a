"""HTTP/2 in a remora-proxy lab (issue 11): an HTTP/2 Service is refused at apply with the
fix, and a pod whose sidecar config needs HTTP/2 is held with that reason; an Envoy lab
takes both."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources as package_files
from pathlib import Path
from typing import Any

import pytest

from remora.errors import RemoraError
from remora.lab import http2
from remora.lab import settings as lab_settings
from remora.lab.manifests import from_text, namespace, seed_text
from remora.lab.settings import LabSettings
from remora.lab.setup import MeshSetup
from remora.node.hooks import ClusterSnapshot, PodContext
from remora.resources.loader import parse_object
from remora.resources.naming import pod_from_deployment
from remora.resources.objects import Deployment

NS = namespace("demo-to", {"istio-injection": "enabled"})


def grpc_objects(name: str = "grpc-server.yaml") -> list[dict[str, Any]]:
    text = (package_files.files("remora.lab") / "grpc" / name).read_text()
    return from_text(text, name).objects


def test_http2_ports_of_the_grpc_manifests_only() -> None:
    assert http2.http2_ports(grpc_objects()) == [
        "Service/demo-to/simple-grpc-server-svc port 18080 (grpc) is GRPC"]
    assert http2.http2_ports(grpc_objects("grpc-client.yaml")) == []
    seed = from_text(seed_text("server.yaml"), "server.yaml").objects
    assert http2.http2_ports(seed) == []
    svc = seed[1]
    svc["spec"]["ports"][0]["appProtocol"] = "kubernetes.io/h2c"
    assert http2.http2_ports([svc]) == [
        "Service/demo-to/simple-server-svc port 18080 (kubernetes.io/h2c) is HTTP2"]


def test_remora_lab_refuses_the_batch_with_the_fix() -> None:
    with pytest.raises(RemoraError) as err:
        http2.refuse_for_remora(grpc_objects(), "remora")
    line = err.value.one_line()
    assert line.startswith("Service/demo-to/simple-grpc-server-svc port 18080 (grpc) is GRPC: "
                           "every sidecar would speak HTTP/2 to it, and remora proxy does not "
                           "implement HTTP/2 yet; nothing was applied (fix: run the lab with a "
                           "real Envoy as the sidecar: `sudo remora down`, then "
                           "`sudo remora up --sidecar envoy`")
    http2.refuse_for_remora(grpc_objects(), "envoy")
    http2.refuse_for_remora(from_text(seed_text("server.yaml"), "s").objects, "remora")


def grpc_pod_context(tmp_path: Path, setup: MeshSetup) -> PodContext:
    dep, svc = grpc_objects()
    typed, _ = parse_object(dep, "dep")
    assert isinstance(typed, Deployment)
    pod = setup.admit(pod_from_deployment(typed).to_dict(), NS)
    svc["spec"]["clusterIP"] = "172.16.0.9"
    live = {**pod, "status": {"podIP": "10.20.0.77", "ready": True}}
    cluster = ClusterSnapshot(namespaces=[NS], services=[svc], pods=[live])
    return PodContext("demo-to", pod["metadata"]["name"], "uid-1", "rl-pod-1", "10.20.0.77",
                      1, "rl-node-1", pod, tmp_path / "pods" / "p1", tmp_path, cluster=cluster)


def test_remora_sidecar_is_not_started_on_an_http2_config(tmp_path: Path) -> None:
    lab_settings.save(tmp_path, LabSettings(sidecar="remora", mtls=False))
    setup = MeshSetup()
    ctx = grpc_pod_context(tmp_path, setup)
    with pytest.raises(RemoraError) as err:
        setup.prepare(ctx)
    assert err.value.one_line().startswith(
        f"pod demo-to/{ctx.name}: its sidecar config needs HTTP/2 (cluster inbound|18080||), "
        "and remora proxy does not implement HTTP/2 yet (fix: run the lab with a real Envoy")


def test_envoy_sidecar_gets_the_http2_config(tmp_path: Path) -> None:
    lab_settings.save(tmp_path, LabSettings(sidecar="envoy", envoy_binary="/opt/envoy",
                                            mtls=False))
    setup = MeshSetup()
    ctx = grpc_pod_context(tmp_path, setup)
    setup.prepare(ctx)
    cds = json.loads((ctx.pod_dir / "envoy" / "cds.json").read_text())
    inbound = next(c for c in cds["resources"] if c["name"] == "inbound|18080||")
    options = inbound["typed_extension_protocol_options"]
    assert options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
        "explicit_http_config"] == {"http2_protocol_options": {}}


def remora(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "remora", *args], capture_output=True,
                          text=True, timeout=60)


def test_cli_refuses_before_anything_starts(tmp_path: Path) -> None:
    """No lab, no root needed: `demo --grpc` on remora proxy and `up -f` of the gRPC
    Service with the remora sidecar stop with one line and the fix; nothing is created."""
    state = tmp_path / "state"
    demo = remora("demo", "--grpc", "--state-dir", str(state))
    assert demo.returncode == 1
    assert demo.stderr.strip().splitlines() == [
        "remora: error: remora demo --grpc: remora proxy does not implement HTTP/2 yet, and "
        "the gRPC story needs it on both sidecars; nothing was started (fix: `sudo remora "
        "demo --grpc --sidecar envoy` (a real Envoy 1.40 as every sidecar))"]
    both = remora("demo", "--grpc", "--authz", "--sidecar", "envoy", "--state-dir", str(state))
    assert both.returncode == 2 and "--authz is not part of the gRPC story" in both.stderr
    with package_files.as_file(package_files.files("remora.lab") / "grpc") as manifests:
        up = remora("up", "-f", str(manifests), "--state-dir", str(state))
    assert up.returncode == 1
    (line,) = up.stderr.strip().splitlines()
    assert "is GRPC: every sidecar would speak HTTP/2 to it" in line
    assert "(fix: run the lab with a real Envoy as the sidecar" in line
    assert not state.exists()


class _NoNamespaces:
    """The daemon's request handler as NodeBackend uses it for admission: no objects."""

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"items": []}


def test_kubernetes_api_admission_refuses_it_too(tmp_path: Path) -> None:
    from remora.kubeapi.backend import NodeBackend

    objects = [namespace("demo-to", {}), *grpc_objects()]
    lab_settings.save(tmp_path, LabSettings(sidecar="remora"))
    backend = NodeBackend(_NoNamespaces(), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(RemoraError, match=r"is GRPC: every sidecar would speak HTTP/2"):
        backend.admit(objects)
    lab_settings.save(tmp_path, LabSettings(sidecar="envoy", envoy_binary="/opt/envoy"))
    admitted, _ = backend.admit(objects)
    assert [o["kind"] for o in admitted] == ["Namespace", "Deployment", "Service"]


def test_demo_grpc_follows_the_running_labs_sidecar(tmp_path: Path) -> None:
    from remora.lab import demo_grpc

    (tmp_path / "remora.db").write_text("")  # a lab is there (its daemon is not asked)
    lab_settings.save(tmp_path, LabSettings(sidecar="remora"))
    with pytest.raises(RemoraError) as err:
        demo_grpc.refuse_remora_sidecar(tmp_path, LabSettings(sidecar="envoy"), frozenset())
    assert err.value.one_line() == (
        "remora demo --grpc: remora proxy (the running lab's sidecar) does not implement "
        "HTTP/2 yet, and the gRPC story needs it on both sidecars; nothing was started "
        "(fix: `sudo remora down`, then `sudo remora demo --grpc --sidecar envoy`)")
    lab_settings.save(tmp_path, LabSettings(sidecar="envoy", envoy_binary="/opt/envoy"))
    demo_grpc.refuse_remora_sidecar(tmp_path, LabSettings(), frozenset())  # Envoy's lab: fine
    with pytest.raises(RemoraError) as err:  # remora asked for explicitly on Envoy's lab
        demo_grpc.refuse_remora_sidecar(tmp_path, LabSettings(), frozenset({"sidecar"}))
    assert err.value.one_line().endswith("nothing was started (fix: `sudo remora demo --grpc "
                                         "--sidecar envoy` (a real Envoy 1.40 as every "
                                         "sidecar))")
