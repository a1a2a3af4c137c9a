"""managedFields as the apiserver keeps them, judged by kubectl 1.32 on a real lab:
stored with the objects (kube-apiserver: in the object in etcd), so they outlive a
restart of the node daemon (SIGTERM, then `remora up` adopts the lab) and the next
`kubectl apply --server-side` still removes what it no longer applies and refuses
another manager's change; a pod's label update is an Update by `kubectl-label`.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remora.lab.testing import TempLab
from tests.netns.test_kubeapi_kubectl import KUBECTL, Kube, eventually

pytestmark = pytest.mark.netns

NS = "mf"
MANIFEST = f"""\
apiVersion: v1
kind: Namespace
metadata:
  name: {NS}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {NS}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
      annotations: {{sidecar.istio.io/inject: "false"}}
    spec:
      containers:
      - name: main
        image: local/sleep
        command: [sleep, "600"]
        env: [{{name: ONE, value: "1"}}, {{name: TWO, value: "2"}}]
"""


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    if KUBECTL is None:
        pytest.skip("needs kubectl on PATH")
    with TempLab() as lab:
        up = lab.remora(*lab.up_args())
        assert up.returncode == 0, up.stderr
        path = lab.remora("kubeconfig")
        assert path.returncode == 0, path.stderr
        yield Kube(lab, Path(path.stdout.strip()), tmp_path_factory.mktemp("kube-cache"))
        lab.close()
        assert lab.leftovers() == []


def restart_daemon(kube: Kube) -> None:
    """What a user does to restart the lab's daemon and keep the lab: stop it (SIGTERM
    leaves the pods running, as a kubelet restart does) and `remora up`, which adopts
    the lab. (`remora down` removes the lab and its store: nothing survives it.)"""
    lab = kube.lab
    daemon = int((lab.state_dir / "daemon.pid").read_text())
    os.kill(daemon, signal.SIGTERM)
    eventually(lambda: not Path(f"/proc/{daemon}").exists()
               or Path(f"/proc/{daemon}/stat").read_text().split()[2] == "Z", 20)
    up = lab.remora(*lab.up_args())
    assert up.returncode == 0 and "adopting" in up.stdout, up.stderr
    assert int((lab.state_dir / "daemon.pid").read_text()) != daemon


def managed(kube: Kube, *what: str) -> dict[str, Any]:
    got: dict[str, Any] = json.loads(kube.kubectl("get", *what, "-n", NS, "-o", "json",
                                                  "--show-managed-fields").stdout)
    return got


def test_server_side_apply_ownership_outlives_a_daemon_restart(kube: Kube,
                                                                tmp_path: Path) -> None:
    manifest = tmp_path / "web.yaml"
    manifest.write_text(MANIFEST)
    kube.kubectl("apply", "--server-side", "-f", str(manifest))
    before = managed(kube, "deploy", "web")["metadata"]["managedFields"]
    assert [(e["manager"], e["operation"]) for e in before] == [("kubectl", "Apply")]

    restart_daemon(kube)
    assert managed(kube, "deploy", "web")["metadata"]["managedFields"] == before
    # another manager's change of kubectl's replicas: still the apiserver's conflict
    manifest.write_text(MANIFEST.replace("replicas: 1", "replicas: 2"))
    conflict = kube.kubectl("apply", "--server-side", "--field-manager=ops", "-f",
                            str(manifest), check=False)
    assert conflict.returncode == 1
    assert conflict.stderr.startswith('error: Apply failed with 1 conflict: conflict with '
                                      '"kubectl": .spec.replicas\n'), conflict.stderr
    # ONE no longer applied: removed (kubectl owned it alone)
    manifest.write_text(MANIFEST.replace('{name: ONE, value: "1"}, ', ""))
    kube.kubectl("apply", "--server-side", "-f", str(manifest))
    env = managed(kube, "deploy", "web")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "TWO", "value": "2"}]


def test_a_pods_label_is_recorded_and_kept(kube: Kube) -> None:
    """`kubectl label pod X a=b`: an Update by kubectl-label owning f:metadata.f:labels.f:a
    (the apiserver's field manager records every write), kept across a daemon restart."""
    kube.kubectl("run", "r1", "-n", NS, "--image=local/sleep",
                 "--annotations=sidecar.istio.io/inject=false", "--command", "--", "sleep",
                 "600")
    try:
        kube.kubectl("wait", "-n", NS, "pod/r1", "--for=condition=Ready", "--timeout=60s",
                     timeout=90)
        assert kube.kubectl("label", "pod", "r1", "-n", NS, "a=b").stdout == \
            "pod/r1 labeled\n"

        def held() -> dict[str, Any]:
            return {e["manager"]: e for e in
                    managed(kube, "pod", "r1")["metadata"]["managedFields"]}

        label = held()["kubectl-label"]
        assert (label["operation"], label["apiVersion"], label["fieldsV1"]) == (
            "Update", "v1", {"f:metadata": {"f:labels": {"f:a": {}}}})
        assert held()["kubectl-run"]["fieldsV1"]["f:metadata"]["f:labels"] == {
            ".": {}, "f:run": {}}
        restart_daemon(kube)
        assert held()["kubectl-label"] == label
    finally:
        kube.kubectl("delete", "pod", "r1", "-n", NS, "--wait=false")
