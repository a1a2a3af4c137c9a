"""Applying back what the API served changes nothing (kubectl 1.32 judges): `kubectl get
-o yaml > x; kubectl apply -f x` (client-side and --server-side) and `kubectl replace -f x`
keep the spec and metadata.generation and start no rollout (same ReplicaSets, same pods,
no restart), because the apiserver compares a write with what it holds in their
defaulted forms. A Namespace carries the kubernetes.io/metadata.name label.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remora.lab.testing import TempLab
from tests.netns.test_kubeapi_kubectl import KUBECTL, Kube

pytestmark = pytest.mark.netns

NS = "rt"


def deployment(name: str) -> dict[str, Any]:
    """A Deployment of one sleeping container without a sidecar (quick to start), none
    of the defaulted fields given."""
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}, "annotations": {
                         "sidecar.istio.io/inject": "false"}},
                                  "spec": {"containers": [{
                                      "name": "main", "image": "local/sleep",
                                      "command": ["sleep", "600"]}]}}}}


MANIFESTS = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
    deployment("web"),
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
     "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": NS,
                                                     "annotations": {
                                                         "sidecar.istio.io/inject": "false"}},
     "spec": {"containers": [{"name": "main", "image": "local/sleep",
                              "command": ["sleep", "600"]}]}},
    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
     "metadata": {"name": "allow", "namespace": NS},
     "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": [
         "cluster.local/ns/rt/sa/default"]}}]}]}},
    # the lab stores no ConfigMap (its list is empty); a PeerAuthentication is its plain
    # data object
    {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
     "metadata": {"name": "default", "namespace": NS}, "spec": {"mtls": {"mode": "STRICT"}}},
]


def settled(kube: Kube, name: str) -> None:
    """Deployment NAME rolled out and Available: its controller writes no more status (a
    status write moves the resourceVersion, and the fetched copy's would be stale)."""
    kube.kubectl("rollout", "status", "-n", NS, f"deployment/{name}", "--timeout", "60s",
                 timeout=90)
    kube.kubectl("wait", "-n", NS, f"deployment/{name}", "--for=condition=Available",
                 "--timeout=60s", timeout=90)


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
        manifests = tmp_path_factory.mktemp("manifests") / "all.json"
        manifests.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                         "items": MANIFESTS}))
        k.kubectl("apply", "-f", str(manifests))
        settled(k, "web")
        k.kubectl("wait", "-n", NS, "pod/bare", "--for=condition=Ready", "--timeout=60s",
                  timeout=90)
        yield k
        lab.close()
        assert lab.leftovers() == []


def fetched(kube: Kube, what: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(kube.kubectl("get", "-n", NS, what, "-o", "json").stdout)
    return out


def pods(kube: Kube) -> dict[str, tuple[str, str, int]]:
    """Each pod's uid, pod-template-hash and restarts: a rollout or a restart moves them."""
    items = json.loads(kube.kubectl("get", "pods", "-n", NS, "-o", "json").stdout)["items"]
    return {p["metadata"]["name"]: (
        p["metadata"]["uid"], p["metadata"].get("labels", {}).get("pod-template-hash", ""),
        sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or []))
        for p in items}


@pytest.mark.parametrize("what", ["deploy/web", "svc/web", "pod/bare",
                                  "authorizationpolicy/allow", "peerauthentication/default",
                                  "ns/rt"])
@pytest.mark.parametrize("how", ["apply", "apply --server-side", "replace"])
def test_a_fetched_object_applied_back_changes_nothing(kube: Kube, tmp_path: Path,
                                                       what: str, how: str) -> None:
    """The served spec written back (kubectl's `get -o yaml` then apply, apply
    --server-side or replace) keeps the spec, the generation (where the kind has one: a
    Deployment and a custom resource; a real 1.32 apiserver gives a Service, a Pod and a
    Namespace none), the ReplicaSets and the pods. Before, the stored copy took the
    served defaults and a Deployment's generation grew on every --server-side or
    replace, a Service's on each of the three."""
    if what == "deploy/web":
        # a Deployment of its own, as created (the defaults not yet written back by
        # another case)
        name = "web-" + how.replace(" --", "-")
        fresh = tmp_path / "fresh.json"
        fresh.write_text(json.dumps(deployment(name)))
        kube.kubectl("apply", "-f", str(fresh))
        settled(kube, name)
        what = f"deploy/{name}"
    x = tmp_path / "x.yaml"
    x.write_text(kube.kubectl("get", "-n", NS, what, "-o", "yaml").stdout)
    before, running = fetched(kube, what), pods(kube)
    sets = kube.kubectl("get", "rs", "-n", NS, "-o", "name").stdout.split()
    done = kube.kubectl(*how.split(), "-f", str(x))
    resource = done.stdout.split()[0]
    assert done.stdout.strip() == {"apply": f"{resource} configured",
                                   "apply --server-side": f"{resource} serverside-applied",
                                   "replace": f"{resource} replaced"}[how], done.stdout
    after = fetched(kube, what)
    assert after.get("spec") == before.get("spec")
    kind = before["kind"]
    if kind in ("Deployment", "AuthorizationPolicy", "PeerAuthentication"):
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
    else:
        assert "generation" not in after["metadata"], after["metadata"]
    assert kube.kubectl("get", "rs", "-n", NS, "-o", "name").stdout.split() == sets
    assert pods(kube) == running


@pytest.mark.parametrize("what", ["deploy/web", "svc/web", "pod/bare",
                                  "authorizationpolicy/allow", "peerauthentication/default",
                                  "ns/rt"])
def test_a_fetched_object_applied_twice_is_unchanged(kube: Kube, tmp_path: Path,
                                                     what: str) -> None:
    """The fetched object without its resourceVersion (a stale one is a precondition
    that fails once the object moves), applied twice: kubectl's three-way patch of the
    second finds the live object as the file says, so it sends nothing ("unchanged"),
    and `kubectl diff` of it shows nothing."""
    obj = fetched(kube, what)
    obj["metadata"].pop("resourceVersion")
    x = tmp_path / "x.json"
    x.write_text(json.dumps(obj))
    # a server-side apply of it, as a dry run, changes nothing but the last-applied
    # annotation kubectl itself rewrites from the file (before, the Deployment's
    # generation moved to 2, the Service's too)
    diff = kube.kubectl("diff", "--server-side", "-f", str(x), check=False)
    assert diff.returncode in (0, 1), diff.stderr
    changed = [line for line in diff.stdout.splitlines()
               if line[:1] in "+-" and line[:3] not in ("+++", "---") and
               not line[1:].lstrip().startswith('{"apiVersion":')]
    assert changed == [], diff.stdout
    first = kube.kubectl("apply", "-f", str(x)).stdout.split()
    assert first[1] == "configured", first
    # kubectl diff (the apply as a server-side dry run, against the live object) shows
    # nothing, the generation included
    diff = kube.kubectl("diff", "-f", str(x), check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    again = kube.kubectl("apply", "-f", str(x)).stdout.split()
    assert again == [first[0], "unchanged"]
    after = fetched(kube, what)
    assert after.get("spec") == obj.get("spec")
    assert after["metadata"].get("generation") == obj["metadata"].get("generation")


def test_a_namespace_is_labelled_with_its_name(kube: Kube) -> None:
    """kubernetes.io/metadata.name, as the apiserver sets it on every namespace (its own
    and the lab's built-in ones), so a namespaceSelector can pick one by name."""
    for ns in (NS, "default", "kube-system"):
        labels = fetched(kube, f"ns/{ns}")["metadata"]["labels"]
        assert labels["kubernetes.io/metadata.name"] == ns
    names = kube.kubectl("get", "ns", "-l", f"kubernetes.io/metadata.name={NS}", "-o",
                         "name").stdout.split()
    assert names == [f"namespace/{NS}"]
