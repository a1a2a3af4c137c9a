"""The lab's Kubernetes API judged by clients no one here wrote: the machine's `kubectl`
(1.32) and the official `kubernetes` Python client, against one real lab (one daemon for
the whole module, its own state dir and prefix).

The seed's story the kubectl way: apply the seed's manifests unchanged, get -A -o wide,
logs -l / -c istio-proxy / -f, exec iptables, patch to TPROXY and rollout status, the
app then sees the client's address, delete. The remora CLI reads the same store
throughout. Errors come back as Kubernetes' Status objects.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from remora.lab.testing import TempLab
from tests.datafiles import data_path

pytestmark = pytest.mark.netns

KUBECTL = shutil.which("kubectl")
NAMESPACES = """\
apiVersion: v1
kind: Namespace
metadata:
  name: demo-to
  labels:
    istio-injection: enabled
---
apiVersion: v1
kind: Namespace
metadata:
  name: demo-from
  labels:
    istio-injection: enabled
"""
TPROXY = ('{"spec":{"template":{"metadata":{"annotations":'
          '{"sidecar.istio.io/interceptionMode":"TPROXY"}}}}}')


class Kube:
    def __init__(self, lab: TempLab, kubeconfig: Path, cache: Path) -> None:
        self.lab = lab
        self.kubeconfig = kubeconfig
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig),
                    # kubectl's discovery cache, away from the user's ~/.kube/cache
                    "KUBECACHEDIR": str(cache)}
        self.config = yaml.safe_load(kubeconfig.read_text())

    def kubectl(self, *args: str, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        proc = subprocess.run([KUBECTL, *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout, check=False)
        if check:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc

    def raw(self, method: str, path: str, headers: dict[str, str] | None = None,
            token: bool = True) -> tuple[int, dict[str, Any]]:
        """A request of our own, for what kubectl does not send (bad paths, SPDY)."""
        cluster = self.config["clusters"][0]["cluster"]
        ctx = ssl.create_default_context(cadata=base64.b64decode(
            cluster["certificate-authority-data"]).decode())
        req = urllib.request.Request(cluster["server"] + path, method=method,
                                     headers=dict(headers or {}))
        if token:
            req.add_header("Authorization", f"Bearer {self.config['users'][0]['user']['token']}")
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    if KUBECTL is None:
        pytest.skip("needs kubectl on PATH")
    with TempLab() as lab:
        up = lab.remora(*lab.up_args())
        assert up.returncode == 0, up.stderr
        path = lab.remora("kubeconfig")
        assert path.returncode == 0, path.stderr
        kubeconfig = Path(path.stdout.strip())
        assert kubeconfig == lab.state_dir / "kubeconfig"
        assert oct(kubeconfig.stat().st_mode & 0o777) == "0o600"  # it holds the token
        yield Kube(lab, kubeconfig, tmp_path_factory.mktemp("kube-cache"))
        lab.close()
        assert lab.leftovers() == []


def server_pods(kube: Kube) -> list[str]:
    """The server's pods that are not terminating."""
    items = json.loads(kube.kubectl("get", "pods", "-n", "demo-to", "-l", "web=server",
                                    "-o", "json").stdout)["items"]
    return [p["metadata"]["name"] for p in items if "deletionTimestamp" not in p["metadata"]]


def server_pod(kube: Kube) -> str:
    names = eventually(lambda: (n := server_pods(kube)) and len(n) == 1 and n)
    assert names and len(names) == 1, server_pods(kube)
    return str(names[0])


def eventually(fn: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.3)


def test_apply_seed_unchanged_then_get_wide(kube: Kube, tmp_path: Path) -> None:
    (tmp_path / "ns.yaml").write_text(NAMESPACES)
    out = kube.kubectl("apply", "-f", str(tmp_path / "ns.yaml")).stdout
    assert "namespace/demo-to created" in out and "namespace/demo-from created" in out
    out = kube.kubectl("apply", "-f", str(data_path("resources", "server.yaml")),
                       "-f", str(data_path("resources", "client.yaml"))).stdout
    assert "deployment.apps/simple-server created" in out
    assert "service/simple-server-svc created" in out
    assert "deployment.apps/simple-client created" in out
    for ns, name in (("demo-to", "simple-server"), ("demo-from", "simple-client")):
        rollout = kube.kubectl("rollout", "status", "-n", ns, f"deployment/{name}",
                               "--timeout", "60s", timeout=90).stdout
        assert f'deployment "{name}" successfully rolled out' in rollout
    # applying the same files again changes nothing (client-side apply's 3-way patch)
    again = kube.kubectl("apply", "-f", str(data_path("resources", "server.yaml"))).stdout
    assert "deployment.apps/simple-server unchanged" in again
    assert "service/simple-server-svc unchanged" in again
    # kubectl diff: a server-side dry run, compared with the live object
    assert kube.kubectl("diff", "-f", str(data_path("resources", "server.yaml")),
                        check=False).returncode == 0
    moved = tmp_path / "moved.yaml"
    moved.write_text(data_path("resources", "server.yaml").read_text().replace(
        "  - port: 18080", "  - port: 18081", 1))
    diff = kube.kubectl("diff", "-f", str(moved), check=False)
    assert diff.returncode == 1, diff.stderr
    changed = [line for line in diff.stdout.splitlines()
               if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    # a Service has no metadata.generation (the apiserver's strategy sets none)
    assert changed == ["-  - port: 18080", "+  - port: 18081"], diff.stdout

    table = kube.kubectl("get", "pods", "-A", "-o", "wide").stdout.splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE",
                                "IP", "NODE"]
    rows = {r.split()[1]: r.split() for r in table[1:]}
    # the remora CLI reads the same store: the same pods, addresses and nodes
    mine = kube.lab.remora("get", "pods", "-A", "-o", "wide").stdout.splitlines()[1:]
    assert {r.split()[1]: (r.split()[0], r.split()[6], r.split()[7]) for r in mine} == {
        name: (r[0], r[6], r[7]) for name, r in rows.items()}
    assert all(r[2] == "2/2" and r[3] == "Running" for r in rows.values()), rows
    svc = kube.kubectl("get", "svc", "-n", "demo-to").stdout.splitlines()
    assert svc[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert re.match(r"simple-server-svc\s+ClusterIP\s+172\.16\.\d+\.\d+\s+<none>\s+18080/TCP",
                    svc[1])
    deploy = kube.kubectl("get", "deploy", "-n", "demo-to", "-o", "json").stdout
    spec = json.loads(deploy)["items"][0]
    assert "kubectl.kubernetes.io/last-applied-configuration" in spec["metadata"]["annotations"]
    ep = kube.kubectl("get", "endpoints", "simple-server-svc", "-n", "demo-to",
                      "-o", "jsonpath={.subsets[0].addresses[0].ip}").stdout
    assert ep == rows[server_pod(kube)][6]
    rs = kube.kubectl("get", "rs", "-n", "demo-to").stdout.splitlines()
    assert re.match(r"simple-server-[0-9a-f]+\s+1\s+1\s+1\s", rs[1]), rs


EDITED = """\
apiVersion: v1
kind: Namespace
metadata:
  name: kexplain
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: kexplain
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: server
        image: vasth/simple-server
        env: [{name: ONE, value: "1"}, {name: TWO, value: "2"}]
        ports: [{containerPort: 18080}, {containerPort: 9090}]
      - name: client
        image: vasth/simple-client
"""


def test_explain_and_apply_edits_from_the_served_schemas(kube: Kube, tmp_path: Path) -> None:
    """kubectl explain reads Kubernetes' schemas from the lab's /openapi/v3, and client-side
    apply computes its patch from their patch metadata: a container removed, an env var
    added and one removed, a port removed, and the lab rolls out what was meant."""
    containers = kube.kubectl("explain", "pod.spec.containers").stdout
    assert "FIELD: containers <[]Container>" in containers
    assert re.search(r"^  ports\t<\[\]ContainerPort>$", containers, re.M), containers
    strategy = kube.kubectl("explain", "deployment.spec.strategy", "--recursive").stdout
    assert strategy.split("FIELDS:")[1].split() == [
        "rollingUpdate", "<RollingUpdateDeployment>", "maxSurge", "<string>",
        "maxUnavailable", "<string>", "type", "<string>"], strategy
    manifest = tmp_path / "web.yaml"
    manifest.write_text(EDITED)
    kube.kubectl("apply", "-f", str(manifest))
    manifest.write_text(EDITED.split("      - name: client")[0].replace(
        '{name: ONE, value: "1"}, {name: TWO, value: "2"}',
        '{name: TWO, value: "2"}, {name: THREE, value: "3"}').replace(
        ", {containerPort: 9090}", ""))
    applied = kube.kubectl("apply", "-f", str(manifest), "-v=5")
    assert "deployment.apps/web configured" in applied.stdout
    # kubectl's patcher found the strategic body type and the schema (before, it logged
    # this and took its built-in types)
    assert "does not support strategic merge patch" not in applied.stderr
    rollout = kube.kubectl("rollout", "status", "-n", "kexplain", "deployment/web",
                           "--timeout", "60s", timeout=90).stdout
    assert 'deployment "web" successfully rolled out' in rollout
    deploy = json.loads(kube.kubectl("get", "deploy", "-n", "kexplain", "web", "-o",
                                     "json").stdout)
    spec = deploy["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["server"]
    assert spec["containers"][0]["env"] == [{"name": "TWO", "value": "2"},
                                            {"name": "THREE", "value": "3"}]
    assert spec["containers"][0]["ports"] == [{"containerPort": 18080, "protocol": "TCP"}]
    pods = eventually(lambda: [p for p in json.loads(kube.kubectl(
        "get", "pods", "-n", "kexplain", "-o", "json").stdout)["items"]
        if "deletionTimestamp" not in p["metadata"]] or None)
    assert pods and len(pods) == 1, pods
    assert [(c["name"], c.get("env")) for c in pods[0]["spec"]["containers"]] == [
        ("server", [{"name": "TWO", "value": "2"}, {"name": "THREE", "value": "3"}])]
    assert "unchanged" in kube.kubectl("apply", "-f", str(manifest)).stdout
    # validation stays the server's: kubectl sends fieldValidation=Strict, the lab refuses
    # a field Kubernetes' schema lacks as the apiserver does, and the deployment stays
    manifest.write_text(manifest.read_text().replace("ports:", "bogus: 1\n        ports:"))
    strict = kube.kubectl("apply", "--validate=strict", "-f", str(manifest), "-v=6",
                          check=False)
    assert strict.returncode == 1
    assert "fieldValidation=Strict" in strict.stderr
    assert ('strict decoding error: unknown field "spec.template.spec.containers[0].bogus"'
            in strict.stderr), strict.stderr
    kube.kubectl("apply", "--validate=false", "-f", str(manifest))  # Ignore: taken
    # what the lab serves passes strict validation (a fetched object written back)
    for what in ("deploy/web", f"pod/{pods[0]['metadata']['name']}"):
        fetched = tmp_path / "fetched.json"
        fetched.write_text(kube.kubectl("get", "-n", "kexplain", what, "-o", "json").stdout)
        kube.kubectl("replace", "-f", str(fetched))
    kube.kubectl("delete", "namespace", "kexplain", timeout=90)


def test_logs_by_label_sidecar_and_follow(kube: Kube) -> None:
    app = eventually(lambda: kube.kubectl("logs", "-n", "demo-to", "-l", "web=server").stdout)
    assert re.search(r"RemoteAddr=127\.0\.0\.6:\d+", app), app
    assert len(app.splitlines()) <= 10  # -l means --tail=10, as on a cluster
    proxy = eventually(lambda: "inbound|18080||" in kube.kubectl(
        "logs", "-n", "demo-to", "-l", "web=server", "-c", "istio-proxy").stdout)
    assert proxy
    one = kube.kubectl("logs", "-n", "demo-to", server_pod(kube), "--tail", "1").stdout
    assert len(one.splitlines()) == 1
    five = kube.kubectl("logs", "-n", "demo-to", server_pod(kube), "--limit-bytes=5").stdout
    whole = kube.kubectl("logs", "-n", "demo-to", server_pod(kube)).stdout
    assert len(five.encode()) == 5 and whole.startswith(five), (five, whole[:20])
    previous = kube.kubectl("logs", "-p", "-n", "demo-to", server_pod(kube), "-c",
                            "demo", check=False)
    assert previous.returncode == 1
    assert f'previous terminated container "demo" in pod "{server_pod(kube)}" not found' \
        in previous.stderr, previous.stderr
    for flag in ("--since=1m", "--timestamps"):
        refused = kube.kubectl("logs", flag, "-n", "demo-to", server_pod(kube), check=False)
        assert refused.returncode == 1 and "not supported by the lab" in refused.stderr
    # -f streams lines written after it started (the client calls once a second)
    assert KUBECTL is not None
    follow = subprocess.Popen([KUBECTL, "logs", "-f", "--tail", "0", "-n", "demo-to",
                               server_pod(kube)], stdout=subprocess.PIPE, text=True,
                              env=kube.env)
    try:
        assert follow.stdout is not None
        line = follow.stdout.readline()
        assert "RemoteAddr=" in line
    finally:
        follow.kill()
        follow.wait()
    code, status = kube.raw("GET", f"/api/v1/namespaces/demo-to/pods/{server_pod(kube)}"
                            "/log?container=nope")
    assert code == 400 and "container 'nope' is not valid" in status["message"]


def test_exec_iptables_and_exit_code(kube: Kube) -> None:
    pod = server_pod(kube)
    nat = kube.kubectl("exec", "-n", "demo-to", pod, "--", "iptables", "-t", "nat", "-L",
                       "-v").stdout
    assert "Chain ISTIO_INBOUND" in nat and "REDIRECT" in nat
    assert re.search(r"ISTIO_IN_REDIRECT\s+tcp\s+--\s+any\s+any\s+anywhere\s+anywhere", nat)
    failed = kube.kubectl("exec", "-n", "demo-to", pod, "-c", "istio-proxy", "--", "sh", "-c",
                          "echo out; echo err >&2; exit 3", check=False)
    assert failed.returncode == 3
    assert failed.stdout == "out\n" and "err" in failed.stderr
    # an unknown container: the apiserver's message, on the WebSocket and the SPDY try
    nope = kube.kubectl("exec", "-n", "demo-to", pod, "-c", "nope", "--", "true", check=False)
    assert nope.returncode == 1
    assert f"container nope is not valid for pod {pod}" in nope.stderr, nope.stderr
    assert "SPDY" not in nope.stderr
    piped = subprocess.run([str(KUBECTL), "exec", "-i", "-n", "demo-to", pod, "--", "cat"],
                           input="through stdin\n", capture_output=True, text=True,
                           env=kube.env, timeout=30, check=False)
    assert piped.returncode == 0 and piped.stdout == "through stdin\n", piped.stderr


def test_patch_tproxy_rollout_and_the_app_sees_the_client(kube: Kube) -> None:
    before = server_pod(kube)
    assert KUBECTL is not None
    watch = subprocess.Popen([KUBECTL, "get", "pods", "-n", "demo-to", "-l", "web=server",
                              "-w", "--output-watch-events"], stdout=subprocess.PIPE,
                             text=True, env=kube.env)
    try:
        out = kube.kubectl("patch", "deployment", "-n", "demo-to", "simple-server", "-p",
                           TPROXY).stdout
        assert "deployment.apps/simple-server patched" in out
        rollout = kube.kubectl("rollout", "status", "-n", "demo-to",
                               "deployment/simple-server", "--timeout", "60s",
                               timeout=90).stdout
        assert 'deployment "simple-server" successfully rolled out' in rollout
        after = eventually(lambda: (p := server_pod(kube)) != before and p)
        assert after and after != before
        time.sleep(1.5)  # the watch reads the store every 0.5 s
    finally:
        watch.terminate()
        seen, _ = watch.communicate(timeout=10)
    # kubectl get -w: Table rows with the event type, the old pod deleted, the new Running
    events = [line.split() for line in seen.splitlines()[1:]]
    assert ["ADDED", before] == events[0][:2], seen
    assert any(e[:2] == ["DELETED", before] for e in events), seen
    # the new pod Running with both containers: as MODIFIED, or already so when the watch
    # first saw it (it reads the store every 0.5 s, docs/kubeapi.md: a pod that became Ready
    # between two reads comes as ADDED Running)
    assert any(e[0] in ("ADDED", "MODIFIED") and e[1] == after and e[3] == "Running"
               and e[2] == "2/2" for e in events), seen
    # the remora CLI sees the patched template in the same store
    mine = json.loads(kube.lab.remora("get", "deploy", "simple-server", "-n", "demo-to",
                                      "-o", "json").stdout)
    annotations = mine["spec"]["template"]["metadata"]["annotations"]
    assert annotations["sidecar.istio.io/interceptionMode"] == "TPROXY"
    client_ip = kube.kubectl("get", "pods", "-n", "demo-from", "-o",
                             "jsonpath={.items[0].status.podIP}").stdout
    seen = eventually(lambda: re.search(rf"RemoteAddr={re.escape(client_ip)}:\d+",
                                        kube.kubectl("logs", "-n", "demo-to", after).stdout))
    assert seen, kube.kubectl("logs", "-n", "demo-to", after).stdout
    mangle = kube.kubectl("exec", "-n", "demo-to", after, "--", "iptables", "-t", "mangle",
                          "-L", "-v").stdout
    assert "ISTIO_TPROXY" in mangle and "TPROXY" in mangle
    # a JSON patch, as `kubectl patch --type json` sends it
    kube.kubectl("patch", "deployment", "-n", "demo-to", "simple-server", "--type", "json",
                 "-p", '[{"op":"add","path":"/metadata/labels","value":{"team":"mesh"}}]')
    got = kube.kubectl("get", "deploy", "-n", "demo-to", "-l", "team=mesh",
                       "-o", "name").stdout
    assert got.strip() == "deployment.apps/simple-server"


def test_python_client_list_and_watch(kube: Kube, tmp_path: Path) -> None:
    kubernetes = pytest.importorskip("kubernetes")
    api_client = kubernetes.config.new_client_from_config(str(kube.kubeconfig))
    core = kubernetes.client.CoreV1Api(api_client)
    apps = kubernetes.client.AppsV1Api(api_client)
    pods = core.list_pod_for_all_namespaces(label_selector="web=server")
    assert [p.metadata.namespace for p in pods.items] == ["demo-to"]
    assert pods.items[0].status.pod_ip.startswith("10.20.")
    by_field = core.list_namespaced_pod("demo-from", field_selector="status.phase=Running")
    assert [p.metadata.labels["web"] for p in by_field.items] == ["client"]
    assert [d.metadata.name for d in apps.list_namespaced_deployment("demo-to").items] == [
        "simple-server"]
    start = core.list_namespaced_service("demo-to").metadata.resource_version

    seen: list[tuple[str, str]] = []

    def watch() -> None:
        w = kubernetes.watch.Watch()
        for event in w.stream(core.list_namespaced_service, "demo-to",
                              resource_version=start, timeout_seconds=20):
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                w.stop()

    thread = threading.Thread(target=watch)
    thread.start()
    extra = tmp_path / "extra.yaml"
    extra.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: extra\n"
                     "  namespace: demo-to\nspec:\n  selector:\n    web: server\n"
                     "  ports:\n  - port: 9999\n")
    time.sleep(1)
    kube.kubectl("apply", "-f", str(extra))
    eventually(lambda: ("ADDED", "extra") in seen, 10)
    kube.kubectl("delete", "-f", str(extra))
    thread.join(30)
    assert ("ADDED", "extra") in seen and ("DELETED", "extra") in seen, seen
    assert ("ADDED", "simple-server-svc") not in seen  # the watch started after the list

    # the client's own exec (WebSocket, v4.channel.k8s.io) and log reads
    from kubernetes.stream import stream

    pod = server_pod(kube)
    out = stream(core.connect_get_namespaced_pod_exec, pod, "demo-to",
                 command=["sh", "-c", "echo hi; echo err >&2"], stderr=True, stdin=False,
                 stdout=True, tty=False)
    assert out == "hi\nerr\n"
    failing = stream(core.connect_get_namespaced_pod_exec, pod, "demo-to",
                     command=["sh", "-c", "exit 4"], stderr=True, stdin=False, stdout=True,
                     tty=False, _preload_content=False)
    failing.run_forever(timeout=10)
    assert failing.returncode == 4
    log = core.read_namespaced_pod_log(pod, "demo-to", tail_lines=2)
    assert len(log.splitlines()) == 2 and "RemoteAddr=" in log


def test_istio_policies_as_crds_server_side_apply_and_scale(kube: Kube, tmp_path: Path) -> None:
    crds = kube.kubectl("get", "crd", "-o", "name").stdout.split()
    assert sorted(crds) == [
        "customresourcedefinition.apiextensions.k8s.io/authorizationpolicies.security.istio.io",
        "customresourcedefinition.apiextensions.k8s.io/peerauthentications.security.istio.io"]
    policy = tmp_path / "ap.yaml"
    policy.write_text("""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-all-in-lab
  namespace: demo-to
spec:
  selector:
    matchLabels:
      web: server
  action: ALLOW
  rules:
  - from:
    - source:
        ipBlocks: ["10.20.0.0/16"]
""")
    assert "authorizationpolicy.security.istio.io/allow-all-in-lab created" in kube.kubectl(
        "apply", "-f", str(policy)).stdout
    table = kube.kubectl("get", "ap", "-n", "demo-to").stdout.splitlines()
    assert table[0].split() == ["NAME", "ACTION", "AGE"]
    assert table[1].split()[:2] == ["allow-all-in-lab", "ALLOW"]
    # the remora CLI and the control plane see the same object
    assert "allow-all-in-lab" in kube.lab.remora("get", "ap", "-n", "demo-to").stdout
    # a policy the resources layer refuses is refused by the API, with its fix
    bad = tmp_path / "bad.yaml"
    bad.write_text(policy.read_text().replace("10.20.0.0/16", "10.20.0.300/32"))
    refused = kube.kubectl("apply", "-f", str(bad), check=False)
    assert refused.returncode != 0 and "invalid IP address or CIDR" in refused.stderr
    kube.kubectl("delete", "-f", str(policy))
    assert "allow-all-in-lab" not in kube.lab.remora("get", "ap", "-n", "demo-to").stdout

    ssa = kube.kubectl("apply", "--server-side", "-f",
                       str(data_path("resources", "server.yaml"))).stdout
    assert "deployment.apps/simple-server serverside-applied" in ssa
    kube.kubectl("scale", "-n", "demo-to", "deployment/simple-server", "--replicas=2")
    kube.kubectl("rollout", "status", "-n", "demo-to", "deployment/simple-server",
                 "--timeout", "60s", timeout=90)
    assert len(kube.kubectl("get", "pods", "-n", "demo-to", "-l", "web=server",
                            "-o", "name").stdout.split()) == 2
    kube.kubectl("scale", "-n", "demo-to", "deployment/simple-server", "--replicas=1")
    assert eventually(lambda: len(kube.kubectl("get", "pods", "-n", "demo-to", "-l",
                                               "web=server", "-o", "name").stdout.split())
                      == 1, 30)


def test_errors_are_kubernetes_status_objects(kube: Kube) -> None:
    unknown = kube.kubectl("get", "serviceaccounts", check=False)
    assert unknown.returncode != 0
    assert 'the server doesn\'t have a resource type "serviceaccounts"' in unknown.stderr
    code, status = kube.raw("GET", "/api/v1/namespaces/demo-to/serviceaccounts")
    assert code == 404 and status["kind"] == "Status" and status["reason"] == "NotFound"
    code, status = kube.raw("GET", "/api/v1/namespaces/demo-to/pods/nope")
    assert (code, status["reason"], status["message"]) == (404, "NotFound",
                                                           'pods "nope" not found')
    code, status = kube.raw("DELETE", "/apis/apps/v1/namespaces/demo-to/replicasets/x")
    assert code == 405 and status["reason"] == "MethodNotAllowed"
    code, status = kube.raw("GET", "/api/v1/pods", token=False)
    assert code == 401 and status["reason"] == "Unauthorized"
    pod = server_pod(kube)
    code, status = kube.raw("POST", f"/api/v1/namespaces/demo-to/pods/{pod}/exec?command=ls",
                            {"Upgrade": "SPDY/3.1", "Connection": "Upgrade"})
    assert code == 400 and "SPDY" in status["message"] and "v5.channel.k8s.io" in \
        status["message"]
    bad = kube.kubectl("rollout", "restart", "deployment/nope", "-n", "demo-to", check=False)
    assert bad.returncode != 0 and "NotFound" in bad.stderr


def test_delete_dry_run_and_cascade_orphan_change_nothing(kube: Kube) -> None:
    # kubectl sends dryRun/propagationPolicy in a DeleteOptions body: a server dry run
    # deletes nothing, --cascade=orphan of a Deployment is refused, not cascaded
    for what in (["svc", "simple-server-svc"], ["deploy", "simple-server"]):
        out = kube.kubectl("delete", "-n", "demo-to", *what, "--dry-run=server").stdout
        assert "(server dry run)" in out
        kube.kubectl("get", "-n", "demo-to", *what)
    out = kube.kubectl("delete", "ns", "demo-to", "--dry-run=server").stdout
    assert "(server dry run)" in out
    assert kube.kubectl("get", "pods", "-n", "demo-to", "-l", "web=server", "-o",
                        "name").stdout.strip()
    orphan = kube.kubectl("delete", "-n", "demo-to", "deploy", "simple-server",
                          "--cascade=orphan", check=False)
    assert orphan.returncode == 1 and "Orphan" in orphan.stderr, orphan.stderr
    kube.kubectl("get", "-n", "demo-to", "deploy", "simple-server")
    default = kube.kubectl("delete", "ns", "default", check=False)
    assert default.returncode == 1
    assert 'namespaces "default" is forbidden: this namespace may not be deleted' in \
        default.stderr, default.stderr


def test_no_object_in_a_namespace_that_does_not_exist(kube: Kube, tmp_path: Path) -> None:
    svc = tmp_path / "svc.yaml"
    svc.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: lost\nspec:\n"
                   "  selector:\n    web: server\n  ports:\n  - port: 9999\n")
    refused = kube.kubectl("apply", "-n", "nosuchns", "-f", str(svc), check=False)
    assert refused.returncode == 1
    assert 'namespaces "nosuchns" not found' in refused.stderr, refused.stderr
    assert "nosuchns" not in kube.kubectl("get", "ns", "-o", "name").stdout


def test_bare_pod_run_label_and_refused_image_change(kube: Kube) -> None:
    run = kube.kubectl("run", "r1", "-n", "demo-to", "--image=vasth/simple-server",
                       check=False)
    assert run.returncode == 0 and "pod/r1 created" in run.stdout, run.stderr
    try:
        labelled = kube.kubectl("label", "pod", "r1", "-n", "demo-to", "tier=qa")
        assert "Warning" not in labelled.stderr, labelled.stderr  # no spec.nodeName warning
        kube.kubectl("annotate", "pod", "r1", "-n", "demo-to", "note=hello")
        assert kube.kubectl("get", "pods", "-n", "demo-to", "-l", "tier=qa",
                            "-o", "name").stdout.split() == ["pod/r1"]
        note = kube.kubectl("get", "pod", "r1", "-n", "demo-to", "-o",
                            "jsonpath={.metadata.annotations.note}").stdout
        assert note == "hello"
        # the remora CLI reads the same pod
        assert "tier" in kube.lab.remora("get", "pod", "r1", "-n", "demo-to",
                                         "-o", "json").stdout
        image = kube.kubectl("set", "image", "pod/r1", "-n", "demo-to", "r1=busybox",
                             check=False)
        assert image.returncode == 1 and "image" in image.stderr, image.stderr
    finally:
        kube.kubectl("delete", "pod", "r1", "-n", "demo-to", "--wait=false")


def test_kubectl_create_namespace_deployment_service_roll_out(kube: Kube) -> None:
    # kubectl's typed creates send protobuf (client-go's default for built-in kinds)
    made = kube.kubectl("create", "ns", "qa2", "-v=8")
    assert "Content-Type: application/vnd.kubernetes.protobuf" in made.stderr
    assert made.stdout == "namespace/qa2 created\n"
    try:
        assert kube.kubectl("create", "deployment", "web", "-n", "qa2", "--replicas=2",
                            "--image=vasth/simple-server", "--port=8080"
                            ).stdout == "deployment.apps/web created\n"
        assert kube.kubectl("create", "service", "clusterip", "web", "-n", "qa2",
                            "--tcp=80:8080").stdout == "service/web created\n"
        rollout = kube.kubectl("rollout", "status", "-n", "qa2", "deployment/web",
                               "--timeout", "60s", timeout=90).stdout
        assert 'deployment "web" successfully rolled out' in rollout
        pods = json.loads(kube.kubectl("get", "pods", "-n", "qa2", "-l", "app=web", "-o",
                                       "json").stdout)["items"]
        assert len(pods) == 2 and all(p["status"]["phase"] == "Running" for p in pods)
        ips = eventually(lambda: kube.kubectl(
            "get", "endpoints", "web", "-n", "qa2",
            "-o", "jsonpath={.subsets[0].addresses[*].ip}").stdout.split())
        assert sorted(ips) == sorted(p["status"]["podIP"] for p in pods)
        # the remora CLI reads the same store
        assert "web" in kube.lab.remora("get", "deploy", "-n", "qa2").stdout
    finally:
        kube.kubectl("delete", "ns", "qa2")


def _restart_sampling(kube: Kube, ns: str, name: str) -> tuple[str, list[list[dict[str, Any]]]]:
    """`kubectl rollout restart` of deployment NAME and its `rollout status`, with the
    namespace's pods sampled (each sample the pods' objects) until it ends: (what
    rollout status printed, the samples)."""
    samples: list[list[dict[str, Any]]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(json.loads(kube.kubectl("get", "pods", "-n", ns, "-o", "json"
                                                   ).stdout)["items"])

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        kube.kubectl("rollout", "restart", "-n", ns, f"deployment/{name}")
        rollout = kube.kubectl("rollout", "status", "-n", ns, f"deployment/{name}",
                               "--timeout", "90s", timeout=120).stdout
    finally:
        done.set()
        sampler.join(30)
    return rollout, samples


def test_rollout_honours_max_surge(kube: Kube) -> None:
    """spec.strategy.rollingUpdate.maxSurge bounds the pods a rollout runs at once (the
    lab used to start every new pod at once, whatever was served), and a Recreate
    rollout has no old and new pods side by side."""
    kube.kubectl("create", "ns", "qa3")
    try:
        kube.kubectl("create", "deployment", "web", "-n", "qa3", "--replicas=3",
                     "--image=vasth/simple-server")
        kube.kubectl("patch", "deployment", "web", "-n", "qa3", "-p",
                     '{"spec":{"strategy":{"rollingUpdate":{"maxSurge":1}}}}')
        kube.kubectl("rollout", "status", "-n", "qa3", "deployment/web", "--timeout", "60s",
                     timeout=90)
        rollout, samples = _restart_sampling(kube, "qa3", "web")
        assert 'deployment "web" successfully rolled out' in rollout
        # never more than replicas + maxSurge pods, and never fewer than replicas -
        # maxUnavailable (the lab's default 0) that are not terminating
        seen = [sum("deletionTimestamp" not in p["metadata"] for p in pods)
                for pods in samples]
        assert seen and max(seen) <= 4 and min(seen) >= 3, seen
        assert 4 in seen, seen  # it did surge
        # Recreate: every old pod is gone, terminating ones included, before a new one
        # starts (Kubernetes' rolloutRecreate)
        kube.kubectl("patch", "deployment", "web", "-n", "qa3", "-p",
                     '{"spec":{"strategy":{"type":"Recreate","rollingUpdate":null}}}')
        rollout, samples = _restart_sampling(kube, "qa3", "web")
        assert 'deployment "web" successfully rolled out' in rollout
        hashes = [{p["metadata"]["labels"]["pod-template-hash"] for p in pods}
                  for pods in samples]
        new = hashes[-1]
        assert len(new) == 1, hashes
        # never a new pod beside an old one (terminating pods of the rollout before this
        # one may still be there when it starts: old beside old is fine)
        assert all(h == new or not (h & new) for h in hashes), hashes
        assert any(h and not (h & new) for h in hashes), hashes  # it did roll
    finally:
        kube.kubectl("delete", "ns", "qa3")


def test_label_and_annotate_a_deployments_pod(kube: Kube) -> None:
    kube.kubectl("create", "ns", "qa4")
    try:
        kube.kubectl("create", "deployment", "web", "-n", "qa4", "--image=vasth/simple-server")
        kube.kubectl("rollout", "status", "-n", "qa4", "deployment/web", "--timeout", "60s",
                     timeout=90)
        pod = kube.kubectl("get", "pods", "-n", "qa4", "-l", "app=web", "-o",
                           "jsonpath={.items[0].metadata.name}").stdout
        assert kube.kubectl("label", "pod", pod, "-n", "qa4", "debug=yes").stdout == \
            f"pod/{pod} labeled\n"
        assert kube.kubectl("annotate", "pod", pod, "-n", "qa4", "note=hi").stdout == \
            f"pod/{pod} annotated\n"
        got = json.loads(kube.kubectl("get", "pod", pod, "-n", "qa4", "-o", "json").stdout)
        assert got["metadata"]["labels"]["debug"] == "yes"
        assert got["metadata"]["annotations"]["note"] == "hi"
        # still the Deployment's (through its ReplicaSet), and not replaced
        assert [r["kind"] for r in got["metadata"]["ownerReferences"]] == ["ReplicaSet"]
        assert kube.kubectl("get", "pods", "-n", "qa4", "-l", "debug=yes", "-o",
                            "name").stdout == f"pod/{pod}\n"
        # a label that ties it to the Deployment: refused by name
        freed = kube.kubectl("label", "pod", pod, "-n", "qa4", "app-", check=False)
        assert freed.returncode == 1 and "metadata.labels[app]" in freed.stderr, freed.stderr
        time.sleep(1)  # a pass of the node's controller
        names = kube.kubectl("get", "pods", "-n", "qa4", "-o", "name").stdout.split()
        assert names == [f"pod/{pod}"]
        assert kube.kubectl("label", "pod", pod, "-n", "qa4", "debug-").returncode == 0
    finally:
        kube.kubectl("delete", "ns", "qa4")


def test_describe_endpoints_and_service(kube: Kube) -> None:
    # kubectl describe parses creationTimestamp as metav1.Time: a string, not seconds
    for what in (["ep", "simple-server-svc"], ["endpointslice", "simple-server-svc-remora"]):
        described = kube.kubectl("describe", "-n", "demo-to", *what, check=False)
        assert described.returncode == 0, described.stderr
        assert re.search(r"10\.20\.\d+\.\d+", described.stdout), described.stdout
    svc = kube.kubectl("describe", "svc", "-n", "demo-to", "simple-server-svc").stdout
    assert re.search(r"^Endpoints:\s+10\.20\.\d+\.\d+:18080", svc, re.M), svc


def test_istio_kind_answered_in_the_version_asked(kube: Kube, tmp_path: Path) -> None:
    pa = tmp_path / "pa.yaml"
    pa.write_text("apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n"
                  "metadata:\n  name: permissive\n  namespace: demo-to\nspec:\n"
                  "  mtls:\n    mode: PERMISSIVE\n")
    kube.kubectl("apply", "-f", str(pa))
    try:
        for version in ("v1", "v1beta1"):
            got = json.loads(kube.kubectl(
                "get", "--raw", f"/apis/security.istio.io/{version}/namespaces/demo-to/"
                "peerauthentications/permissive").stdout)
            assert got["apiVersion"] == f"security.istio.io/{version}"
    finally:
        kube.kubectl("delete", "-f", str(pa))


def test_refused_deployment_fields_and_immutable_fields(kube: Kube) -> None:
    # spec.paused is honoured now (test_kubeapi_workflows.py: rollout pause/resume), not
    # refused: it is stored and served until resumed
    kube.kubectl("rollout", "pause", "-n", "demo-to", "deploy/simple-server")
    try:
        assert kube.kubectl("get", "deploy", "-n", "demo-to", "simple-server", "-o",
                            "jsonpath={.spec.paused}").stdout == "true"
    finally:
        kube.kubectl("rollout", "resume", "-n", "demo-to", "deploy/simple-server")
    assert kube.kubectl("get", "deploy", "-n", "demo-to", "simple-server", "-o",
                        "jsonpath={.spec.paused}").stdout == ""
    other = kube.kubectl("patch", "deploy", "-n", "demo-to", "simple-server", "-p",
                         '{"spec":{"strategy":{"type":"BlueGreen","rollingUpdate":null}}}',
                         check=False)
    assert other.returncode == 1 and "spec.strategy.type" in other.stderr, other.stderr
    ip = kube.kubectl("get", "svc", "-n", "demo-to", "simple-server-svc", "-o",
                      "jsonpath={.spec.clusterIP}").stdout
    moved = kube.kubectl("patch", "svc", "-n", "demo-to", "simple-server-svc", "-p",
                         '{"spec":{"clusterIP":"172.16.0.250"}}', check=False)
    assert moved.returncode == 1 and "may not change once set" in moved.stderr, moved.stderr
    assert kube.kubectl("get", "svc", "-n", "demo-to", "simple-server-svc", "-o",
                        "jsonpath={.spec.clusterIP}").stdout == ip
    selector = kube.kubectl("patch", "deploy", "-n", "demo-to", "simple-server", "-p",
                            '{"spec":{"selector":{"matchLabels":{"web":"x"}}}}', check=False)
    assert selector.returncode == 1 and "field is immutable" in selector.stderr


def test_delete_through_kubectl_reaches_the_lab(kube: Kube) -> None:
    # a Deployment's pod deleted is replaced, as on a cluster
    doomed = server_pod(kube)
    assert KUBECTL is not None
    following = subprocess.Popen([KUBECTL, "logs", "-f", "-n", "demo-to", doomed],
                                 stdout=subprocess.DEVNULL, env=kube.env)
    try:
        assert f'pod "{doomed}" deleted' in kube.kubectl("delete", "pod", "-n", "demo-to",
                                                         doomed, timeout=90).stdout
        # the followed log ends with its pod, as kubelet ends it
        assert following.wait(timeout=15) == 0
    finally:
        following.kill()
        following.wait()
    replaced = eventually(lambda: (p := server_pod(kube)) != doomed and p)
    assert replaced and replaced != doomed
    out = kube.kubectl("delete", "-f", str(data_path("resources", "server.yaml")),
                       timeout=90).stdout
    assert 'deployment.apps "simple-server" deleted' in out
    assert 'service "simple-server-svc" deleted' in out
    gone = eventually(lambda: not kube.kubectl("get", "pods", "-n", "demo-to",
                                               "-o", "name").stdout.strip(), 30)
    assert gone
    assert kube.lab.remora("get", "deploy", "-n", "demo-to").stderr.startswith(
        "No resources found")
    kube.kubectl("delete", "namespace", "demo-from", timeout=90)
    assert "demo-from" not in kube.kubectl("get", "ns", "-o", "name").stdout


SSA = """\
apiVersion: v1
kind: Namespace
metadata:
  name: kssa
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: kssa
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: server
        image: vasth/simple-server
        env: [{name: ONE, value: "1"}, {name: TWO, value: "2"}]
"""


def test_server_side_apply_workflow(kube: Kube, tmp_path: Path) -> None:
    """`kubectl apply --server-side` on the lab as on a cluster: a typo refused by the
    field manager whatever --validate says (the lab took it before), a second apply
    changes nothing, a field removed from the manifest is removed (and rolled out), a
    conflict with another manager is refused until forced, managedFields are shown."""
    manifest = tmp_path / "ssa.yaml"
    manifest.write_text(SSA.replace("        env:", "        imagePullPolicyy: Always\n"
                                    "        env:"))
    for flags in ((), ("--validate=false",)):
        typo = kube.kubectl("apply", "--server-side", *flags, "-f", str(manifest),
                            check=False)
        assert typo.returncode == 1
        assert ('Error from server: failed to create typed patch object (kssa/web; apps/v1, '
                'Kind=Deployment): .spec.template.spec.containers[name="server"].'
                "imagePullPolicyy: field not declared in schema") in typo.stderr, typo.stderr
    assert kube.kubectl("get", "deploy", "-n", "kssa", "web", check=False).returncode == 1
    manifest.write_text(SSA)
    out = kube.kubectl("apply", "--server-side", "-f", str(manifest)).stdout
    assert "deployment.apps/web serverside-applied" in out

    def deploy() -> dict[str, Any]:
        got: dict[str, Any] = json.loads(kube.kubectl(
            "get", "deploy", "-n", "kssa", "web", "-o", "json", "--show-managed-fields").stdout)
        return got

    first = deploy()
    assert [(e["manager"], e["operation"]) for e in first["metadata"]["managedFields"]] == [
        ("kubectl", "Apply")]
    # the second apply changes nothing (the served resourceVersion also moves with the
    # controllers' status here, so the spec's generation and managedFields tell)
    kube.kubectl("apply", "--server-side", "-f", str(manifest))
    again = deploy()
    assert again["metadata"]["generation"] == first["metadata"]["generation"]
    assert again["metadata"]["managedFields"] == first["metadata"]["managedFields"]
    # ONE removed from the manifest: removed from the object, and the pods roll
    manifest.write_text(SSA.replace('{name: ONE, value: "1"}, ', ""))
    kube.kubectl("apply", "--server-side", "-f", str(manifest))
    kube.kubectl("rollout", "status", "-n", "kssa", "deployment/web", "--timeout", "60s",
                 timeout=90)
    assert deploy()["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "TWO", "value": "2"}]
    pods = eventually(lambda: [p for p in json.loads(kube.kubectl(
        "get", "pods", "-n", "kssa", "-o", "json").stdout)["items"]
        if "deletionTimestamp" not in p["metadata"]
        and p["spec"]["containers"][0].get("env") == [{"name": "TWO", "value": "2"}]], 60)
    assert pods, kube.kubectl("get", "pods", "-n", "kssa", "-o", "yaml").stdout
    # another manager's change of kubectl's replicas: the apiserver's conflict
    manifest.write_text(SSA.replace("replicas: 1", "replicas: 2"))
    conflict = kube.kubectl("apply", "--server-side", "--field-manager=ops", "-f",
                            str(manifest), check=False)
    assert conflict.returncode == 1
    assert conflict.stderr.startswith('error: Apply failed with 1 conflict: conflict with '
                                      '"kubectl": .spec.replicas\n'), conflict.stderr
    kube.kubectl("apply", "--server-side", "--field-manager=ops", "--force-conflicts", "-f",
                 str(manifest))
    held = {e["manager"]: e["fieldsV1"] for e in deploy()["metadata"]["managedFields"]}
    assert held["ops"]["f:spec"]["f:replicas"] == {}
    assert "f:replicas" not in held["kubectl"]["f:spec"]
    kube.kubectl("delete", "namespace", "kssa", timeout=90)
