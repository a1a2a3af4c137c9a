"""The lab survives what users do to it (issue 9): a container killed with kill -9 reads
like Kubernetes (exit 137, lastState with the old container's ID, RESTARTS, describe's
Last State), and a node daemon killed with kill -9 leaves pods running and cluster DNS
answering, every command says so, and `remora up` adopts them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from remora.lab import session
from remora.lab.testing import TempLab

pytestmark = pytest.mark.netns
T = TypeVar("T")

MANIFEST = textwrap.dedent("""\
    apiVersion: v1
    kind: Pod
    metadata:
      name: sleeper
      labels: {app: sleeper}
    spec:
      containers:
      - name: main
        image: local/sleep
        command: [sleep, "600"]
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: sleeper-svc
    spec:
      selector: {app: sleeper}
      ports:
      - port: 80
    """)


@pytest.fixture
def lab() -> Iterator[TempLab]:
    with TempLab() as lab:
        yield lab
        lab.close()
        assert lab.leftovers() == []


def ok(lab: TempLab, *args: str, stdin: str | None = None) -> str:
    proc = lab.remora(*args, stdin=stdin)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def wait_for(check: Callable[[], T | None], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def pod_json(lab: TempLab, name: str = "sleeper") -> dict[str, Any]:
    return dict(json.loads(ok(lab, "get", "po", name, "-o", "json")))


def test_a_killed_container_reads_like_kubernetes(lab: TempLab) -> None:
    ok(lab, *lab.up_args(), "-f", "-", "--wait", "--timeout", "30", stdin=MANIFEST)
    before = pod_json(lab)["status"]["containerStatuses"][0]
    os.kill(before["remora"]["pid"], signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        # restarted, running, and Ready again (the node reports a restarted container
        # Ready once it has stayed up a moment, as it does a new one)
        status = pod_json(lab)["status"]["containerStatuses"][0]
        return status if status["restartCount"] == 1 and "running" in status["state"] \
            and status.get("ready") else None

    after = wait_for(restarted)
    last = after["lastState"]["terminated"]
    assert last["exitCode"] == 137 and last["reason"] == "Error"  # 128 + SIGKILL
    assert last["containerID"] == before["containerID"] != after["containerID"]
    assert last["startedAt"] == before["state"]["running"]["startedAt"]
    table = ok(lab, "get", "po").splitlines()
    assert re.match(r"sleeper\s+1/1\s+Running\s+1 \(\d+s ago\)\s+\d+s$", table[1]), table
    described = ok(lab, "describe", "pod", "sleeper")
    assert re.search(r"    Last State:     Terminated\n      Reason:       Error\n"
                     r"      Exit Code:    137\n      Started:      \w{3}, \d\d \w{3} \d{4} "
                     r"[\d:]{8} \+0000\n      Finished:     ", described), described
    assert ok(lab, "get", "po,svc", "-o", "name") == "pod/sleeper\nservice/sleeper-svc\n"
    labelled = ok(lab, "get", "po", "--show-labels").splitlines()
    assert labelled[0].split()[-1] == "LABELS" and labelled[1].endswith("   app=sleeper")

    # a container that keeps exiting: CrashLoopBackOff always comes with its restarts
    crash = MANIFEST.split("---")[0].replace("sleeper", "crasher").replace(
        'command: [sleep, "600"]', "command: [sh, -c, 'exit 3']")
    ok(lab, "apply", "-f", "-", stdin=crash)

    def looping() -> list[str] | None:
        row = ok(lab, "get", "po", "crasher").splitlines()[1].split()
        assert row[2] != "CrashLoopBackOff" or int(row[3]) >= 1, row
        return row if row[2] == "CrashLoopBackOff" else None

    wait_for(looping)
    status = pod_json(lab, "crasher")["status"]["containerStatuses"][0]
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["restartCount"] >= 1


def _resolve(netns: str, name: str) -> str:
    """getent in the pod's network namespace with its resolv.conf (`ip netns exec` binds
    /etc/netns/NAME), without the daemon (whose `exec` op would need it)."""
    proc = subprocess.run(["ip", "netns", "exec", netns, "getent", "hosts", name],
                          capture_output=True, text=True, timeout=10, check=False)
    return proc.stdout.split()[0] if proc.returncode == 0 and proc.stdout else ""


def test_pods_and_dns_outlive_a_killed_daemon_and_up_adopts_them(lab: TempLab) -> None:
    ok(lab, *lab.up_args(), "-f", "-", "--wait", "--timeout", "30", stdin=MANIFEST)
    pod = session.connect(lab.state_dir).get("Pod", "default")[0]  # with the remora block
    netns, pid = pod["remora"]["netns"], pod["status"]["containerStatuses"][0]["remora"]["pid"]
    cluster_ip = json.loads(ok(lab, "get", "svc", "sleeper-svc", "-o", "json"))["spec"][
        "clusterIP"]
    assert wait_for(lambda: _resolve(netns, "sleeper-svc")) == cluster_ip
    dns_pid = json.loads((lab.state_dir / "dns.pid").read_text())["pid"]

    daemon = int((lab.state_dir / "daemon.pid").read_text())
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{daemon}").exists() or
             Path(f"/proc/{daemon}/stat").read_text().split()[2] == "Z", timeout=10)

    # cluster DNS keeps answering (names and the search list), the pod keeps running
    assert _resolve(netns, "sleeper-svc") == cluster_ip
    assert _resolve(netns, "sleeper-svc.default.svc.cluster.local") == cluster_ip
    assert Path(f"/proc/{pid}").exists()
    for command in (["get", "pods"], ["logs", "sleeper"], ["describe", "pod", "sleeper"]):
        proc = lab.remora(*command)
        assert proc.returncode == 1, proc.stdout
        assert "no lab is running" not in proc.stderr
        assert f"node daemon (pid {daemon}) is not running: 1 of 1 pods still running, " \
               "cluster DNS answering" in proc.stderr
        assert "remora up --state-dir" in proc.stderr and "adopts the running pods" in proc.stderr

    out = ok(lab, *lab.up_args())
    assert "lab started, adopting the pods still running" in out
    after = pod_json(lab)
    assert after["status"]["containerStatuses"][0]["remora"]["pid"] == pid
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    assert json.loads((lab.state_dir / "dns.pid").read_text())["pid"] == dns_pid  # adopted
    assert _resolve(netns, "sleeper-svc") == cluster_ip
    ok(lab, "down")
    assert not Path(f"/proc/{dns_pid}").exists() or \
        Path(f"/proc/{dns_pid}/stat").read_text().split()[2] == "Z"


DEPLOYMENT = textwrap.dedent("""\
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
    spec:
      replicas: 1
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}, annotations: {version: "1"}}
        spec:
          containers:
          - name: main
            image: local/sleep
            command: [sleep, "600"]
    """)


def _version(lab: TempLab, version: str) -> str:
    """Patch the template's annotation to VERSION, wait for the rollout; the new
    ReplicaSet's name."""
    patch = {"spec": {"template": {"metadata": {"annotations": {"version": version}}}}}
    ok(lab, "patch", "deployment", "web", "-p", json.dumps(patch))
    ok(lab, "rollout", "status", "deployment/web", "--timeout", "30")
    pods = json.loads(ok(lab, "get", "po", "-o", "json"))["items"]
    assert len(pods) == 1, pods
    return "web-" + pods[0]["metadata"]["labels"]["pod-template-hash"]


def test_a_replica_set_at_zero_scales_from_zero_after_a_daemon_restart(lab: TempLab) -> None:
    """The deployment controller's ScalingReplicaSet after the node daemon restarted: an
    old ReplicaSet it had scaled to 0 is scaled up again "to 1 from 0" when its template
    comes back (it was "to 1", the message of a new ReplicaSet: the restarted daemon knew
    only the sizes of the pods it adopted)."""
    ok(lab, *lab.up_args(), "-f", "-", "--wait", "--timeout", "30", stdin=DEPLOYMENT)
    first = _version(lab, "1")
    second = _version(lab, "2")
    assert first != second
    daemon = int((lab.state_dir / "daemon.pid").read_text())
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{daemon}").exists() or
             Path(f"/proc/{daemon}/stat").read_text().split()[2] == "Z", timeout=10)
    assert "adopting the pods still running" in ok(lab, *lab.up_args())
    assert _version(lab, "1") == first
    events = ok(lab, "describe", "deploy", "web").split("\nEvents:")[1].splitlines()
    scaled = [re.split(r"\s{2,}", line.strip())[-1] for line in events
              if "ScalingReplicaSet" in line]
    assert scaled[-2:] == [f"Scaled up replica set {first} to 1 from 0",
                           f"Scaled down replica set {second} to 0 from 1"], events
