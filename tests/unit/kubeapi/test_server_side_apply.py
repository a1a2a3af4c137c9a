"""Server-side apply (`kubectl apply --server-side`) judged by the machine's kubectl
1.32 against the API's HTTPS edge (no lab, no root): the apiserver's field manager's
refusal of an undeclared field whatever fieldValidation says, managedFields, the removal
of a field no longer applied, conflicts between managers, the migration of client-side
apply's fields (kubectl's csaupgrade JSON patch of managedFields)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.kubeapi.test_server import kubeconfig  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="needs kubectl on PATH")

WEB = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  labels: {tier: front, team: a}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: a
        image: vasth/simple-server
        ports: [{containerPort: 8080}]
"""
TYPO = 'containers:\n      - name: a\n        imagePullPolicyy: Always\n'


class Kubectl:
    def __init__(self, config: Path, tmp_path: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(config),
                    "KUBECACHEDIR": str(tmp_path / "kube-cache")}
        self.manifest = tmp_path / "web.yaml"

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], capture_output=True, text=True,
                              env=self.env, timeout=60, check=False)

    def ok(self, *args: str) -> str:
        proc = self(*args)
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def apply(self, text: str, *flags: str) -> subprocess.CompletedProcess[str]:
        self.manifest.write_text(text)
        return self("apply", "--server-side", *flags, "-f", str(self.manifest))

    def web(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.ok("get", "deploy", "web", "-o", "json",
                                                 "--show-managed-fields"))
        return out


def managers(obj: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["manager"], e["operation"]): e for e in obj["metadata"]["managedFields"]}


def test_undeclared_field_is_refused_whatever_field_validation(kubeconfig: Path,  # noqa: F811
                                                              tmp_path: Path) -> None:
    """The field manager turns the applied configuration into a typed value first
    (structuredmerge.go): a field the schema does not declare fails the apply with the
    structured-merge-diff error under Strict, Warn and Ignore alike (fieldValidation only
    adds the YAML duplicate-key check), a 500 with no reason. The lab took it silently."""
    kubectl = Kubectl(kubeconfig, tmp_path)
    typo = WEB.replace("containers:\n      - name: a\n",
                       "containers:\n      - name: a\n        imagePullPolicyy: Always\n")
    expected = ("Error from server: failed to create typed patch object (default/web; "
                "apps/v1, Kind=Deployment): .spec.template.spec.containers[name=\"a\"]."
                "imagePullPolicyy: field not declared in schema\n")
    for flags in ((), ("--validate=warn",), ("--validate=false",)):
        refused = kubectl.apply(typo, *flags, "-v=6")
        assert refused.returncode == 1, refused.stderr
        assert expected in refused.stderr, refused.stderr
        assert re.search(r"PATCH https://\S+/deployments/web\?\S+ 500 Internal Server Error",
                         refused.stderr), refused.stderr
        assert kubectl("get", "deploy", "web").returncode == 1  # nothing stored
    # an existing object is refused the same way, and keeps its fields
    assert kubectl.apply(WEB).returncode == 0
    refused = kubectl.apply(typo.replace("replicas: 1", "replicas: 2"))
    assert expected in refused.stderr
    assert kubectl.web()["spec"]["replicas"] == 1
    # two undeclared fields in different maps: smd's ValidationErrors list
    two = typo.replace("  replicas: 1\n", "  replicas: 1\n  paused2: true\n")
    refused = kubectl.apply(two)
    assert ("(default/web; apps/v1, Kind=Deployment): errors:\n  .spec.paused2: field not "
            "declared in schema\n  .spec.template.spec.containers[name=\"a\"]."
            "imagePullPolicyy: field not declared in schema\n") in refused.stderr, \
        refused.stderr


def test_apply_twice_remove_a_field_and_managed_fields(kubeconfig: Path,  # noqa: F811
                                                      tmp_path: Path) -> None:
    kubectl = Kubectl(kubeconfig, tmp_path)
    # resources: a field the lab does not keep (nor any manager's time for it)
    extra = WEB.replace("        ports:", "        resources: {limits: {cpu: 100m}}\n"
                        "        ports:")
    assert "deployment.apps/web serverside-applied" in kubectl.apply(extra).stdout
    first = kubectl.web()
    (entry,) = first["metadata"]["managedFields"]
    assert {k: v for k, v in entry.items() if k not in ("time", "fieldsV1")} == {
        "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "manager": "kubectl",
        "operation": "Apply"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["time"])
    # what the apiserver records for this manifest: no metadata.name/namespace
    # (stripmeta.go), the selector atomic, list items by their keys (protocol's default)
    assert entry["fieldsV1"] == {
        "f:metadata": {"f:labels": {"f:team": {}, "f:tier": {}}},
        "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {"f:containers": {'k:{"name":"a"}': {
                ".": {}, "f:image": {}, "f:name": {}, "f:ports": {
                    'k:{"containerPort":8080,"protocol":"TCP"}': {
                        ".": {}, "f:containerPort": {}},
                }, "f:resources": {"f:limits": {"f:cpu": {}}}}}}}}}
    # a second apply of the same manifest, a second later, changes nothing: same
    # resourceVersion, same managedFields (time included)
    time.sleep(1.1)
    assert "serverside-applied" in kubectl.apply(extra).stdout
    again = kubectl.web()
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert again["metadata"]["managedFields"] == first["metadata"]["managedFields"]
    # another manager's label stays when the applier's manifest does not name it
    kubectl.ok("label", "deploy", "web", "owner=ops")
    labelled = kubectl.web()
    assert managers(labelled)[("kubectl-label", "Update")]["fieldsV1"] == {
        "f:metadata": {"f:labels": {"f:owner": {}}}}
    # a field the applier applied before and no longer applies is removed
    without = WEB.replace(", team: a", "").replace(
        "        ports: [{containerPort: 8080}]\n", "")
    kubectl.apply(without)
    now = kubectl.web()
    assert now["metadata"]["labels"] == {"tier": "front", "owner": "ops"}
    assert "ports" not in now["spec"]["template"]["spec"]["containers"][0]
    fields = managers(now)[("kubectl", "Apply")]["fieldsV1"]
    assert fields["f:metadata"] == {"f:labels": {"f:tier": {}}}
    assert "f:ports" not in fields["f:spec"]["f:template"]["f:spec"]["f:containers"][
        'k:{"name":"a"}']
    # a server dry run answers the applied object and stores nothing
    dry = kubectl.apply(WEB.replace("replicas: 1", "replicas: 4"), "--dry-run=server",
                        "-o", "json")
    assert json.loads(dry.stdout)["spec"]["replicas"] == 4
    assert kubectl.web()["spec"]["replicas"] == 1


def test_conflicts_between_managers(kubeconfig: Path, tmp_path: Path) -> None:  # noqa: F811
    """A client-side apply's fields belong to kubectl-client-side-apply: another
    manager's change of one is a conflict, reported as the apiserver does (409, kubectl
    prints its advice), until forced; kubectl's own server-side apply takes over the
    fields the last-applied annotation holds (lastappliedmanager.go) and kubectl then
    migrates the rest (its JSON patch of managedFields), which the lab refused before."""
    kubectl = Kubectl(kubeconfig, tmp_path)
    kubectl.manifest.write_text(WEB)
    assert "deployment.apps/web created" in kubectl.ok("apply", "-f", str(kubectl.manifest))
    csa = managers(kubectl.web())[("kubectl-client-side-apply", "Update")]
    assert csa["fieldsV1"]["f:spec"]["f:replicas"] == {}
    assert csa["fieldsV1"]["f:metadata"]["f:labels"] == {".": {}, "f:team": {}, "f:tier": {}}
    three = WEB.replace("replicas: 1", "replicas: 3")
    conflict = kubectl.apply(three, "--field-manager=other")
    assert conflict.returncode == 1
    assert conflict.stderr.startswith(
        'error: Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" '
        "using apps/v1: .spec.replicas\nPlease review the fields above--they currently "
        "have other managers."), conflict.stderr
    assert kubectl.web()["spec"]["replicas"] == 1
    # two fields: the apiserver's list by manager
    two = three.replace("image: vasth/simple-server", "image: vasth/other")
    conflict = kubectl.apply(two, "--field-manager=other")
    assert conflict.stderr.startswith(
        'error: Apply failed with 2 conflicts: conflicts with "kubectl-client-side-apply" '
        'using apps/v1:\n- .spec.replicas\n- .spec.template.spec.containers[name="a"]'
        ".image\n"), conflict.stderr
    forced = kubectl.apply(three, "--field-manager=other", "--force-conflicts")
    assert forced.returncode == 0, forced.stderr
    obj = kubectl.web()
    assert obj["spec"]["replicas"] == 3
    # after a successful server-side apply kubectl moves client-side apply's fields to
    # its manager (csaupgrade: a JSON patch of managedFields, which the lab refused
    # before: "server rejected managed fields migration") and applies again, which
    # prunes what the manifest does not hold: the last-applied annotation
    assert "migration" not in forced.stderr
    held = managers(obj)
    assert list(held) == [("other", "Apply")]
    assert held[("other", "Apply")]["fieldsV1"]["f:spec"]["f:replicas"] == {}
    assert held[("other", "Apply")]["fieldsV1"]["f:metadata"] == {
        "f:labels": {"f:team": {}, "f:tier": {}}}
    assert "annotations" not in obj["metadata"]
    # kubectl's own server-side apply of the first manifest: replicas is "other"'s now
    taken = kubectl.apply(WEB)
    assert taken.stderr.startswith('error: Apply failed with 1 conflict: conflict with '
                                   '"other": .spec.replicas\n'), taken.stderr
    kubectl.apply(WEB, "--force-conflicts")
    obj = kubectl.web()
    held = managers(obj)
    assert obj["spec"]["replicas"] == 1
    assert held[("kubectl", "Apply")]["fieldsV1"]["f:spec"]["f:replicas"] == {}
    assert "f:replicas" not in held[("other", "Apply")]["fieldsV1"]["f:spec"]
    # kubectl scale: the scale subresource's manager, printed with it
    kubectl.ok("scale", "deploy", "web", "--replicas=2")
    conflict = kubectl.apply(WEB)
    assert re.search(r'conflict with "kubectl[^"]*" with subresource "scale" using apps/v1: '
                     r"\.spec\.replicas", conflict.stderr), conflict.stderr


def test_kubectl_takes_over_client_side_apply_without_conflicts(
        kubeconfig: Path, tmp_path: Path) -> None:  # noqa: F811
    """The upgrade path (lastappliedmanager.go): kubectl's own server-side apply of an
    object made by client-side apply changes fields kubectl-client-side-apply owns with
    no conflict, as the last-applied annotation holds them with the live values; the
    annotation follows the applied configuration."""
    kubectl = Kubectl(kubeconfig, tmp_path)
    kubectl.manifest.write_text(WEB)
    kubectl.ok("apply", "-f", str(kubectl.manifest))
    moved = kubectl.apply(WEB.replace("replicas: 1", "replicas: 2").replace(
        "tier: front", "tier: back"))
    assert moved.returncode == 0, moved.stderr
    obj = kubectl.web()
    assert obj["spec"]["replicas"] == 2
    assert obj["metadata"]["labels"] == {"tier": "back", "team": "a"}
    # kubectl keeps the annotation it found with a manager of its own
    # (kubectl-last-applied), after migrating client-side apply's fields to `kubectl`
    assert [(e["manager"], e["operation"]) for e in obj["metadata"]["managedFields"]] == [
        ("kubectl", "Apply"), ("kubectl-last-applied", "Apply")]
    last = json.loads(obj["metadata"]["annotations"][
        "kubectl.kubernetes.io/last-applied-configuration"])
    assert last["spec"]["replicas"] == 2
    # kubectl patch is an Update by kubectl-patch: it takes replicas, so kubectl's
    # next apply of another value conflicts with it (the live value is not the
    # last-applied one)
    kubectl.ok("patch", "deploy", "web", "-p", '{"spec":{"replicas":4}}')
    conflict = kubectl.apply(WEB)
    assert conflict.stderr.startswith(
        'error: Apply failed with 1 conflict: conflict with "kubectl-patch" using apps/v1: '
        ".spec.replicas\n"), conflict.stderr


def test_a_fetched_object_applies_back(kubeconfig: Path,  # noqa: F811
                                       tmp_path: Path) -> None:
    """`kubectl get -o yaml` then `kubectl apply --server-side` of it: what the lab
    serves (status, uid, resourceVersion) passes the field manager's schema check and
    changes nothing served: the spec differs from the stored one only by the served
    defaults, which the apiserver compares defaulted, so the generation stays (it grew
    before, the stored copy taking the defaults)."""
    kubectl = Kubectl(kubeconfig, tmp_path)
    assert kubectl.apply(WEB).returncode == 0
    before = kubectl.web()
    fetched = kubectl.ok("get", "deploy", "web", "-o", "yaml")
    again = kubectl.apply(fetched)
    assert again.returncode == 0, again.stderr
    after = kubectl.web()
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
