"""MeshSetup, the node's pod-setup hook, without a node: admission, the files it writes,
and the processes it asks the node to run for each container."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from remora.lab import settings as lab_settings
from remora.lab import sidecar
from remora.lab.manifests import from_text, namespace, seed_text
from remora.lab.settings import LabSettings
from remora.lab.setup import MeshSetup, is_meshed
from remora.node.hooks import ClusterSnapshot, PodContext
from remora.resources.loader import parse_object
from remora.resources.naming import pod_from_deployment
from remora.resources.objects import Deployment

NS = namespace("demo-to", {"istio-injection": "enabled"})


def server_pod(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    dep = from_text(seed_text("server.yaml"), "server.yaml").objects[0]
    if annotations:
        dep["spec"]["template"]["metadata"]["annotations"] = annotations
    typed, _ = parse_object(dep, "server")
    assert isinstance(typed, Deployment)
    return pod_from_deployment(typed).to_dict()


def context(tmp_path: Path, pod: dict[str, Any], ip: str = "10.20.0.77") -> PodContext:
    return PodContext("demo-to", pod["metadata"]["name"], "uid-1", "rl-pod-1", ip, 1,
                      "rl-node-1", pod, tmp_path / "pods" / "p1", tmp_path)


def admitted(setup: MeshSetup, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return setup.admit(server_pod(annotations), NS)


def test_admission_injects_in_an_enabled_namespace() -> None:
    setup = MeshSetup()
    pod = admitted(setup)
    assert is_meshed(pod)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["istio-init"]
    assert not is_meshed(setup.admit(server_pod(), None))


def test_processes_for_istio_init_the_sidecar_and_the_app(tmp_path: Path) -> None:
    setup = MeshSetup()
    pod = admitted(setup)
    ctx = context(tmp_path, pod)
    setup.prepare(ctx)
    init = setup.process(ctx, pod["spec"]["initContainers"][0], True)
    assert init.argv[:3] == [sys.executable, "-m", "remora.lab.istio_init"]
    assert init.argv[3:9] == ["istio-iptables", "-p", "15001", "-z", "15006", "-u"]
    assert (init.uid, init.gid) == (0, 0)
    proxy = setup.process(ctx, pod["spec"]["containers"][1], False)
    boot = tmp_path / "pods" / "p1" / "envoy" / "bootstrap.json"
    # Istio's drain flags (pilot-agent: drainDuration 45 s, immediate)
    assert proxy.argv == [sys.executable, "-m", "remora", "proxy", "-c", str(boot), "-l",
                          "warning", "--drain-time-s", "45", "--drain-strategy", "immediate"]
    assert proxy.gid == 1337 and proxy.ready_port == 15021
    # Istio's runAsUser 1337 (REDIRECT's `--uid-owner 1337 -j ISTIO_IN_REDIRECT` for a
    # call to its own pod IP needs the uid); a private state dir (pytest's tmp_path is
    # 0700) is read with CAP_DAC_READ_SEARCH instead of falling back to uid 0
    assert (proxy.uid, proxy.caps) == (1337, ("dac_read_search",))
    app = setup.process(ctx, pod["spec"]["containers"][0], False)
    assert app.argv == [sys.executable, "-m", "remora.apps.simple_server"]
    assert app.uid is None and app.ready_port is None


def test_tproxy_sidecar_is_root_with_net_admin(tmp_path: Path) -> None:
    setup = MeshSetup()
    pod = admitted(setup, {"sidecar.istio.io/interceptionMode": "TPROXY"})
    ctx = context(tmp_path, pod)
    setup.prepare(ctx)
    proxy = setup.process(ctx, pod["spec"]["containers"][1], False)
    assert (proxy.uid, proxy.gid, proxy.caps) == (0, 1337, ("net_admin",))
    lds = json.loads((ctx.pod_dir / "envoy" / "lds.json").read_text())
    inbound = next(r for r in lds["resources"] if r["name"] == "virtualInbound")
    assert inbound.get("transparent") is True


def test_envoy_sidecar_runs_the_same_files(tmp_path: Path) -> None:
    lab_settings.save(tmp_path, LabSettings(sidecar="envoy", envoy_binary="/opt/envoy"))
    setup = MeshSetup()
    pod = admitted(setup)
    ctx = context(tmp_path, pod)
    setup.prepare(ctx)
    proxy = setup.process(ctx, pod["spec"]["containers"][1], False)
    assert proxy.argv == ["/opt/envoy", "-c", str(ctx.pod_dir / "envoy" / "bootstrap.json"),
                          "--disable-hot-restart", "--concurrency", "1", "-l", "warning",
                          "--drain-time-s", "45", "--drain-strategy", "immediate",
                          "--file-flush-interval-msec", "1000"]


def test_cluster_changes_rewrite_the_endpoints(tmp_path: Path) -> None:
    setup = MeshSetup()
    pod = admitted(setup)
    ctx = context(tmp_path, pod)
    setup.prepare(ctx)
    svc = from_text(seed_text("server.yaml"), "s").objects[1]
    svc["spec"]["clusterIP"] = "172.16.234.188"
    live = {**pod, "status": {"podIP": "10.20.0.77", "ready": True}}
    setup.cluster_changed(ClusterSnapshot(namespaces=[NS], services=[svc], pods=[live]), [ctx])
    eds = list((ctx.pod_dir / "envoy" / "eds").glob("*.json"))
    assert len(eds) == 1
    assert "10.20.0.77" in eds[0].read_text()
    lds = (ctx.pod_dir / "envoy" / "lds.json").read_text()
    assert "inbound|18080||" in lds


def test_reachability_check(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert not sidecar.can_run_as(1337, 1337, "/usr/bin/env", private)
    assert sidecar._reachable(Path("/usr/bin/env"), 1337, 1337, 5)
    # CAP_DAC_READ_SEARCH passes directory searches and reads, not a missing execute bit
    secret = private / "prog"
    secret.write_text("")
    secret.chmod(0o744)
    assert not sidecar._reachable(secret, 1337, 1337, 5)
    assert sidecar._reachable(secret, 1337, 1337, 4, read_search=True)
    assert not sidecar._reachable(secret, 1337, 1337, 5, read_search=True)
    assert sidecar.identity(1337, 1337, (), "/usr/bin/env", private) == (
        1337, 1337, ("dac_read_search",))
    # TPROXY's uid 0 keeps its capabilities as they are
    assert sidecar.identity(0, 1337, ("net_admin",), "/usr/bin/env", private) == (
        0, 1337, ("net_admin",))


def test_mtls_certificates_come_from_the_lab_ca(tmp_path: Path) -> None:
    setup = MeshSetup()
    pod = admitted(setup)
    ctx = context(tmp_path, pod)
    setup.prepare(ctx)
    certs = ctx.pod_dir / "certs"
    assert sorted(p.name for p in certs.iterdir()) == ["cert-chain.pem", "key.pem",
                                                       "root-cert.pem"]
    assert (tmp_path / "ca" / "root-cert.pem").read_bytes() == \
        (certs / "root-cert.pem").read_bytes()
    assert '"transport_protocol": "tls"' in (ctx.pod_dir / "envoy" / "lds.json").read_text()
    assert sorted(lab_settings.remove(tmp_path)) == [str(tmp_path / "ca")]


def test_settings_round_trip_and_no_mtls(tmp_path: Path) -> None:
    lab_settings.save(tmp_path, LabSettings(sidecar="remora", mtls=False))
    assert lab_settings.load(tmp_path) == LabSettings(mtls=False)
    setup = MeshSetup()
    pod = admitted(setup)
    ctx = context(tmp_path, pod)
    setup.prepare(ctx)
    assert not (ctx.pod_dir / "certs").exists()
    assert '"transport_protocol": "tls"' not in (ctx.pod_dir / "envoy" / "lds.json").read_text()


def test_differences_only_for_what_was_asked() -> None:
    from remora.lab.session import differences

    running = LabSettings(sidecar="envoy", mtls=True)
    assert differences(LabSettings(), running, set()) == []
    assert differences(LabSettings(mtls=False), running, {"sidecar", "mtls"}) == [
        "sidecar envoy (not remora)", "mTLS on"]
