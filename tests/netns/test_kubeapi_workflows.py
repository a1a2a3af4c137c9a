"""A developer's everyday kubectl against one lab (its own state dir and prefix): the
commands beyond apply/get/logs/exec that test_kubeapi_kubectl.py covers — port-forward to
a pod and to a service, wait, events, debug — judged by the machine's kubectl 1.32.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from remora.lab.testing import TempLab
from tests.datafiles import data_path
from tests.netns.test_kubeapi_kubectl import KUBECTL, NAMESPACES, Kube

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    if KUBECTL is None:
        pytest.skip("needs kubectl on PATH")
    with TempLab() as lab:
        up = lab.remora(*lab.up_args())
        assert up.returncode == 0, up.stderr
        path = lab.remora("kubeconfig")
        assert path.returncode == 0, path.stderr
        k = Kube(lab, Path(path.stdout.strip()), tmp_path_factory.mktemp("kube-cache"))
        manifests = tmp_path_factory.mktemp("manifests") / "ns.yaml"
        manifests.write_text(NAMESPACES)
        k.kubectl("apply", "-f", str(manifests), "-f", str(data_path("resources",
                                                                      "server.yaml")))
        k.kubectl("rollout", "status", "-n", "demo-to", "deployment/simple-server",
                  "--timeout", "60s", timeout=90)
        yield k
        lab.close()
        assert lab.leftovers() == []


def the_pod(kube: Kube) -> str:
    return kube.kubectl("get", "pods", "-n", "demo-to", "-l", "web=server", "-o",
                        "jsonpath={.items[0].metadata.name}").stdout.strip()


def forward(kube: Kube, target: str, remote: int) -> tuple[subprocess.Popen[str], int]:
    """`kubectl port-forward TARGET :REMOTE` (a local port the kernel picks) and that port,
    from kubectl's own "Forwarding from 127.0.0.1:N -> REMOTE" line."""
    assert KUBECTL is not None
    proc = subprocess.Popen([KUBECTL, "port-forward", "-n", "demo-to", target, f":{remote}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=kube.env)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # kubectl prints it once it listens (or exits)
    found = re.match(rf"Forwarding from 127\.0\.0\.1:(\d+) -> {remote}", line)
    if found is None:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"port-forward {target}: {line!r} {err}")
    return proc, int(found.group(1))


def get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.status, resp.read().decode()


def test_port_forward_to_a_pod_and_a_service(kube: Kube) -> None:
    # kubectl 1.31+ tunnels SPDY through a WebSocket (SPDY/3.1+portforward.k8s.io); each
    # local connection is a pair of SPDY streams to the port on the pod's loopback
    for target in (f"pod/{the_pod(kube)}", "svc/simple-server-svc"):
        proc, port = forward(kube, target, 18080)
        try:
            for _ in range(3):  # several connections over the one tunnel
                status, body = get(port, "/common/sauth")
                assert status == 200 and '"id": "test_common"' in body, body
        finally:
            proc.kill()
            proc.wait()


def test_port_forward_to_a_closed_port_says_why(kube: Kube) -> None:
    pod = the_pod(kube)
    proc, port = forward(kube, f"pod/{pod}", 1234)
    try:
        with pytest.raises(OSError):
            get(port, "/")
        # kubelet's error comes on the error stream; kubectl 1.32 then gives up
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert f"error forwarding port 1234 to pod {pod}" in err, err
    assert "failed to connect to localhost:1234" in err and "connection refused" in err, err
    assert "lost connection to pod" in err, err


def test_events_in_get_events_and_describe(kube: Kube) -> None:
    # derived from the pods' status: the scheduler's and kubelet's events of a pod that
    # started (docs/kubeapi.md); before, `get events` was "doesn't have a resource type"
    pod = the_pod(kube)
    table = kube.kubectl("get", "events", "-n", "demo-to").stdout.splitlines()
    assert table[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    rows = [r for r in table[1:] if f"pod/{pod}" in r]
    assert any(r.split()[1:3] == ["Normal", "Scheduled"] and
               f"Successfully assigned demo-to/{pod} to " in r for r in rows), table
    assert any(r.split()[1:3] == ["Normal", "Started"] and r.endswith("Started container demo")
               for r in rows), table
    # describe asks for the pod's events by field selector (involvedObject.name, .uid...)
    described = kube.kubectl("describe", "pod", "-n", "demo-to", pod).stdout
    events = described[described.index("\nEvents:") + 1:].splitlines()
    assert events[1].split() == ["Type", "Reason", "Age", "From", "Message"], described
    assert any(line.split()[:2] == ["Normal", "Scheduled"] and "default-scheduler" in line
               for line in events), described
    assert any(line.split()[:2] == ["Normal", "Started"] and "kubelet" in line and
               line.endswith("Started container istio-proxy") for line in events), described
    # `kubectl events` (its own printer) and a field selector on the event's fields
    assert f"Pod/{pod}" in kube.kubectl("events", "-n", "demo-to").stdout
    mine = kube.kubectl("get", "events", "-n", "demo-to", "--field-selector",
                        "reason=Scheduled", "-o", "name").stdout.split()
    assert len(mine) == 1 and mine[0].startswith(f"event/{pod}."), mine


def test_debug_and_attach_are_refused_by_name(kube: Kube) -> None:
    pod = the_pod(kube)
    # kubectl debug patches pods/POD/ephemeralcontainers; the apiserver's NotFound with
    # empty details is how a cluster without ephemeral containers answers (kubectl
    # panicked on the lab's details-less 404 before)
    debug = kube.kubectl("debug", "-n", "demo-to", pod, "--image=busybox",
                         "--profile=general", check=False)
    assert debug.returncode == 1 and "panic" not in debug.stderr, debug.stderr
    assert "ephemeral containers are disabled for this cluster" in debug.stderr
    assert "use kubectl exec" in debug.stderr
    attach = kube.kubectl("attach", "-n", "demo-to", pod, check=False)
    assert attach.returncode == 1 and "attach is not served by the lab" in attach.stderr
    missing = kube.kubectl("attach", "-n", "demo-to", "nope", check=False)
    assert 'pods "nope" not found' in missing.stderr


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a pty")
def test_exec_it_gives_the_command_a_terminal(kube: Kube) -> None:
    # kubectl exec -it from a terminal (script(1) gives kubectl one, 33x101): the
    # command runs on a pty of that size, and an interactive shell reads the user's
    # lines from it (it was "not a tty", and a shell had no prompt)
    pod = the_pod(kube)
    command = (f"stty cols 101 rows 33; {KUBECTL} exec -it -n demo-to {pod} -c demo -- "
               "sh -c 'tty; stty size; test -t 1 && echo stdout-is-a-tty; exec sh -i'")
    done = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                          text=True, env=kube.env, timeout=60,
                          input="echo $((6*7))\nexit 3\n")
    out = done.stdout
    lines = out.splitlines()  # text mode: the pty's \r\n read as \n
    assert any(re.fullmatch(r"/dev/pts/\d+", line) for line in lines), out
    assert "33 101" in lines and "stdout-is-a-tty" in lines, out
    assert any(re.fullmatch(r"(# )?42", line) for line in lines), out  # after the prompt
    assert done.returncode == 3, (done.returncode, out, done.stderr)


def test_rollout_history_and_undo(kube: Kube) -> None:
    # each template a Deployment had is a numbered ReplicaSet, kept scaled to 0 after its
    # pods are gone (it was: one revision 0, and undo "skipped rollback")
    deploy, ns = "deployment/simple-server", ("-n", "demo-to")

    def rolled_out() -> None:
        kube.kubectl("rollout", "status", *ns, deploy, "--timeout", "60s", timeout=90)

    def env() -> str:
        return kube.kubectl("get", *ns, deploy, "-o", "jsonpath={.spec.template.spec."
                            "containers[0].env}").stdout

    def history() -> list[list[str]]:
        lines = kube.kubectl("rollout", "history", *ns, deploy).stdout.splitlines()
        return [line.split(None, 1) for line in lines[2:] if line.strip()]

    first = history()
    assert len(first) == 1 and first[0][0].isdigit() and first[0][0] != "0", first
    base = int(first[0][0])
    kube.kubectl("set", "env", *ns, deploy, "-c", "demo", "GREETING=hello")
    kube.kubectl("annotate", *ns, deploy, "kubernetes.io/change-cause=greet")
    rolled_out()
    assert history() == [[str(base), "<none>"], [str(base + 1), "greet"]]
    rs = kube.kubectl("get", "rs", *ns, "-l", "web=server").stdout.splitlines()[1:]
    assert sorted(r.split()[1] for r in rs) == ["0", "1"], rs  # the old one kept at 0
    assert "GREETING" in env()
    # undo: back to the previous template, which becomes the newest revision
    assert "rolled back" in kube.kubectl("rollout", "undo", *ns, deploy).stdout
    rolled_out()
    assert "GREETING" not in env()
    assert [r[0] for r in history()] == [str(base + 1), str(base + 2)]
    revision = kube.kubectl("get", *ns, deploy, "-o", "jsonpath={.metadata.annotations."
                            "deployment\\.kubernetes\\.io/revision}").stdout
    assert revision == str(base + 2)
    # and to a revision by number, whose template rollout history shows
    kube.kubectl("rollout", "undo", *ns, deploy, f"--to-revision={base + 1}")
    rolled_out()
    assert "GREETING" in env()
    shown = kube.kubectl("rollout", "history", *ns, deploy,
                         f"--revision={base + 3}").stdout
    assert "GREETING:\thello" in shown, shown


def test_rollout_undo_of_a_deployment_without_annotations(kube: Kube) -> None:
    # kubectl's undo sends a JSON patch `replace /metadata/annotations`
    # (polymorphichelpers/rollback.go); a Deployment whose manifest has no annotations
    # still has the controller's revision one, so the replace applies (it was: "failed
    # restoring revision 0: json patch: cannot replace '/metadata/annotations'")
    ns, deploy = ("-n", "demo-to"), "deployment/qa-undo"
    kube.kubectl("create", "deployment", "qa-undo", *ns, "--image=vasth/simple-server")
    try:
        assert kube.kubectl("get", *ns, deploy, "-o", "jsonpath={.metadata.annotations}"
                            ).stdout == '{"deployment.kubernetes.io/revision":"1"}'
        kube.kubectl("rollout", "status", *ns, deploy, "--timeout", "60s", timeout=90)
        kube.kubectl("set", "env", *ns, deploy, "GREETING=hello")
        kube.kubectl("rollout", "status", *ns, deploy, "--timeout", "60s", timeout=90)
        assert "rolled back" in kube.kubectl("rollout", "undo", *ns, deploy).stdout
        kube.kubectl("rollout", "status", *ns, deploy, "--timeout", "60s", timeout=90)
        assert "GREETING" not in kube.kubectl(
            "get", *ns, deploy, "-o", "jsonpath={.spec.template.spec.containers[0].env}").stdout
        # the revision is served from the numbered templates; the stored object keeps no
        # copy of it that the next rollout would leave stale (`remora get -o json`)
        assert kube.kubectl("get", *ns, deploy, "-o", "jsonpath={.metadata.annotations}"
                            ).stdout == '{"deployment.kubernetes.io/revision":"3"}'
        stored = json.loads(kube.lab.remora("get", "deploy", "qa-undo", *ns, "-o",
                                            "json").stdout)
        assert "deployment.kubernetes.io/revision" not in (
            stored["metadata"].get("annotations") or {}), stored["metadata"]
    finally:
        kube.kubectl("delete", *ns, deploy, "--wait=false", check=False)


def test_get_and_describe_nodes(kube: Kube) -> None:
    # the nodes the pods run on, as Nodes (kubectl's first command on a new cluster)
    pod = the_pod(kube)
    node = kube.kubectl("get", "pod", "-n", "demo-to", pod, "-o",
                        "jsonpath={.spec.nodeName}").stdout
    rows = [r.split() for r in kube.kubectl("get", "nodes").stdout.splitlines()[1:]]
    assert [node, "Ready"] in [r[:2] for r in rows], rows
    described = kube.kubectl("describe", "node", node).stdout
    # describe finds the node's pods by spec.nodeName
    assert re.search(rf"demo-to\s+{pod}", described), described


def test_controller_events_outlive_their_objects(kube: Kube) -> None:
    """The deployment and replicaset controllers' events, recorded when they act (it
    was: events derived from the pods' status, none for a Deployment or ReplicaSet, and
    a pod's gone with it); `get events -w` streams them."""
    ns, deploy = ("-n", "demo-to"), "deployment/simple-server"
    current = [r.split()[0] for r in kube.kubectl("get", "rs", *ns, "-l", "web=server")
               .stdout.splitlines()[1:] if r.split()[1] == "1"]
    assert len(current) == 1, current
    rs = current[0]
    assert KUBECTL is not None
    watch = subprocess.Popen([KUBECTL, "get", "events", *ns, "--watch-only"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=kube.env)
    try:
        time.sleep(2)  # the watch is open before the scale
        kube.kubectl("scale", *ns, deploy, "--replicas=2")
        kube.kubectl("rollout", "status", *ns, deploy, "--timeout", "60s", timeout=90)
        seen = _lines_until(watch, f"Scaled up replica set {rs} to 2 from 1", 30)
        assert any("ScalingReplicaSet" in line and "deployment/simple-server" in line
                   for line in seen), seen
    finally:
        watch.kill()
        watch.communicate(timeout=10)
    # describe deployment: the deployment controller's events
    described = kube.kubectl("describe", *ns, deploy).stdout
    lines = described[described.index("\nEvents:") + 1:].splitlines()
    assert any(line.split()[:2] == ["Normal", "ScalingReplicaSet"] and
               "deployment-controller" in line and
               line.endswith(f"Scaled up replica set {rs} to 2 from 1")
               for line in lines), described
    # describe rs: the replicaset controller's, one per pod it made
    pods = kube.kubectl("get", "pods", *ns, "-l", "web=server", "-o",
                        "jsonpath={.items[*].metadata.name}").stdout.split()
    assert len(pods) == 2, pods
    described = kube.kubectl("describe", *ns, "rs", rs).stdout
    made = [line for line in described[described.index("\nEvents:"):].splitlines()
            if "SuccessfulCreate" in line and "replicaset-controller" in line]
    assert any(line.endswith(f"Created pod: {p}") for p in pods for line in made), described
    # scale down: the newest pod goes; its events stay after it is gone
    kube.kubectl("scale", *ns, deploy, "--replicas=1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = kube.kubectl("get", "pods", *ns, "-l", "web=server", "-o",
                            "jsonpath={.items[*].metadata.name}").stdout.split()
        if len(left) == 1:
            break
        time.sleep(1)
    assert len(left) == 1, left
    gone = next(p for p in pods if p not in left)
    table = kube.kubectl("get", "events", *ns, "--field-selector",
                         f"involvedObject.name={gone}").stdout
    for reason in ("Scheduled", "Started", "Killing"):
        assert re.search(rf"\b{reason}\b", table), table
    everything = kube.kubectl("get", "events", *ns).stdout
    assert f"Scaled down replica set {rs} to 1 from 2" in everything, everything
    assert f"Deleted pod: {gone}" in everything, everything


def _lines_until(proc: subprocess.Popen[str], wanted: str, timeout: float) -> list[str]:
    """PROC's output lines up to the one that holds WANTED (or fail at TIMEOUT)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen: list[str] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        chunk = os.read(fd, 65536) if ready else b""
        if ready and not chunk:
            break  # kubectl ended
        buffer += chunk
        *done, rest = buffer.split(b"\n")
        buffer = rest
        seen += [line.decode() for line in done]
        if any(wanted in line for line in seen):
            return seen
    raise AssertionError(f"no {wanted!r} in {seen} {buffer!r}")


PRUNED_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: demo-to
  labels: {{app: prune-demo}}
spec:
  selector: {{app: prune-demo}}
  ports: [{{port: {port}}}]
"""


def test_apply_prune_with_kubectls_default_allowlist(kube: Kube, tmp_path: Path) -> None:
    """`kubectl apply --prune -l` without --prune-allowlist (it was: "error retrieving
    RESTMappings to prune: ... no matches for kind ConfigMap"): kubectl lists every kind
    of its default allowlist, the ones the lab does not store come back empty, and what
    was applied with the label and is no longer in the files is deleted."""
    folder = tmp_path / "app"
    folder.mkdir()
    for name, port in (("prune-a", 18101), ("prune-b", 18102)):
        (folder / f"{name}.yaml").write_text(PRUNED_SERVICE.format(name=name, port=port))
    first = kube.kubectl("apply", "--prune", "-l", "app=prune-demo", "-f", str(folder),
                         check=False)
    assert first.returncode == 0, first.stderr
    assert sorted(first.stdout.split("\n")[:2]) == ["service/prune-a created",
                                                    "service/prune-b created"]
    (folder / "prune-b.yaml").unlink()
    again = kube.kubectl("apply", "--prune", "-l", "app=prune-demo", "-f", str(folder),
                         check=False)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["service/prune-a unchanged",
                                         "service/prune-b pruned"], again.stdout
    left = kube.kubectl("get", "svc", "-n", "demo-to", "-l", "app=prune-demo", "-o",
                        "name").stdout.split()
    assert left == ["service/prune-a"]
    # the Deployment and its pods, labelled otherwise, were not touched; the kinds the
    # lab does not store were listed, not pretended: creating one is still refused
    assert kube.kubectl("get", "deploy", "-n", "demo-to", "simple-server",
                        check=False).returncode == 0
    made = kube.kubectl("create", "configmap", "-n", "demo-to", "c", "--from-literal=a=b",
                        check=False)
    assert made.returncode == 1 and "the lab does not serve them" in made.stderr
    kube.kubectl("delete", "-n", "demo-to", "service", "prune-a")


def test_a_crash_loop_counts_on_one_event_each(kube: Kube) -> None:
    """kubelet's recorder: each restart bumps the count of the one Started event (and of
    BackOff, a Warning), as `describe pod` shows "(xN over ...)"; the pod's events stay
    once it is deleted."""
    kube.kubectl("run", "crash", "-n", "demo-to", "--image=busybox", "--command", "--",
                 "sh", "-c", "sleep 0.3; exit 3")
    try:
        deadline = time.monotonic() + 60
        described = ""
        while time.monotonic() < deadline:
            described = kube.kubectl("describe", "pod", "-n", "demo-to", "crash").stdout
            if re.search(r"Started\s+\S+ \(x[3-9] over .*Started container crash",
                         described) and "BackOff" in described:
                break
            time.sleep(1)
        events = described[described.index("\nEvents:"):].splitlines()
        started = [line for line in events if line.endswith("Started container crash")]
        assert len(started) == 1 and re.search(r"\(x[3-9] over", started[0]), described
        assert any(line.split()[:2] == ["Warning", "BackOff"] and
                   "Back-off restarting failed container crash in pod crash_demo-to(" in line
                   for line in events), described
        # `remora describe pod` prints the same Events section as kubectl's (the ages
        # aside: the two commands run a moment apart, and a repeat's count can move)
        ours = kube.lab.remora("describe", "pod", "crash", "-n", "demo-to")
        assert ours.returncode == 0, ours.stderr
        theirs = kube.kubectl("describe", "pod", "-n", "demo-to", "crash").stdout

        def rows(text: str) -> list[tuple[str, ...]]:
            section = text[text.index("\nEvents:") + 1:].splitlines()
            assert [h.split() for h in section[1:3]] == [
                ["Type", "Reason", "Age", "From", "Message"],
                ["----", "------", "----", "----", "-------"]], text
            cells = [re.split(r"\s{2,}", line.strip(), maxsplit=4) for line in section[3:]]
            assert all(len(c) == 5 for c in cells), text
            # by last time seen: a repeat between the two commands can reorder them
            return sorted((c[0], c[1], c[3], c[4]) for c in cells)

        assert rows(ours.stdout) == rows(theirs), (ours.stdout, theirs)
    finally:
        kube.kubectl("delete", "pod", "-n", "demo-to", "crash", "--wait=true")
    left = kube.kubectl("get", "events", "-n", "demo-to", "--field-selector",
                        "involvedObject.name=crash,reason=Started", "-o",
                        "jsonpath={range .items[*]}{.message}={.count}{'\\n'}{end}").stdout
    counts = dict(line.rsplit("=", 1) for line in left.splitlines() if line)
    assert int(counts.get("Started container crash", 0)) >= 3, left


# a readiness probe on a port nothing listens on: the new pod never gets Ready, so the
# rollout stops half way (old pod kept, maxUnavailable 0) and passes its deadline
STUCK = ('{"spec":{"progressDeadlineSeconds":6,"template":{"spec":{"containers":[{"name":'
         '"demo","readinessProbe":{"tcpSocket":{"port":1},"periodSeconds":1}}]}}}}')


def test_describe_deployment_conditions_and_replica_sets_as_kubectls(kube: Kube) -> None:
    """The deployment controller's status.conditions (Available, Progressing with its
    reasons, kept from pass to pass) and kubectl describe's OldReplicaSets/NewReplicaSet:
    `remora describe deploy` prints the same section as kubectl, settled, stuck past the
    progress deadline (which `kubectl rollout status` reports) and rolled back. It was:
    conditions made up on each read (Progressing always "is progressing", both times
    the creation time), no OldReplicaSets/NewReplicaSet in remora's describe, and old
    ReplicaSets served at 0 while their pods still ran."""
    ns, deploy = ("-n", "demo-to"), "deployment/simple-server"

    def section(text: str) -> str:
        return text[text.index("\nConditions:") + 1:text.index("\nEvents:") + 1]

    def compared() -> list[str]:
        theirs = kube.kubectl("describe", *ns, deploy).stdout
        ours = kube.lab.remora("describe", "deploy", "simple-server", *ns)
        assert ours.returncode == 0, ours.stderr
        assert section(ours.stdout) == section(theirs), (ours.stdout, theirs)
        return section(theirs).splitlines()

    def live_rs() -> list[str]:
        """The ReplicaSets not scaled to 0 (NAME, DESIRED, CURRENT, READY, AGE)."""
        rows = kube.kubectl("get", "rs", *ns, "-l", "web=server").stdout.splitlines()[1:]
        return sorted(" ".join(r.split()[:4]) for r in rows if r.split()[1] != "0")

    def current_rs() -> str:
        live = live_rs()
        assert len(live) == 1, live
        return live[0].split()[0]

    def conditions() -> dict[str, dict[str, str]]:
        out = kube.kubectl("get", *ns, deploy, "-o", "jsonpath={range .status.conditions[*]}"
                           "{.type}|{.status}|{.reason}|{.message}|{.lastUpdateTime}|"
                           "{.lastTransitionTime}{'\\n'}{end}").stdout
        return {c[0]: dict(zip(("status", "reason", "message", "updated", "since"), c[1:],
                               strict=True))
                for c in (line.split("|") for line in out.splitlines() if line)}

    rs = current_rs()
    settled_text = compared()
    assert settled_text[:3] == [
        "Conditions:", "  Type           Status  Reason", "  ----           ------  ------"]
    # in the order last set (a scale by an earlier test moves Available to the end)
    assert sorted(settled_text[3:5]) == [
        "  Available      True    MinimumReplicasAvailable",
        "  Progressing    True    NewReplicaSetAvailable"], settled_text
    # every older ReplicaSet (at 0 after earlier rollouts) is listed by kubectl 1.32
    assert settled_text[5].startswith("OldReplicaSets:  ") and \
        f"{rs} (" not in settled_text[5], settled_text
    assert settled_text[6:] == [f"NewReplicaSet:   {rs} (1/1 replicas created)"]
    settled = conditions()
    assert settled["Progressing"]["message"] == f'ReplicaSet "{rs}" has successfully progressed.'
    assert settled["Available"]["message"] == "Deployment has minimum availability."
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", c[k])
               for c in settled.values() for k in ("updated", "since")), settled
    try:
        kube.kubectl("patch", *ns, deploy, "-p", STUCK)
        waited = kube.kubectl("rollout", "status", *ns, deploy, "--timeout", "60s",
                              check=False, timeout=90)
        assert waited.returncode == 1, (waited.stdout, waited.stderr)
        assert 'deployment "simple-server" exceeded its progress deadline' in waited.stderr
        ours = kube.lab.remora("rollout", "status", "deployment/simple-server", *ns,
                               "--timeout", "30")
        assert ours.returncode == 1, (ours.stdout, ours.stderr)
        assert 'deployment "simple-server" exceeded its progress deadline' in ours.stderr
        # the old ReplicaSet keeps its pod (maxUnavailable 0): both are at 1
        live = live_rs()
        new = next(r.split()[0] for r in live if not r.startswith(rs))
        assert live == sorted([f"{rs} 1 1 1", f"{new} 1 1 0"]), live
        stuck = compared()
        assert stuck[3:5] == ["  Available      True    MinimumReplicasAvailable",
                              "  Progressing    False   ProgressDeadlineExceeded"], stuck
        assert f"{rs} (1/1 replicas created)" in stuck[5], stuck
        assert stuck[6:] == [f"NewReplicaSet:   {new} (1/1 replicas created)"], stuck
        assert conditions()["Progressing"]["message"] == \
            f'ReplicaSet "{new}" has timed out progressing.'
        described = kube.kubectl("describe", "rs", *ns, rs).stdout
        assert re.search(r"Replicas:\s+1 current / 1 desired", described), described
    finally:
        kube.kubectl("rollout", "undo", *ns, deploy)
        kube.kubectl("patch", *ns, deploy, "-p", '{"spec":{"progressDeadlineSeconds":600}}')
    kube.kubectl("rollout", "status", *ns, deploy, "--timeout", "60s", timeout=90)
    assert current_rs() == rs
    back = compared()
    assert back[3:5] == ["  Available      True    MinimumReplicasAvailable",
                         "  Progressing    True    NewReplicaSetAvailable"], back
    assert f"{new} (0/0 replicas created)" in back[5], back
    assert back[6:] == [f"NewReplicaSet:   {rs} (1/1 replicas created)"], back
    again = conditions()["Progressing"]
    assert again["message"] == f'ReplicaSet "{rs}" has successfully progressed.'


# a pod with a server that accepts and never reads (7001, a small receive buffer so the
# kernel holds little of what is sent) and one that counts what it reads (7002)
SINK = """\
import socket, threading
def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s
def hold(s):
    held = []
    while True:
        held.append(s.accept()[0])
def count(s):
    while True:
        c = s.accept()[0]
        n = 0
        while d := c.recv(65536):
            n += len(d)
        c.sendall(str(n).encode())
        c.close()
held, counted = listen(7001), listen(7002)
threading.Thread(target=hold, args=(held,), daemon=True).start()
count(counted)
"""


def test_port_forward_a_stalled_connection_holds_back_only_its_own_stream(
        kube: Kube, tmp_path: Path) -> None:
    """Two connections through one `kubectl port-forward` tunnel: one to a pod server
    that never reads, sent 8 MiB (more than the kernel's buffers take), and one that
    sends 1 MiB and reads the count back. Each stream writes to its pod connection on
    its own (remora.kubeapi.streams); it was: the tunnel's frame loop waited for each
    write to the pod to drain, so the stalled connection stopped the other one too."""
    manifest = tmp_path / "sink.yaml"
    manifest.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sink", "namespace": "demo-to",
                     "annotations": {"sidecar.istio.io/inject": "false"}},
        "spec": {"containers": [{
            "name": "sink", "image": "python", "command": [sys.executable, "-c", SINK],
            "readinessProbe": {"tcpSocket": {"port": 7002}}}]}}))
    kube.kubectl("apply", "-f", str(manifest))
    assert KUBECTL is not None
    proc: subprocess.Popen[str] | None = None
    stalled = socket.socket()
    try:
        kube.kubectl("wait", "-n", "demo-to", "--for=condition=Ready", "pod/sink",
                     "--timeout=60s", timeout=90)
        proc = subprocess.Popen([KUBECTL, "port-forward", "-n", "demo-to", "pod/sink",
                                 ":7001", ":7002"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=kube.env)
        assert proc.stdout is not None
        local: dict[int, int] = {}
        while len(local) < 2:
            line = proc.stdout.readline()
            found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", line)
            assert line, proc.stderr.read() if proc.stderr else ""
            if found:
                local[int(found.group(2))] = int(found.group(1))
        stalled.connect(("127.0.0.1", local[7001]))
        pushing = threading.Thread(target=_send_all, args=(stalled, 8 << 20), daemon=True)
        pushing.start()
        time.sleep(3)  # the tunnel takes what it can of the 8 MiB
        with socket.create_connection(("127.0.0.1", local[7002]), timeout=20) as moving:
            moving.sendall(b"y" * (1 << 20))
            moving.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := moving.recv(100):
                reply += chunk
        assert reply == str(1 << 20).encode()
    finally:
        with contextlib.suppress(OSError):
            stalled.shutdown(socket.SHUT_RDWR)
        stalled.close()
        if proc is not None:
            proc.kill()
            proc.communicate(timeout=10)
        kube.kubectl("delete", "pod", "-n", "demo-to", "sink", "--wait=true", timeout=90)


def _send_all(sock: socket.socket, size: int) -> None:
    with contextlib.suppress(OSError):  # the test's end shuts it down
        sock.sendall(b"x" * size)


def _described_once(kube: Kube, pod: str, pattern: str) -> tuple[str, str]:
    """POD's (in demo-to) IP and `kubectl describe`, polled once a second until the
    description matches PATTERN (60 s at most; the last one then)."""
    ip = described = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ip = kube.kubectl("get", "pod", "-n", "demo-to", pod, "-o",
                          "jsonpath={.status.podIP}").stdout
        described = kube.kubectl("describe", "pod", "-n", "demo-to", pod).stdout
        if re.search(pattern, described):
            break
        time.sleep(1)
    return ip, described


def test_a_failing_readiness_probe_is_a_counted_unhealthy_event(
        kube: Kube, tmp_path: Path) -> None:
    """kubelet's `Warning Unhealthy` for each failed readiness probe, once per period
    and counted on repeat, with prober.go's message around Go's dial error (it was: the
    lab's readiness check retried silently); `remora describe pod` shows the same."""
    manifest = tmp_path / "unready.yaml"
    manifest.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "unready", "namespace": "demo-to",
                     "annotations": {"sidecar.istio.io/inject": "false"}},
        "spec": {"containers": [{
            "name": "main", "image": "local/sleep", "command": ["sleep", "600"],
            "readinessProbe": {"tcpSocket": {"port": 1}, "periodSeconds": 1}}]}}))
    kube.kubectl("apply", "-f", str(manifest))
    try:
        ip, described = _described_once(kube, "unready",
                                        r"Unhealthy\s+\S+ \(x[3-9] over")
        events = described[described.index("\nEvents:"):].splitlines()
        unhealthy = [line for line in events if "Unhealthy" in line]
        assert len(unhealthy) == 1, described
        assert unhealthy[0].split()[:2] == ["Warning", "Unhealthy"], described
        assert re.search(r"\(x[3-9] over \d+s\)\s+kubelet\s+Readiness probe failed: "
                         rf"dial tcp {re.escape(ip)}:1: connect: connection refused$",
                         unhealthy[0]), described
        # not Ready, and the same rows in remora's describe (ages and counts aside)
        assert re.search(r"Ready\s+False", described), described

        def rows(text: str) -> list[tuple[str, ...]]:
            section = text[text.index("\nEvents:") + 1:].splitlines()[3:]
            return sorted((c[0], c[1], c[-1]) for c in
                          (re.split(r"\s{2,}", line.strip()) for line in section))

        ours = kube.lab.remora("describe", "pod", "unready", "-n", "demo-to")
        assert ours.returncode == 0, ours.stderr
        assert rows(ours.stdout) == rows(described), (ours.stdout, described)
    finally:
        kube.kubectl("delete", "pod", "-n", "demo-to", "unready", "--wait=true", timeout=90)


def test_a_failing_liveness_probe_kills_and_restarts_the_container(
        kube: Kube, tmp_path: Path) -> None:
    """kubelet's liveness probe: each failure a Warning `Unhealthy` "Liveness probe
    failed: ...", and at failureThreshold the container is killed ("Container main
    failed liveness probe, will be restarted") and restarted (it was: livenessProbe
    dropped with an unknown-field warning, never probed)."""
    manifest = tmp_path / "unlive.yaml"
    manifest.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "unlive", "namespace": "demo-to",
                     "annotations": {"sidecar.istio.io/inject": "false"}},
        "spec": {"containers": [{
            "name": "main", "image": "local/sleep", "command": ["sleep", "600"],
            "livenessProbe": {"tcpSocket": {"port": 1}, "periodSeconds": 1,
                              "failureThreshold": 2}}]}}))
    applied = kube.kubectl("apply", "-f", str(manifest))
    assert "unknown field" not in applied.stderr, applied.stderr
    try:
        ip, described = _described_once(
            kube, "unlive", r"Restart Count:\s+[2-9](?s:.*)Killing\s+\S+ \(x[2-9] over")
        events = described[described.index("\nEvents:"):].splitlines()
        unhealthy = [line for line in events if "Unhealthy" in line]
        assert len(unhealthy) == 1 and unhealthy[0].split()[:2] == ["Warning", "Unhealthy"]
        assert re.search(r"\(x[3-9] over \d+s\)\s+kubelet\s+Liveness probe failed: "
                         rf"dial tcp {re.escape(ip)}:1: connect: connection refused$",
                         unhealthy[0]), described
        killing = [line for line in events if "Killing" in line]
        assert len(killing) == 1 and killing[0].split()[:2] == ["Normal", "Killing"]
        assert killing[0].endswith("Container main failed liveness probe, will be restarted")
        assert re.search(r"Restart Count:\s+[2-9]", described), described
        assert re.search(r"Last State:\s+Terminated", described), described
    finally:
        kube.kubectl("delete", "pod", "-n", "demo-to", "unlive", "--wait=true", timeout=90)


def test_revision_history_limit_is_kept_and_honoured(kube: Kube, tmp_path: Path) -> None:
    """spec.revisionHistoryLimit as given: served, and the old ReplicaSets beyond it
    forgotten (it was dropped by the resources layer: always 10)."""
    manifest = tmp_path / "hist.yaml"
    manifest.write_text(json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hist", "namespace": "demo-from"},
        "spec": {"revisionHistoryLimit": 1, "selector": {"matchLabels": {"app": "hist"}},
                 "template": {"metadata": {"labels": {"app": "hist"}, "annotations": {
                     "sidecar.istio.io/inject": "false"}},
                              "spec": {"containers": [{"name": "main", "image": "local/sleep",
                                                       "command": ["sleep", "600"]}]}}}}))
    ns, deploy = ("-n", "demo-from"), "deployment/hist"
    kube.kubectl("apply", "-f", str(manifest))
    try:
        assert kube.kubectl("get", *ns, deploy, "-o",
                            "jsonpath={.spec.revisionHistoryLimit}").stdout == "1"
        for value in ("a", "b"):
            kube.kubectl("set", "env", *ns, deploy, f"V={value}")
            kube.kubectl("rollout", "status", *ns, deploy, "--timeout", "60s", timeout=90)
        lines = kube.kubectl("rollout", "history", *ns, deploy).stdout.splitlines()
        assert [line.split()[0] for line in lines[2:] if line.strip()] == ["2", "3"], lines
        rs = kube.kubectl("get", "rs", *ns, "-l", "app=hist", "-o", "name").stdout.split()
        assert len(rs) == 2, rs
    finally:
        kube.kubectl("delete", *ns, deploy, "--wait=true", timeout=90)


# a pod whose readiness endpoint (an HTTP server on 18091) is up exactly while FLAG exists,
# its service port 18090 always
FLAPPY = r"""
import http.server, os, sys, threading, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
def serve(port):
    s = http.server.ThreadingHTTPServer(("0.0.0.0", port), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s
serve(18090)
ready = None
while True:
    if os.path.exists(sys.argv[1]) and ready is None:
        ready = serve(18091)
    elif not os.path.exists(sys.argv[1]) and ready is not None:
        ready.shutdown(); ready.server_close(); ready = None
    time.sleep(0.1)
"""


def test_readiness_is_probed_for_the_pods_life_and_endpoints_follow(
        kube: Kube, tmp_path: Path) -> None:
    """kubelet probes readiness every periodSeconds for the container's whole life: when
    the pod's readiness port closes, failureThreshold failures make it NotReady, it leaves
    the Service's Endpoints (kubectl: notReadyAddresses) and the client sidecar's EDS
    (`remora proxy-config endpoint`), and a success brings it back to both (it was: the
    first success made the pod Ready for ever, and httpGet was a bare connect)."""
    flag = tmp_path / "ready"
    flag.touch()
    manifest = tmp_path / "flappy.yaml"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "flappy", "namespace": "demo-to", "labels": {"app": "flappy"},
                      "annotations": {"sidecar.istio.io/inject": "false"}},
         "spec": {"containers": [{
             "name": "main", "image": "local/flappy",
             "command": [sys.executable, "-c", FLAPPY, str(flag)],
             "ports": [{"containerPort": 18090}, {"name": "health", "containerPort": 18091}],
             "readinessProbe": {"httpGet": {"path": "/ready", "port": "health"},
                                "periodSeconds": 1, "failureThreshold": 2}}]}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "flappy", "namespace": "demo-to"},
         "spec": {"selector": {"app": "flappy"},
                  "ports": [{"name": "http", "port": 18090, "targetPort": 18090}]}}]}))
    kube.kubectl("apply", "-f", str(manifest))
    client = the_pod(kube)  # simple-server's pod: its sidecar is the client here
    cluster = "outbound|18090||flappy.demo-to.svc.cluster.local"

    def endpoints() -> tuple[str, str]:
        return (kube.kubectl("get", "endpoints", "flappy", "-n", "demo-to", "-o",
                             "jsonpath={.subsets[*].addresses[*].ip}").stdout.strip(),
                kube.kubectl("get", "endpoints", "flappy", "-n", "demo-to", "-o",
                             "jsonpath={.subsets[*].notReadyAddresses[*].ip}").stdout.strip())

    def sidecar_view() -> str:
        shown = kube.lab.remora("proxy-config", "endpoint", client, "-n", "demo-to",
                                "--cluster", cluster)
        assert shown.returncode == 0, shown.stderr
        return shown.stdout

    def until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, (what, endpoints(), sidecar_view(),
                                                 kube.kubectl("describe", "pod", "flappy",
                                                              "-n", "demo-to").stdout)
            time.sleep(0.5)

    try:
        kube.kubectl("wait", "-n", "demo-to", "pod/flappy", "--for=condition=Ready",
                     "--timeout=60s", timeout=90)
        ip = kube.kubectl("get", "pod", "flappy", "-n", "demo-to", "-o",
                          "jsonpath={.status.podIP}").stdout.strip()
        until("ready pod in endpoints", lambda: endpoints() == (ip, ""))
        until("ready pod in the client's EDS", lambda: f"{ip}:18090" in sidecar_view())

        flag.unlink()  # the readiness port closes; the process keeps running
        until("unready pod out of endpoints", lambda: endpoints() == ("", ip))
        status = json.loads(kube.kubectl("get", "pod", "flappy", "-n", "demo-to", "-o",
                                         "json").stdout)["status"]
        assert status["containerStatuses"][0]["ready"] is False
        assert status["containerStatuses"][0]["restartCount"] == 0
        assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"
        until("unready pod out of the client's EDS", lambda: ip not in sidecar_view())
        described = kube.kubectl("describe", "pod", "flappy", "-n", "demo-to").stdout
        assert re.search(r"Readiness probe failed: Get \"http://" + re.escape(ip)
                         + r":18091/ready\": dial tcp " + re.escape(ip)
                         + r":18091: connect: connection refused", described), described

        flag.touch()  # and opens again: one success (successThreshold 1) is enough
        until("ready again in endpoints", lambda: endpoints() == (ip, ""))
        until("ready again in the client's EDS", lambda: f"{ip}:18090" in sidecar_view())
    finally:
        kube.kubectl("delete", "-f", str(manifest), "--wait=true", timeout=90)


def test_startup_probe_gates_readiness_and_kills_at_failure_threshold(
        kube: Kube, tmp_path: Path) -> None:
    """kubelet's startupProbe (an exec probe here, run as the lab's kubectl exec runs a
    command): while it fails the container is not Ready though its readiness probe would
    pass, each failure a Warning `Unhealthy` "Startup probe failed: <the command's
    output>", and at failureThreshold it is killed ("Container main failed startup probe,
    will be restarted") and restarted; once it succeeds, readiness takes over (it was:
    startupProbe not read, exec probes ignored, the pod Ready at once)."""
    flag = tmp_path / "started"
    manifest = tmp_path / "slowstart.yaml"
    manifest.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "slowstart", "namespace": "demo-to",
                     "annotations": {"sidecar.istio.io/inject": "false"}},
        "spec": {"containers": [{
            "name": "main", "image": "local/sleep", "command": ["sleep", "600"],
            "startupProbe": {"exec": {"command": ["cat", str(flag)]}, "periodSeconds": 1,
                             "failureThreshold": 2},
            "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]}}))
    applied = kube.kubectl("apply", "-f", str(manifest))
    assert "unknown field" not in applied.stderr, applied.stderr
    try:
        _, described = _described_once(
            kube, "slowstart", r"Restart Count:\s+[1-9](?s:.*)Killing\s+")
        events = described[described.index("\nEvents:"):].splitlines()
        unhealthy = [line for line in events if "Unhealthy" in line]
        assert len(unhealthy) == 1 and unhealthy[0].split()[:2] == ["Warning", "Unhealthy"]
        assert re.search(rf"kubelet\s+Startup probe failed: cat: {re.escape(str(flag))}: No "
                         r"such file or directory$", unhealthy[0]), described
        killing = [line for line in events if "Killing" in line]
        assert len(killing) == 1 and killing[0].split()[:2] == ["Normal", "Killing"]
        assert killing[0].endswith("Container main failed startup probe, will be restarted")
        assert re.search(r"\n\s+Ready:\s+False", described), described
        assert re.search(r"\n\s+Ready\s+False", described), described  # the condition

        def started() -> bool | None:
            pod = json.loads(kube.kubectl("get", "pod", "slowstart", "-n", "demo-to", "-o",
                                          "json").stdout)
            return (pod["status"].get("containerStatuses") or [{}])[0].get("started")

        assert started() is False  # containerStatuses[].started: not past its startupProbe

        flag.touch()  # the next run's startup probe succeeds: readiness (exec true) follows
        kube.kubectl("wait", "-n", "demo-to", "pod/slowstart", "--for=condition=Ready",
                     "--timeout=60s", timeout=90)
        assert started() is True
    finally:
        kube.kubectl("delete", "pod", "-n", "demo-to", "slowstart", "--wait=true", timeout=90)


def _sleeper(name: str, replicas: int = 1, **spec: Any) -> str:
    """A Deployment of one sleeping container without a sidecar (quick to start)."""
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "demo-from"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}, "annotations": {
                     "sidecar.istio.io/inject": "false"}},
                              "spec": {"containers": [{"name": "main", "image": "local/sleep",
                                                       "command": ["sleep", "600"]}]}},
                 **spec}})


def test_rollout_pause_holds_a_change_and_resume_rolls_it_out(
        kube: Kube, tmp_path: Path) -> None:
    """`kubectl rollout pause|resume` (spec.paused, refused with 422 before): while
    paused a template change makes no ReplicaSet and no pod, scaling still applies to the
    old ReplicaSet, Progressing reads Unknown DeploymentPaused, kubectl's rollout status
    waits on 0 updated replicas and its undo refuses; resumed, the change rolls out."""
    manifest = tmp_path / "pz.yaml"
    manifest.write_text(_sleeper("pz"))
    ns, deploy = ("-n", "demo-from"), "deployment/pz"

    def rs_names() -> list[str]:
        return sorted(kube.kubectl("get", "rs", *ns, "-l", "app=pz", "-o",
                                   "name").stdout.split())

    def pods() -> list[tuple[str, str]]:
        out = kube.kubectl("get", "pods", *ns, "-l", "app=pz", "-o", "jsonpath={range "
                           ".items[*]}{.metadata.name} {.metadata.labels.pod-template-hash}"
                           " {.metadata.deletionTimestamp}{'\\n'}{end}").stdout
        return sorted((p[0], p[1]) for p in (line.split() for line in out.splitlines())
                      if len(p) == 2)

    def progressing() -> tuple[str, str, str]:
        out = kube.kubectl("get", *ns, deploy, "-o", "jsonpath={range .status.conditions"
                           "[?(@.type=='Progressing')]}{.status}|{.reason}|{.message}"
                           "{end}").stdout
        status, reason, message = out.split("|")
        return status, reason, message

    def wait_for(what: Any, check: Any, timeout: float = 30) -> Any:
        end = time.monotonic() + timeout
        while True:
            got = what()
            if check(got) or time.monotonic() > end:
                return got
            time.sleep(0.3)

    kube.kubectl("apply", "-f", str(manifest))
    try:
        kube.kubectl("rollout", "status", *ns, deploy, "--timeout", "60s", timeout=90)
        # a second revision, so that undo has one to go back to (with one, kubectl says
        # "no rollout history found" before it looks at spec.paused)
        kube.kubectl("set", "env", *ns, deploy, "V=a")
        kube.kubectl("rollout", "status", *ns, deploy, "--timeout", "60s", timeout=90)
        wait_for(pods, lambda p: len(p) == 1)
        before_rs, before_pods = rs_names(), pods()
        assert len(before_rs) == 2 and len(before_pods) == 1, (before_rs, before_pods)
        old = before_pods[0][1]
        assert kube.kubectl("rollout", "pause", *ns, deploy).stdout.strip() == \
            "deployment.apps/pz paused"
        assert wait_for(progressing, lambda c: c[1] == "DeploymentPaused") == (
            "Unknown", "DeploymentPaused", "Deployment is paused")
        kube.kubectl("set", "env", *ns, deploy, "V=b")
        time.sleep(3)  # several of the controller's passes
        assert rs_names() == before_rs and pods() == before_pods
        assert kube.kubectl("get", *ns, deploy, "-o",
                            "jsonpath={.status.updatedReplicas}").stdout in ("", "0")
        # scaling applies while paused: to the old template's ReplicaSet
        kube.kubectl("scale", *ns, deploy, "--replicas=2")
        scaled = wait_for(pods, lambda p: len(p) == 2)
        assert [h for _, h in scaled] == [old, old], scaled
        # settled (both Ready and available), so kubectl's and remora's reads below agree
        assert wait_for(lambda: kube.kubectl("get", *ns, deploy, "-o", "jsonpath="
                                             "{.status.availableReplicas}").stdout,
                        lambda a: a == "2") == "2"
        assert rs_names() == before_rs
        # kubectl's rollout status (rollout_status.go): no new replica updated yet
        status = kube.kubectl("rollout", "status", *ns, deploy, "--watch=false")
        assert status.stdout.strip() == ('Waiting for deployment "pz" rollout to finish: '
                                         "0 out of 2 new replicas have been updated..."), \
            status.stdout
        # kubectl's undo (polymorphichelpers/rollback.go) refuses a paused Deployment
        undo = kube.kubectl("rollout", "undo", *ns, deploy, check=False)
        assert undo.returncode == 1, (undo.stdout, undo.stderr)
        assert "you cannot rollback a paused deployment; resume it first with " \
            "'kubectl rollout resume" in undo.stderr, undo.stderr
        # remora's describe reads as kubectl's: no NewReplicaSet, the old one kept
        def section(text: str) -> str:
            return text[text.index("\nConditions:") + 1:text.index("\nEvents:") + 1]

        def described() -> tuple[str, str]:
            ours = kube.lab.remora("describe", "deploy", "pz", *ns)
            assert ours.returncode == 0, ours.stderr
            return section(ours.stdout), section(kube.kubectl("describe", *ns,
                                                              deploy).stdout)

        # two reads a moment apart: the same once no pass of the controller falls between
        ours, theirs = wait_for(described, lambda both: both[0] == both[1], timeout=10)
        assert ours == theirs, (ours, theirs)
        assert "NewReplicaSet:   <none>" in theirs, theirs
        assert re.search(r"Progressing\s+Unknown\s+DeploymentPaused", theirs), theirs
        assert kube.kubectl("rollout", "resume", *ns, deploy).stdout.strip() == \
            "deployment.apps/pz resumed"
        kube.kubectl("rollout", "status", *ns, deploy, "--timeout", "60s", timeout=90)
        after = wait_for(pods, lambda p: len(p) == 2 and old not in {h for _, h in p})
        assert len(after) == 2 and old not in {h for _, h in after}, after
        assert progressing()[1] == "NewReplicaSetAvailable"
        lines = kube.kubectl("rollout", "history", *ns, deploy).stdout.splitlines()
        assert [line.split()[0] for line in lines[2:] if line.strip()] == ["1", "2", "3"], \
            lines
    finally:
        kube.kubectl("delete", *ns, deploy, "--wait=true", timeout=90)


def test_min_ready_seconds_delays_availability_and_the_rollout(
        kube: Kube, tmp_path: Path) -> None:
    """spec.minReadySeconds (ignored before): a pod counts as available only that long
    after it became Ready, in availableReplicas and the Available condition, and the
    rolling update (maxUnavailable 0) keeps the old pod until the new one is available."""
    manifest = tmp_path / "mr.yaml"
    manifest.write_text(_sleeper("mr", minReadySeconds=5))
    ns, deploy = ("-n", "demo-from"), "deployment/mr"

    def sample() -> tuple[float, int, int, int]:
        out = kube.kubectl("get", *ns, deploy, "-o", "jsonpath={.status.readyReplicas}|"
                           "{.status.availableReplicas}|{.status.replicas}").stdout
        ready, available, total = (int(v or 0) for v in out.split("|"))
        return time.monotonic(), ready, available, total

    def watch(until: Any, timeout: float = 60) -> list[tuple[float, int, int, int]]:
        seen = [sample()]
        while not until(seen[-1]) and seen[-1][0] - seen[0][0] < timeout:
            time.sleep(0.3)
            seen.append(sample())
        return seen

    kube.kubectl("apply", "-f", str(manifest))
    try:
        assert kube.kubectl("get", *ns, deploy, "-o",
                            "jsonpath={.spec.minReadySeconds}").stdout == "5"
        def rs_available() -> str:
            return kube.kubectl("get", "rs", *ns, "-l", "app=mr", "-o", "jsonpath={.items[*]"
                                ".status.availableReplicas}").stdout

        seen = watch(lambda s: s[1] == 1)
        assert seen[-1][2] == 0, seen  # Ready, not yet available: so is its ReplicaSet
        assert rs_available() in ("", "0")
        seen += watch(lambda s: s[2] == 1)
        assert rs_available() == "1"
        first_ready = next(s[0] for s in seen if s[1] == 1)
        first_available = next(s[0] for s in seen if s[2] == 1)
        # the timing is noisy on a shared machine, but never shorter than the wait
        assert first_available - first_ready >= 4, seen
        # a template change: the old pod stays while the new one is Ready, not available
        kube.kubectl("set", "env", *ns, deploy, "V=b")
        rolled = watch(lambda s: s[1] == 2)
        two_ready = rolled[-1][0]
        assert rolled[-1][3] == 2, rolled
        done = watch(lambda s: s[3] == 1)
        assert done[-1][3] == 1 and done[-1][0] - two_ready >= 4, (rolled, done)
        kube.kubectl("rollout", "status", *ns, deploy, "--timeout", "60s", timeout=90)
        available = kube.kubectl("get", *ns, deploy, "-o", "jsonpath={.status.conditions["
                                 "?(@.type=='Available')].status}").stdout
        assert available == "True"
    finally:
        kube.kubectl("delete", *ns, deploy, "--wait=true", timeout=90)
