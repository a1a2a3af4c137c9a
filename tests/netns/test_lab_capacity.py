"""Many pods at once (issue 9): the lab refuses what its addresses cannot hold, before
anything starts, and the node starts pods in bounded waves so the host stays usable."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator

import pytest

from remora.lab.testing import TempLab
from remora.node.testing import TempNode

pytestmark = pytest.mark.netns

BIG = textwrap.dedent("""\
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: big
    spec:
      replicas: 500
      selector:
        matchLabels: {app: big}
      template:
        metadata:
          labels: {app: big}
        spec:
          containers:
          - name: main
            image: local/sleep
            command: [sleep, "600"]
    """)


@pytest.fixture
def lab() -> Iterator[TempLab]:
    with TempLab() as lab:
        yield lab
        lab.close()
        assert lab.leftovers() == []


def test_500_replicas_are_refused_at_admission_with_the_limit_and_the_fix(
        lab: TempLab) -> None:
    proc = lab.remora(*lab.up_args(), "-f", "-", stdin=BIG)
    assert proc.returncode == 1
    assert ("the lab has room for 253 pods (1 node(s) x 253 addresses of its /24) and this "
            "would make 500 (deployment/big replicas: 500); nothing was applied") in proc.stderr
    assert "`remora up --nodes 2 --state-dir " in proc.stderr
    assert not (lab.state_dir / "node.sock").exists()  # refused before the lab started
    assert lab.remora(*lab.up_args()).returncode == 0
    proc = lab.remora("apply", "-f", "-", stdin=BIG)
    assert proc.returncode == 1 and "would make 500" in proc.stderr
    assert lab.remora("get", "deploy").stdout == ""  # nothing applied


def test_pods_start_in_bounded_waves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMORA_MAX_STARTING", "2")  # the daemon inherits the environment
    slow = {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "slow", "namespace": "default"},
            "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "slow"}},
                     "template": {"metadata": {"labels": {"app": "slow"}}, "spec": {
                         "containers": [{"name": "main", "image": "x", "command": [
                             "sh", "-c", "sleep 1; exec python3 -m http.server 8080 "
                             "--bind 127.0.0.1"],
                             "readinessProbe": {"tcpSocket": {"port": 8080}}}]}}}}
    with TempNode() as node:
        node.client.apply([slow])
        most = 0
        deadline = time.monotonic() + 60
        while True:
            pods = node.client.get("Pod", "default")
            starting = [p for p in pods if p["status"]["podIP"] and not p["status"]["ready"]]
            most = max(most, len(starting))
            assert len(starting) <= 2, [p["metadata"]["name"] for p in starting]
            waiting = [p["remora"]["status"] for p in pods if not p["status"]["podIP"]]
            assert set(waiting) <= {"Pending"}, waiting  # not started yet, as kubectl says
            if len(pods) == 6 and all(p["status"]["ready"] for p in pods):
                break
            assert time.monotonic() < deadline, "the pods did not all get Ready"
            time.sleep(0.1)
        assert most == 2  # waves of two, not one at a time
    assert not node.leftovers()
