"""The API's HTTPS edge without a lab (no root): the server on 127.0.0.1 over a real node
store, its kubeconfig, and real clients — the `kubernetes` Python client and, when the
machine has it, `kubectl` — for TLS with the lab's CA, the token, keep-alive, Table
output and a chunked watch."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from remora.kubeapi import certs
from remora.kubeapi import resources as res
from remora.kubeapi.handlers import Handler
from remora.kubeapi.server import KubeApiServer
from remora.node.store import Store
from tests.unit.kubeapi.test_handlers import StoreBackend

SERVICE = """\
apiVersion: v1
kind: Namespace
metadata:
  name: demo-to
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo-to
spec:
  selector:
    app: web
  ports:
  - port: 8080
"""


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[Path]:
    creds = certs.ensure(tmp_path)
    server = KubeApiServer(Handler(StoreBackend(Store(tmp_path / "remora.db")), creds.token),
                           creds)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        yield certs.write_kubeconfig(tmp_path, f"https://127.0.0.1:{port}", creds)
    finally:
        async def stop() -> None:
            # let the cancelled connection tasks finish before the loop stops, else
            # their kept-alive connections (kubectl's) are "destroyed but pending"
            server.close()
            others = asyncio.all_tasks() - {asyncio.current_task()}
            if others:
                await asyncio.wait(others, timeout=5)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_credentials_are_kept_and_private(tmp_path: Path) -> None:
    first = certs.ensure(tmp_path)
    again = certs.ensure(tmp_path)
    assert first.token == again.token and first.cert.read_bytes() == again.cert.read_bytes()
    assert oct(first.key.stat().st_mode & 0o777) == "0o600"
    assert oct((certs.directory(tmp_path) / "token").stat().st_mode & 0o777) == "0o600"
    assert first.ca_pem == (tmp_path / "ca" / "root-cert.pem").read_bytes()


def test_python_client_create_list_watch(kubeconfig: Path) -> None:
    kubernetes = pytest.importorskip("kubernetes")
    api_client = kubernetes.config.new_client_from_config(str(kubeconfig))
    core = kubernetes.client.CoreV1Api(api_client)
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": "demo-to"}})
    assert [n.metadata.name for n in core.list_namespace().items] == ["default", "demo-to"]
    start = core.list_namespaced_service("demo-to").metadata.resource_version
    seen: list[tuple[str, str]] = []

    def watch() -> None:
        w = kubernetes.watch.Watch()
        for event in w.stream(core.list_namespaced_service, "demo-to",
                              resource_version=start, timeout_seconds=10):
            seen.append((event["type"], event["object"].metadata.name))
            w.stop()

    thread = threading.Thread(target=watch)
    thread.start()
    core.create_namespaced_service("demo-to", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]}})
    thread.join(15)
    assert seen == [("ADDED", "web")]
    with pytest.raises(kubernetes.client.ApiException) as missing:
        core.read_namespaced_service("nope", "demo-to")
    assert missing.value.status == 404
    no_token = kubernetes.client.Configuration(host=api_client.configuration.host)
    no_token.ssl_ca_cert = api_client.configuration.ssl_ca_cert
    bad = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(no_token))
    with pytest.raises(kubernetes.client.ApiException) as unauthorized:
        bad.list_namespace()
    assert unauthorized.value.status == 401


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl on PATH")
def test_kubectl_apply_get_and_refusals(kubeconfig: Path, tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "KUBECACHEDIR": str(tmp_path / "kube-cache")}  # not the user's ~/.kube/cache

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env,
                              timeout=60, check=False)

    manifest = tmp_path / "svc.yaml"
    manifest.write_text(SERVICE)
    applied = kubectl("apply", "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.split("\n")[:2] == ["namespace/demo-to created",
                                              "service/web created"]
    assert "service/web unchanged" in kubectl("apply", "-f", str(manifest)).stdout
    table = kubectl("get", "svc", "-A").stdout.splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP",
                                "PORT(S)", "AGE"]
    assert table[1].split()[:3] == ["demo-to", "web", "ClusterIP"]
    assert table[1].split()[5] == "8080/TCP"
    unknown = kubectl("get", "serviceaccounts")
    assert unknown.returncode != 0 and 'resource type "serviceaccounts"' in unknown.stderr
    deleted = kubectl("delete", "service", "web", "-n", "demo-to")
    assert deleted.returncode == 0, deleted.stderr
    assert 'service "web" deleted' in deleted.stdout
    # a Namespace takes its objects with it at once (the lab has no Terminating phase)
    assert kubectl("delete", "namespace", "demo-to").returncode == 0
    assert kubectl("get", "ns", "-o", "name").stdout.split() == ["namespace/default"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl on PATH")
def test_kubectl_imperative_commands(kubeconfig: Path, tmp_path: Path) -> None:
    """kubectl's typed `create namespace|deployment|service` send protobuf (client-go's
    default for built-in kinds, no JSON fallback), and take the lab's JSON answers; the
    other imperative commands send JSON or patches."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "KUBECACHEDIR": str(tmp_path / "kube-cache")}

    def kubectl(*args: str, editor: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=60,
                              env={**env, "EDITOR": editor} if editor else env, check=False)

    def ok(*args: str, editor: str = "") -> str:
        done = kubectl(*args, editor=editor)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    def get(kind: str, name: str, path: str) -> str:
        return ok("get", kind, name, "-n", "imp", "-o", f"jsonpath={path}")

    assert ok("create", "namespace", "imp", "-v=8") == "namespace/imp created\n"
    sent = kubectl("create", "namespace", "imp2", "-v=8")
    assert "Content-Type: application/vnd.kubernetes.protobuf" in sent.stderr
    assert sent.stdout == "namespace/imp2 created\n"
    assert ok("create", "deployment", "web", "-n", "imp", "--image=vasth/simple-server",
              "--replicas=0", "--port=8080", "--", "/bin/simple-server", "-port", "8080"
              ) == "deployment.apps/web created\n"
    assert get("deploy", "web", "{.spec.replicas}") == "0"  # *int32 0, not defaulted to 1
    assert get("deploy", "web", "{.spec.template.spec.containers[0].command}") == \
        '["/bin/simple-server","-port","8080"]'
    assert get("deploy", "web", "{.spec.selector.matchLabels.app}") == "web"
    assert ok("create", "service", "clusterip", "web", "-n", "imp", "--tcp=80:8080",
              "--tcp=443:8443") == "service/web created\n"
    assert get("svc", "web", "{.spec.ports[*].targetPort}") == "8080 8443"
    assert get("svc", "web", "{.spec.ports[*].name}") == "80-8080 443-8443"
    # the lab's own validation answers protobuf bodies as it does JSON ones
    node_port = kubectl("create", "service", "nodeport", "np", "-n", "imp", "--tcp=80:80")
    assert node_port.returncode == 1 and "NodePort is not supported" in node_port.stderr
    missing = kubectl("create", "deployment", "d", "-n", "nope", "--image=vasth/simple-server")
    assert missing.returncode == 1 and 'namespaces "nope" not found' in missing.stderr
    # run and expose (JSON), scale, set image, label, annotate, edit (patches), replace
    assert ok("run", "p", "-n", "imp", "--image=vasth/simple-server", "--labels=a=b"
              ) == "pod/p created\n"
    assert ok("expose", "deployment", "web", "-n", "imp", "--name=web2", "--port=81",
              "--target-port=8080") == "service/web2 exposed\n"
    assert get("svc", "web2", "{.spec.selector.app}") == "web"
    assert ok("scale", "deployment", "web", "-n", "imp", "--replicas=2") == \
        "deployment.apps/web scaled\n"
    assert get("deploy", "web", "{.spec.replicas}") == "2"
    assert "image updated" in ok("set", "image", "deployment/web", "-n", "imp",
                                 "simple-server=vasth/simple-server:v2")
    assert get("deploy", "web", "{.spec.template.spec.containers[0].image}") == \
        "vasth/simple-server:v2"
    assert ok("label", "deployment", "web", "-n", "imp", "tier=front") == \
        "deployment.apps/web labeled\n"
    assert ok("annotate", "service", "web", "-n", "imp", "note=hi") == \
        "service/web annotated\n"
    assert get("svc", "web", "{.metadata.annotations.note}") == "hi"
    assert ok("edit", "deployment", "web", "-n", "imp",
              editor="sed -i s/replicas:\\ 2/replicas:\\ 3/") == "deployment.apps/web edited\n"
    assert get("deploy", "web", "{.spec.replicas}") == "3"
    live = ok("get", "svc", "web", "-n", "imp", "-o", "yaml")
    replaced = subprocess.run(["kubectl", "replace", "-f", "-"], capture_output=True,
                              text=True, env=env, timeout=60, check=False,
                              input=live.replace("port: 443\n", "port: 4443\n"))
    assert replaced.stdout == "service/web replaced\n", replaced.stderr
    assert get("svc", "web", "{.spec.ports[*].port}") == "80 4443"
    assert ok("delete", "namespace", "imp", "imp2").count("deleted") == 2


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl on PATH")
def test_kubectl_auth_can_i_and_whoami(kubeconfig: Path, tmp_path: Path) -> None:
    """The lab's token may do everything (no RBAC): `auth can-i` says yes, as for a
    cluster's admin, instead of the 404 it was; `--list` and `whoami` say who that is."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "KUBECACHEDIR": str(tmp_path / "kube-cache")}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env,
                              timeout=60, check=False)

    for args in (("create", "pods"), ("delete", "deployments", "-n", "demo-to"),
                 ("get", "pods/log"), ("create", "pods/portforward")):
        asked = kubectl("auth", "can-i", *args)
        assert (asked.returncode, asked.stdout) == (0, "yes\n"), (args, asked.stderr)
    # a resource the lab does not serve: kubectl warns from discovery, the answer is RBAC's
    unserved = kubectl("auth", "can-i", "create", "serviceaccounts")
    assert unserved.stdout == "yes\n"
    assert "the server doesn't have a resource type 'serviceaccounts'" in unserved.stderr
    rules = kubectl("auth", "can-i", "--list").stdout.splitlines()
    assert rules[1].split() == ["*.*", "[]", "[]", "[*]"], rules
    whoami = kubectl("auth", "whoami").stdout.splitlines()
    assert whoami[1].split() == ["Username", "remora-admin"], whoami


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl on PATH")
def test_kubectl_get_sort_by_a_spec_field(kubeconfig: Path, tmp_path: Path) -> None:
    """--sort-by on a field outside metadata: kubectl asks for Table rows with
    includeObject=Object and sorts on their objects (it printed "No resources found"
    when the rows carried only PartialObjectMetadata)."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "KUBECACHEDIR": str(tmp_path / "kube-cache")}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env,
                              timeout=60, check=False)
        assert done.returncode == 0, (args, done.stderr)
        return done

    manifest = tmp_path / "svc.yaml"
    manifest.write_text(SERVICE + "".join(
        f"---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n"
        f"  namespace: demo-to\nspec:\n  selector:\n    app: web\n  ports:\n"
        f"  - port: {port}\n" for name, port in (("a-last", 9090), ("z-first", 7070))))
    kubectl("apply", "-f", str(manifest))
    rows = kubectl("get", "svc", "-n", "demo-to", "--sort-by=.spec.ports[0].port")
    assert [r.split()[0] for r in rows.stdout.splitlines()[1:]] == ["z-first", "web",
                                                                    "a-last"], rows.stdout
    names = kubectl("get", "svc", "-n", "demo-to", "--sort-by=.metadata.name", "-o",
                    "custom-columns=NAME:.metadata.name,PORT:.spec.ports[0].port")
    assert names.stdout.split() == ["NAME", "PORT", "a-last", "9090", "web", "8080",
                                    "z-first", "7070"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl on PATH")
def test_kubectl_get_nodes(kubeconfig: Path, tmp_path: Path) -> None:
    """The lab's nodes as core/v1 Nodes (it was "doesn't have a resource type nodes")."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "KUBECACHEDIR": str(tmp_path / "kube-cache")}

    def kubectl(*args: str) -> str:
        done = subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env,
                              timeout=60, check=False)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    table = kubectl("get", "nodes").splitlines()
    assert table[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    row = table[1].split()
    assert row[:3] == ["kf-node1", "Ready", "<none>"] and row[4] == "v1.32.0-remora", table
    wide = kubectl("get", "no", "-o", "wide").splitlines()
    assert wide[0].split()[5:7] == ["INTERNAL-IP", "EXTERNAL-IP"]
    assert wide[1].split()[5] == "192.168.0.1"
    described = kubectl("describe", "node", "kf-node1")
    assert re.search(r"Ready\s+True .* KubeletReady\s+kubelet is posting ready status",
                     described), described
    assert re.search(r"PodCIDR:\s+10\.20\.0\.0/24", described), described
    # its heartbeat Lease (describe node said "Failed to get lease" without one)
    assert re.search(r"HolderIdentity:\s+kf-node1", described), described
    assert "Failed to get lease" not in described


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl on PATH")
def test_kubectl_names_what_the_lab_does_not_serve(kubeconfig: Path, tmp_path: Path) -> None:
    """A ConfigMap or Secret is refused naming what the lab stores (it was the bare
    "could not find the requested resource")."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "KUBECACHEDIR": str(tmp_path / "kube-cache")}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env,
                              timeout=60, check=False)

    stores = "it stores Namespace, Pod, Service, Deployment, PeerAuthentication, " \
             "AuthorizationPolicy"
    for args in (("configmap", "x", "--from-literal=a=b"),
                 ("secret", "generic", "s", "--from-literal=a=b")):
        made = kubectl("create", *args)
        assert made.returncode == 1 and "the lab does not serve them" in made.stderr, made
        assert stores in made.stderr
    cm = tmp_path / "cm.yaml"
    cm.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n")
    # `apply` maps the kind from discovery (listed for kubectl's prune allowlist), finds
    # no object, and its create is refused naming what is stored; with and without its
    # client-side validation, which (no v3 PATCH taking fieldValidation for the kind)
    # reads /openapi/v2's ConfigMap schema: it failed on that 404 when v2 was not served
    for validate in ("--validate=false", "--validate=strict"):
        forced = kubectl("apply", validate, "-f", str(cm))
        assert forced.returncode == 1 and "the lab does not serve them" in forced.stderr
        assert stores in forced.stderr
    cm.write_text(cm.read_text() + "bogus: 1\n")
    checked = kubectl("apply", "-f", str(cm))
    assert checked.returncode == 1 and 'unknown field "bogus" in io.k8s.api.core.v1.' \
                                       'ConfigMap' in checked.stderr, checked.stderr
    # `get` lists none, and says why
    listed = kubectl("get", "configmaps")
    assert listed.returncode == 0 and listed.stdout == ""
    assert "No resources found" in listed.stderr
    assert "Warning: configmaps: the lab does not store them" in listed.stderr


EDITED = """\
apiVersion: v1
kind: Namespace
metadata:
  name: edit
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: edit
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: a
        image: vasth/simple-server
        env: [{name: ONE, value: "1"}, {name: TWO, value: "2"}]
        ports: [{containerPort: 8080}, {containerPort: 9090}]
      - name: b
        image: vasth/simple-server
"""
TYPO = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: typo, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: typo}}
  template:
    metadata: {labels: {app: typo}}
    spec:
      containers:
      - {name: a, image: vasth/simple-server, imagePullPolicyy: Always}
"""
POLICY = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: pa, namespace: edit}
spec: {mtls: {mode: MODE}}
"""


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl on PATH")
def test_kubectl_explain_reads_the_kubernetes_schemas(kubeconfig: Path, tmp_path: Path) -> None:
    """`kubectl explain` from the served OpenAPI v3 (it printed nothing useful when the
    documents held no schemas): fields, their types and Kubernetes' descriptions."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "KUBECACHEDIR": str(tmp_path / "kube-cache")}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env,
                              timeout=60, check=False)

    containers = kubectl("explain", "pod.spec.containers", "-v=6")
    assert containers.returncode == 0, containers.stderr
    assert "FIELD: containers <[]Container>" in containers.stdout
    assert "List of containers belonging to the pod." in containers.stdout
    assert re.search(r"^  env\t<\[\]EnvVar>$", containers.stdout, re.M), containers.stdout
    assert re.search(r"^  name\t<string> -required-$", containers.stdout, re.M)
    # explain reads the v3 index, then the group-version's document; never /openapi/v2
    fetched = re.findall(r"GET https://[^/]+(/openapi/\S*?)[?\s]", containers.stderr)
    assert fetched == ["/openapi/v3", "/openapi/v3/api/v1"], containers.stderr
    strategy = kubectl("explain", "deployment.spec.strategy", "--recursive")
    assert strategy.returncode == 0, strategy.stderr
    assert strategy.stdout.split("FIELDS:")[1].split() == [
        "rollingUpdate", "<RollingUpdateDeployment>", "maxSurge", "<string>",
        "maxUnavailable", "<string>", "type", "<string>"], strategy.stdout
    assert "GROUP:      apps" in strategy.stdout
    assert "The deployment strategy to use to replace existing pods" in strategy.stdout
    # an Istio kind has no schema, as a CRD without a structural one
    policy = kubectl("explain", "peerauthentication")
    assert policy.returncode == 1 and "not found in OpenAPI schema" in policy.stderr
    # kubectl's older explain, from /openapi/v2 (gnostic protobuf)
    v2 = kubectl("explain", "pods.spec.containers.ports", "--output=plaintext-openapiv2")
    assert v2.returncode == 0, v2.stderr
    assert "RESOURCE: ports <[]Object>" in v2.stdout
    assert re.search(r"^   containerPort\t<integer> -required-$", v2.stdout, re.M), v2.stdout
    assert "ContainerPort represents a network port in a single container." in v2.stdout
    # every other kind in discovery, also those only listed (configmaps) or only created
    # (the reviews): explain finds the kind from an operation on its collection path
    for r in res.RESOURCES:
        if r.group != res.ISTIO_SECURITY:
            explained = kubectl("explain", f"{r.plural}.{r.group}".rstrip("."))
            assert explained.returncode == 0, (r.plural, explained.stderr)
            assert f"KIND:       {r.kind}\n" in explained.stdout


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl on PATH")
def test_kubectl_apply_patches_from_the_served_schemas(kubeconfig: Path,
                                                       tmp_path: Path) -> None:
    """Client-side apply computes its strategic-merge patch from the served schema's patch
    metadata (it took kubectl's built-in types when no operation listed the strategic
    body type: kubectl -v=5 said "OpenAPI V3 path does not support strategic merge
    patch"): a container removed, an env var added and one removed, a port removed. The
    Istio kind still gets a JSON merge patch."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "KUBECACHEDIR": str(tmp_path / "kube-cache")}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env,
                              timeout=60, check=False)
        assert done.returncode == 0, (args, done.stderr)
        return done

    unsupported = "OpenAPI V3 path does not support strategic merge patch"
    manifest = tmp_path / "web.yaml"
    manifest.write_text(EDITED)
    kubectl("apply", "-f", str(manifest))
    manifest.write_text(EDITED.split("      - name: b")[0].replace(
        '{name: ONE, value: "1"}, {name: TWO, value: "2"}',
        '{name: TWO, value: "2"}, {name: THREE, value: "3"}').replace(
        ", {containerPort: 9090}", ""))
    applied = kubectl("apply", "-f", str(manifest), "-v=8")
    assert "deployment.apps/web configured" in applied.stdout
    assert unsupported not in applied.stderr
    sent = re.search(r'"Request Body" body="(.*)"\n.*PATCH https://\S+/deployments/web\?',
                     applied.stderr)
    assert sent, applied.stderr
    patch = json.loads(sent.group(1).encode().decode("unicode_escape"))
    assert patch["spec"]["template"]["spec"]["$setElementOrder/containers"] == [{"name": "a"}]
    got = json.loads(kubectl("get", "deploy", "-n", "edit", "web", "-o", "json").stdout)
    containers = got["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["a"]
    assert containers[0]["env"] == [{"name": "TWO", "value": "2"},
                                    {"name": "THREE", "value": "3"}]
    assert containers[0]["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert "unchanged" in kubectl("apply", "-f", str(manifest)).stdout
    policy = tmp_path / "pa.yaml"
    policy.write_text(POLICY.replace("MODE", "STRICT"))
    kubectl("apply", "-f", str(policy))
    policy.write_text(POLICY.replace("MODE", "PERMISSIVE"))
    again = kubectl("apply", "-f", str(policy), "-v=6")
    assert unsupported in again.stderr and "kind PeerAuthentication" in again.stderr
    # then /openapi/v2 (no schema for the kind there either), then JSON merge patch
    assert re.search(r"GET https://\S+/openapi/v2\?\S+ 200 OK", again.stderr), again.stderr
    assert kubectl("get", "pa", "-n", "edit", "pa", "-o",
                   "jsonpath={.spec.mtls.mode}").stdout == "PERMISSIVE"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl on PATH")
def test_kubectl_field_validation_as_the_apiserver(kubeconfig: Path, tmp_path: Path) -> None:
    """kubectl sends fieldValidation=Strict (its default --validate=strict, as the PATCH
    operation takes the parameter): a field Kubernetes' schema does not have is refused
    with the apiserver's strict decoding error, on create (400) and on the patch of an
    existing object (422 on `patch`); --validate=warn gets its warning, --validate=false
    nothing (the lab accepted the typo with its own "(ignored)" warning before)."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "KUBECACHEDIR": str(tmp_path / "kube-cache")}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env,
                              timeout=60, check=False)

    typo = 'unknown field "spec.template.spec.containers[0].imagePullPolicyy"'
    manifest = tmp_path / "typo.yaml"
    manifest.write_text(TYPO)
    refused = kubectl("apply", "-f", str(manifest), "-v=6")
    assert refused.returncode == 1
    assert "fieldValidation=Strict" in refused.stderr
    assert (f'Error from server (BadRequest): error when creating "{manifest}": Deployment '
            f'in version "v1" cannot be handled as a Deployment: strict decoding error: '
            f"{typo}\n") in refused.stderr
    assert kubectl("get", "deploy", "typo").returncode == 1  # nothing stored
    warned = kubectl("apply", "--validate=warn", "-f", str(manifest))
    assert warned.returncode == 0, warned.stderr
    assert f"Warning: {typo}\n" in warned.stderr
    # the object exists now: kubectl sends a strategic-merge patch, refused on `patch`
    manifest.write_text(TYPO.replace("replicas: 1", "replica: 2"))
    patched = kubectl("apply", "-f", str(manifest))
    assert patched.returncode == 1
    assert ('The request is invalid: patch: Invalid value: "map[metadata:map[annotations:map['
            'kubectl.kubernetes.io/last-applied-configuration:') in patched.stderr
    assert ('strict decoding error: unknown field "spec.replica", ' + typo) in patched.stderr
    assert kubectl("get", "deploy", "typo", "-o",
                   "jsonpath={.spec.replicas}").stdout == "1"
    quiet = kubectl("apply", "--validate=false", "-f", str(manifest))
    assert quiet.returncode == 0, quiet.stderr
    assert 'unknown field "' not in quiet.stderr
