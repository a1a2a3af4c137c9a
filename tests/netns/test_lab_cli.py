"""The lab's kubectl-like CLI against a real node daemon (isolated: own state dir and
namespace prefix): up/apply/get/describe/logs/exec/delete/down, and bad input that
leaves nothing half-applied."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remora.lab.manifests import seed_text
from remora.lab.testing import TempLab

pytestmark = pytest.mark.netns
RE = [sys.executable, "-m", "remora"]

NAMESPACE = textwrap.dedent("""\
    apiVersion: v1
    kind: Namespace
    metadata:
      name: demo-to
      labels:
        istio-injection: enabled
    """)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[TempLab]:
    with TempLab() as lab:
        yield lab
        lab.close()
        assert lab.leftovers() == []


def ok(lab: TempLab, *args: str, stdin: str | None = None) -> str:
    proc = lab.remora(*args, stdin=stdin)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def test_up_get_describe_logs_exec_delete(lab: TempLab, tmp_path: Path) -> None:
    (tmp_path / "ns.yaml").write_text(NAMESPACE)
    (tmp_path / "server.yaml").write_text(seed_text("server.yaml"))
    out = ok(lab, *lab.up_args(), "-f", str(tmp_path), "--wait", "--timeout", "30")
    assert "lab started" in out
    assert "deployment/simple-server created" in out
    assert "service/simple-server-svc created" in out
    assert re.search(r"demo-to/simple-server-\S+  2/2  Running  10\.20\.0\.\d+", out)

    pods = json.loads(ok(lab, "get", "pods", "-n", "demo-to", "-o", "json"))
    assert pods["kind"] == "List" and len(pods["items"]) == 1
    pod = pods["items"][0]
    name = pod["metadata"]["name"]
    # the injector's istio-init args, exactly as the seed's jq listing shows them
    init = pod["spec"]["initContainers"][0]
    assert init["name"] == "istio-init"
    assert init["args"][:19] == ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337",
                                 "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d",
                                 "15090,15021,15020", "--log_output_level=default:info"][:19]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["demo", "istio-proxy"]

    table = ok(lab, "get", "po", "-A", "-o", "wide").splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE",
                                "IP", "NODE"]
    assert re.match(rf"demo-to\s+{name}\s+2/2\s+Running\s+0\s+\d+s\s+10\.20\.0\.\d+\s+"
                    rf"{lab.prefix}node-1$", table[1])
    assert ok(lab, "get", "po", "-n", "demo-to", "-l", "web=client") == ""
    assert name in ok(lab, "get", "po", "-n", "demo-to", "-l", "web=server")
    assert "simple-server-svc" in ok(lab, "get", "svc", "-n", "demo-to")
    assert re.search(r"simple-server\s+1/1\s+1\s+1", ok(lab, "get", "deploy", "-n", "demo-to"))
    assert re.search(r"demo-to\s+Active", ok(lab, "get", "ns"))
    both = ok(lab, "get", "deploy,po", "-n", "demo-to")
    assert "deployment.apps/simple-server   1/1" in both and f"pod/{name}   2/2" in both
    yaml_out = ok(lab, "get", "svc", "simple-server-svc", "-n", "demo-to", "-o", "yaml")
    assert yaml_out.startswith("apiVersion: v1\nkind: Service")

    described = ok(lab, "describe", "pod", name, "-n", "demo-to")
    assert "Controlled By:    Deployment/simple-server" in described
    assert "istio-init:" in described and "Exit Code:    0" in described
    assert re.search(r"Endpoints:\s+10\.20\.0\.\d+:18080",
                     ok(lab, "describe", "svc", "simple-server-svc", "-n", "demo-to"))

    assert "capture rules applied" in ok(lab, "logs", name, "-n", "demo-to", "-c", "istio-init")
    nat = ok(lab, "exec", "-n", "demo-to", name, "--", "iptables", "-t", "nat", "-L", "-v")
    assert "ISTIO_IN_REDIRECT" in nat and "redir ports 15006" in nat

    # the seed's route into the pod: container IDs from `get -o json`, the PID (its
    # `docker inspect -f {{.State.Pid}}`) and `nsenter --target PID -n`
    got = json.loads(ok(lab, "get", "po", name, "-n", "demo-to", "-o", "json"))
    statuses = {c["name"]: c for c in got["status"]["containerStatuses"]}
    assert set(statuses) == {"demo", "istio-proxy"}
    assert all(re.fullmatch(r"remora://[0-9a-f]{64}", c["containerID"])
               for c in statuses.values())
    assert got["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert got["status"]["hostIP"] and got["spec"]["nodeName"] == f"{lab.prefix}node-1"
    pid = statuses["demo"]["remora"]["pid"]
    # the container's own environment, as kubelet execs: not the CLI's (REMORA_STATE_DIR)
    env = ok(lab, "exec", "-n", "demo-to", name, "-c", "istio-proxy", "--", "env").splitlines()
    assert f"HOSTNAME={name}" in env and "POD_NAMESPACE=demo-to" in env
    assert not [line for line in env if line.startswith("REMORA_STATE_DIR=")]
    pod_netns = ok(lab, "exec", "-n", "demo-to", name, "--", "readlink", "/proc/self/ns/net")
    assert os.readlink(f"/proc/{pid}/ns/net") == pod_netns.strip()
    entered = subprocess.run(["nsenter", "--target", str(pid), "-n", "iptables", "-t", "nat",
                              "-S", "ISTIO_IN_REDIRECT"], capture_output=True, text=True,
                             check=True)
    assert "--to-ports 15006" in entered.stdout
    assert f"Container ID:   {statuses['demo']['containerID']}" in described
    bad = lab.remora("logs", name, "-n", "demo-to", "-c", "nope")
    assert bad.returncode != 0 and "container 'nope' is not valid" in bad.stderr

    listeners = ok(lab, "proxy-config", "listener", f"{name}.demo-to", "--port", "15006")
    assert "Cluster: inbound|18080||" in listeners
    dump = json.loads(ok(lab, "proxy-config", "all", name, "-n", "demo-to", "-o", "json"))
    assert dump["configs"]

    deleted = ok(lab, "delete", "-f", str(tmp_path / "server.yaml"))
    assert "deployment/simple-server deleted" in deleted
    assert "service/simple-server-svc deleted" in deleted
    again = lab.remora("delete", "svc", "simple-server-svc", "-n", "demo-to")
    assert again.returncode == 1 and "not found" in again.stderr
    deadline = time.monotonic() + 15
    while ok(lab, "get", "po", "-n", "demo-to") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ok(lab, "get", "po", "-n", "demo-to") == ""
    down = ok(lab, "down")
    assert "lab removed" in down
    assert lab.leftovers() == []


def test_bad_input_is_refused_before_anything_changes(lab: TempLab, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(seed_text("server.yaml").replace("port: 18080", "port: 99999", 1))
    proc = lab.remora(*lab.up_args(), "-f", str(broken))
    assert proc.returncode != 0
    assert "remora: error: Service/demo-to/simple-server-svc" in proc.stderr
    assert "spec.ports[0].port: 99999 is out of range" in proc.stderr
    assert not (lab.state_dir / "node.sock").exists()  # refused before the lab started

    ok(lab, *lab.up_args(), "-f", "-", stdin=NAMESPACE)
    # an image nobody can run: the whole batch is refused, the Service too
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(seed_text("server.yaml").replace("vasth/simple-server",
                                                        "example/unknown:1.0"))
    proc = lab.remora("apply", "-f", str(unknown))
    assert proc.returncode != 0
    assert "image 'example/unknown:1.0' is not in the image map" in proc.stderr
    assert "--image-map" in proc.stderr
    # a bad capture annotation: named with the object, nothing applied
    annotated = tmp_path / "annotated.yaml"
    annotated.write_text(seed_text("server.yaml").replace(
        "      labels:\n        web: server",
        "      labels:\n        web: server\n      annotations:\n"
        "        sidecar.istio.io/interceptionMode: tproxy", 1))
    proc = lab.remora("apply", "-f", str(annotated))
    assert proc.returncode != 0
    assert "Deployment/demo-to/simple-server" in proc.stderr and "tproxy" in proc.stderr
    assert ok(lab, "get", "svc", "-n", "demo-to") == ""
    assert ok(lab, "get", "deploy", "-n", "demo-to") == ""
    # unknown kinds are warnings naming them; a field Kubernetes does not know is refused
    # (kubectl's --validate=strict; nothing applied) or, under --validate=warn, a warning
    # naming it; the rest is applied
    extra = tmp_path / "extra.yaml"
    extra.write_text(NAMESPACE.replace("name: demo-to", "name: demo-to\n  frobnicate: 1")
                     + "---\napiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n"
                     "metadata: {name: vs, namespace: demo-to}\n")
    proc = lab.remora("apply", "-f", str(extra))
    assert proc.returncode == 1, proc.stderr
    assert 'Namespace/demo-to not applied: Namespace in version "v1" cannot be handled as a ' \
        'Namespace: strict decoding error: unknown field "metadata.frobnicate"' in proc.stderr
    proc = lab.remora("apply", "-f", str(extra), "--validate=warn")
    assert proc.returncode == 0, proc.stderr
    assert "Warning: " in proc.stderr and 'unknown field "metadata.frobnicate"' in proc.stderr
    assert "unknown kind networking.istio.io/v1beta1/VirtualService" in proc.stderr
    assert "namespace/demo-to unchanged" in proc.stdout
    proc = lab.remora("get", "widgets")
    assert proc.returncode == 2 and "unknown resource type 'widgets'" in proc.stderr


def test_a_crashing_sidecar_config_is_reported_with_its_error(lab: TempLab,
                                                             tmp_path: Path) -> None:
    """An Envoy field remora proxy does not implement: the container's own one-line
    error (naming the field) is what `apply --wait` reports, without waiting it out."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"admin": {"address": {"socket_address": {
        "address": "127.0.0.1", "port_value": 15000}}}, "frobnicate": True}))
    images = tmp_path / "images.yaml"
    images.write_text(f"images:\n  example/proxy: [python3, -m, remora, proxy, -c, {bad}]\n")
    ok(lab, *lab.up_args(), "--image-map", str(images))
    pod = textwrap.dedent("""\
        apiVersion: v1
        kind: Pod
        metadata:
          name: broken
        spec:
          containers:
          - name: proxy
            image: example/proxy
            readinessProbe:
              tcpSocket:
                port: 15000
        """)
    proc = lab.remora("apply", "-f", "-", "--wait", "--timeout", "30", stdin=pod)
    assert proc.returncode != 0
    assert "pod default/broken: container proxy keeps failing" in proc.stderr
    assert "frobnicate" in proc.stderr


@pytest.mark.parametrize("sidecar", ["remora", pytest.param("envoy", marks=pytest.mark.envoy)])
def test_a_restarted_daemon_adopts_meshed_pods(lab: TempLab, tmp_path: Path,
                                               sidecar: str) -> None:
    (tmp_path / "ns.yaml").write_text(NAMESPACE)
    (tmp_path / "server.yaml").write_text(seed_text("server.yaml"))
    ok(lab, *lab.up_args(), "--sidecar", sidecar, "-f", str(tmp_path), "--wait")
    before = json.loads(ok(lab, "get", "po", "-n", "demo-to", "-o", "json"))["items"][0]
    pid = int((lab.state_dir / "daemon.pid").read_text())
    os.kill(pid, signal.SIGTERM)  # the daemon our `up` started
    deadline = time.monotonic() + 10
    while (lab.state_dir / "node.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    out = ok(lab, *lab.up_args())  # flags differ from the first up: the saved ones win
    assert f"sidecar {sidecar}" in out
    time.sleep(1.5)  # a few reconcile passes
    after = json.loads(ok(lab, "get", "po", "-n", "demo-to", "-o", "json"))["items"][0]
    assert after["metadata"]["name"] == before["metadata"]["name"]
    assert after["status"]["ready"] is True
    assert [c["restartCount"] for c in after["status"]["containerStatuses"]] == [0, 0]
    pids = [c["remora"]["pid"] for c in before["status"]["containerStatuses"]]
    assert [c["remora"]["pid"] for c in after["status"]["containerStatuses"]] == pids


def test_a_missing_namespace_is_refused_and_made_with_create_and_label(
        lab: TempLab, tmp_path: Path) -> None:
    """Kubernetes refuses a namespaced object whose namespace does not exist; so does the
    lab (a namespace made on the fly would lack istio-injection: silently no sidecars)."""
    server = tmp_path / "server.yaml"
    server.write_text(seed_text("server.yaml"))
    proc = lab.remora(*lab.up_args(), "-f", str(server))
    assert proc.returncode == 1
    assert ('namespaces "demo-to" not found (needed by deployment/simple-server, '
            "service/simple-server-svc; nothing was applied)") in proc.stderr
    assert "`remora create ns demo-to`" in proc.stderr
    assert "`remora label ns demo-to istio-injection=enabled`" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (lab.state_dir / "node.sock").exists()  # refused before the lab started

    ok(lab, *lab.up_args())
    proc = lab.remora("apply", "-f", str(server))
    assert proc.returncode == 1 and 'namespaces "demo-to" not found' in proc.stderr
    assert ok(lab, "get", "deploy,svc", "-A") == ""  # nothing half-applied

    assert ok(lab, "create", "ns", "demo-to") == "namespace/demo-to created\n"
    again = lab.remora("create", "namespace", "demo-to")
    assert again.returncode == 1 and 'namespaces "demo-to" already exists' in again.stderr
    assert ok(lab, "label", "ns", "demo-to", "istio-injection=enabled") == \
        "namespace/demo-to labeled\n"
    assert ok(lab, "label", "namespace/demo-to", "istio-injection=enabled") == \
        "namespace/demo-to not labeled\n"
    clash = lab.remora("label", "ns", "demo-to", "istio-injection=disabled")
    assert clash.returncode == 1
    assert ("'istio-injection' already has a value (enabled), and --overwrite is false"
            in clash.stderr)
    assert ok(lab, "label", "ns", "demo-to", "team=a") == "namespace/demo-to labeled\n"
    assert ok(lab, "label", "ns", "demo-to", "team-") == "namespace/demo-to labeled\n"
    shown = json.loads(ok(lab, "get", "ns", "demo-to", "-o", "json"))
    assert shown["metadata"]["labels"] == {"istio-injection": "enabled"}

    out = ok(lab, "apply", "-f", str(server), "--wait", "--timeout", "40")
    assert "deployment/simple-server created" in out
    pod = json.loads(ok(lab, "get", "po", "-n", "demo-to", "-o", "json"))["items"][0]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["demo", "istio-proxy"]


def test_asking_for_another_sidecar_than_the_running_lab_is_refused(lab: TempLab) -> None:
    """`remora demo --sidecar envoy` on a lab started with remora proxy never runs the
    story on remora proxy: it exits non-zero before anything changes, with the fix."""
    out = ok(lab, *lab.up_args(), "--sidecar", "remora")
    assert "sidecar remora" in out
    for command in (["demo", "--sidecar", "envoy", "--prefix", lab.prefix],
                    [*lab.up_args(), "--sidecar", "envoy"]):
        proc = lab.remora(*command)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        line = proc.stderr.strip()
        assert len(line.splitlines()) == 1
        assert "runs with sidecar remora (not envoy)" in line
        # no sudo (it resets REMORA_STATE_DIR): the lab's own state dir, named
        assert f"`remora down --state-dir {lab.state_dir}` first" in line
    assert "demo-to" not in ok(lab, "get", "ns")


def test_other_nodes_or_prefix_and_bad_flag_combinations_are_refused_first(
        lab: TempLab) -> None:
    """Refused before anything starts: --nodes 0, --no-mtls --authz (no lab, no namespace
    made); on a running lab, --nodes/--prefix other than its own, as --sidecar is."""
    for args, rc in ((["up", "--nodes", "0", "--prefix", lab.prefix], 2),
                     (["demo", "--no-mtls", "--authz", "--prefix", lab.prefix], 2)):
        proc = lab.remora(*args)
        assert proc.returncode == rc, proc.stdout + proc.stderr
        assert not lab.state_dir.exists() and lab.leftovers() == [], args
    ok(lab, *lab.up_args())
    # the namespaces every cluster has (docs/lab.md), with RFC 3339 times, no generation
    listed = ok(lab, "get", "ns").split()
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= set(listed)
    default = json.loads(ok(lab, "get", "ns", "default", "-o", "json"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
                        default["metadata"]["creationTimestamp"])
    ok(lab, "create", "ns", "lf-made")
    made = json.loads(ok(lab, "get", "ns", "lf-made", "-o", "json"))["metadata"]
    assert "generation" not in made and made["creationTimestamp"].endswith("Z")
    for args in ([*lab.up_args(), "--nodes", "3"], ["up", "--prefix", "zz-"],
                 ["demo", "--prefix", "zz-"]):
        proc = lab.remora(*args)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "settings apply only when a lab starts" in proc.stderr
        assert f"`remora down --state-dir {lab.state_dir}` first" in proc.stderr
    assert "1 node(s)" in ok(lab, *lab.up_args(), "--nodes", "1")  # the same: fine


TWIN = textwrap.dedent("""\
    apiVersion: v1
    kind: Pod
    metadata: {name: twin, namespace: default}
    spec:
      containers:
      - {name: a, image: python, command: [python3, -m, http.server, "18081"]}
      - {name: b, image: python, command: [python3, -m, http.server, "18081"]}
    """)


def test_wait_is_about_the_batch_and_a_crashing_twin_is_never_ready(lab: TempLab) -> None:
    """Two containers on one port: the second dies (EADDRINUSE) at once; --wait reports
    its error, never "all pods Ready". A crashing pod outside a later batch does not fail
    that batch's wait (docs/lab.md)."""
    ok(lab, *lab.up_args())
    proc = lab.remora("apply", "-f", "-", "--wait", "--timeout", "20", stdin=TWIN)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "all pods Ready" not in proc.stdout
    assert "keeps failing" in proc.stderr and "Address already in use" in proc.stderr
    sleeper = TWIN.replace("twin", "sleeper").replace(
        'python, command: [python3, -m, http.server, "18081"]', 'busybox, command: [sleep, "60"]')
    out = ok(lab, "apply", "-f", "-", "--wait", "--timeout", "20", stdin=sleeper)
    assert "all pods Ready" in out and "twin" not in out
    # a Service with one port twice: refused as the API server does, nothing applied
    dup = ("apiVersion: v1\nkind: Service\nmetadata: {name: dup}\nspec:\n  ports: "
           "[{port: 80, name: a}, {port: 80, name: b}]\n")
    proc = lab.remora("apply", "-f", "-", stdin=dup)
    assert proc.returncode == 1 and "spec.ports[1]: Duplicate value" in proc.stderr
    assert "dup" not in ok(lab, "get", "svc")
    # -p for a container that never restarted: kubectl's error, exit 1 (not empty, 0)
    proc = lab.remora("logs", "sleeper", "-c", "b", "-p")
    assert proc.returncode == 1
    assert 'previous terminated container "b" in pod "sleeper" not found' in proc.stderr


def test_a_refused_first_start_leaves_no_lab_to_adopt(lab: TempLab) -> None:
    """A second lab asking for a running lab's prefix is refused by its daemon; its state
    dir then keeps only daemon.log (which the error names), so a start with its own prefix
    is a fresh lab, not one "adopting the pods still running" (it was: the refused
    daemon's empty store stayed and made the next start an adoption)."""
    ok(lab, *lab.up_args())
    with TempLab() as other:
        refused = other.remora("up", "--prefix", lab.prefix)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"another lab uses the prefix {lab.prefix!r}" in refused.stderr
        assert sorted(p.name for p in other.state_dir.iterdir()) == ["daemon.log"]
        started = ok(other, *other.up_args())
        assert started.startswith("lab started: "), started
        other.close()
        assert other.leftovers() == []
    assert lab.remora("get", "ns").returncode == 0  # the first lab is untouched


def test_down_returns_once_the_daemon_has_exited(lab: TempLab) -> None:
    """`remora down` returns when what it stopped is gone, the node daemon included (it
    replies to `down`, then closes its API and exits): `remora down && remora up` meets
    no old daemon, and the new daemon's socket and pid file are its own (the old one's
    exit removed them when it came after the new start)."""
    from remora.node import process

    for _ in range(3):
        ok(lab, *lab.up_args())
        daemon = int((lab.state_dir / "daemon.pid").read_text())
        ticks = process.start_ticks(daemon)
        assert ticks is not None
        assert ok(lab, "down").startswith("lab removed")
        assert not process.is_alive(daemon, ticks), \
            Path(f"/proc/{daemon}/stat").read_text().split()[2]
    ok(lab, *lab.up_args())
    again = subprocess.run(["sh", "-c", f"{' '.join(RE)} down && {' '.join(RE)} up --prefix "
                            f"{lab.prefix}"], capture_output=True, text=True, env=lab.env,
                           timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    daemon = int((lab.state_dir / "daemon.pid").read_text())
    assert f"daemon pid {daemon}" in again.stdout
    assert (lab.state_dir / "node.sock").exists()
    assert ok(lab, "get", "ns", "-o", "name").startswith("namespace/")


TYPO = textwrap.dedent("""\
    apiVersion: v1
    kind: Namespace
    metadata: {name: NS}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web, namespace: NS}
    spec:
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}, annotations: {sidecar.istio.io/inject: "false"}}
        spec:
          containers:
          - {name: main, image: local/sleep, command: [sleep, "600"], imagePullPolicyy: Always}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: NS}
    spec: {selector: {app: web}, ports: [{port: 80}]}
    """)


def test_apply_refuses_an_unknown_field_as_kubectl_does(lab: TempLab, tmp_path: Path) -> None:
    """`kubectl apply -f` (1.32, --validate=strict) refuses an object with a field
    Kubernetes' schema lacks, in the apiserver's words, and applies the file's other
    objects (exit 1); `remora apply -f` refuses it in the same words, naming the file, the
    object and the field, and with it the whole batch (all or nothing); --validate=
    warn|ignore apply it without the field, as kubectl's."""
    ok(lab, *lab.up_args())
    theirs, ours = tmp_path / "theirs.yaml", tmp_path / "ours.yaml"
    theirs.write_text(TYPO.replace("NS", "vk"))
    ours.write_text(TYPO.replace("NS", "vr"))
    mine = lab.remora("apply", "-f", str(ours))
    assert mine.returncode == 1, mine.stdout + mine.stderr
    # all or nothing: the Namespace and Service are not applied either (kubectl does)
    assert mine.stdout == ""
    line, last = mine.stderr.splitlines()
    assert last == "remora: nothing applied: 1 object(s) refused by --validate=strict"
    assert not re.search(r"^vr\s", ok(lab, "get", "ns"), re.M)
    message = ('Deployment in version "v1" cannot be handled as a Deployment: strict decoding '
               'error: unknown field "spec.template.spec.containers[0].imagePullPolicyy"')
    assert line.startswith(f"remora: error: {ours}: Deployment/vr/web not applied: "
                           f"{message} (fix: correct or remove the field"), line
    if shutil.which("kubectl"):
        env = {**os.environ, "KUBECONFIG": ok(lab, "kubeconfig").strip(),
               "KUBECACHEDIR": str(tmp_path / "cache")}
        kubectl = subprocess.run(["kubectl", "apply", "-f", str(theirs)], capture_output=True,
                                 text=True, env=env, timeout=60, check=False)
        assert kubectl.returncode == 1
        assert kubectl.stdout.splitlines() == ["namespace/vk created", "service/web created"]
        assert kubectl.stderr == ('Error from server (BadRequest): error when creating '
                                  f'"{theirs}": {message}\n')
    # warn: applied without the field, the warning naming it; ignore: silently
    warned = lab.remora("apply", "-f", str(ours), "--validate=warn")
    assert warned.returncode == 0, warned.stderr
    assert "deployment/web created" in warned.stdout
    assert warned.stderr == (f'Warning: {ours}: Deployment/vr/web: unknown field '
                             '"spec.template.spec.containers[0].imagePullPolicyy"\n')
    ignored = lab.remora("apply", "-f", str(ours), "--validate=false")
    assert ignored.returncode == 0 and ignored.stderr == "", ignored.stderr
    # what `get -o yaml` prints applies back under strict (its status is not checked)
    back = tmp_path / "back.yaml"
    back.write_text(ok(lab, "get", "deploy,svc", "-n", "vr", "-o", "yaml"))
    again = lab.remora("apply", "-f", str(back))
    assert again.returncode == 0, again.stderr
