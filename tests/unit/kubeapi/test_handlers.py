"""The API's request handling over a real node store (desired.apply/delete, the same
code the daemon's socket API runs), without a daemon: discovery, OpenAPI, create/get/
list with selectors, Table output, patch, delete, and Kubernetes' Status objects for
everything refused."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from remora.errors import RemoraError
from remora.kubeapi import gnostic
from remora.kubeapi.backend import LogRef, admit
from remora.kubeapi.handlers import Handler, LogStream, PortForward, Watch
from remora.kubeapi.messages import Request, Response
from remora.lab.images import ImageMap
from remora.node import desired, views
from remora.node.events import EventRecorder, Involved
from remora.node.ipam import AddressPlan
from remora.node.store import Store
from tests.unit.kubeapi import test_protobuf as pb

PLAN = AddressPlan.build()
NAMESPACE = {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "demo-to", "labels": {"istio-injection": "enabled"}}}
TOKEN = "t0ken"
SERVER = {"apiVersion": "apps/v1", "kind": "Deployment",
          "metadata": {"name": "simple-server", "namespace": "demo-to"},
          "spec": {"selector": {"matchLabels": {"web": "server"}},
                   "template": {"metadata": {"labels": {"web": "server"}},
                                "spec": {"containers": [{"name": "demo",
                                                         "image": "vasth/simple-server"}]}}}}
SVC = {"apiVersion": "v1", "kind": "Service",
       "metadata": {"name": "simple-server-svc", "namespace": "demo-to",
                    "labels": {"app": "web"}},
       "spec": {"selector": {"web": "server"}, "ports": [{"port": 18080}]}}


class StoreBackend:
    """The Backend over a node store, as the daemon's Api does it for these kinds."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def objects(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        items = (views.services(self.store, PLAN) if kind == "Service"
                 else [] if kind == "Pod" else self.store.list_objects(kind))
        return [o for o in items if namespace is None or
                o["metadata"].get("namespace") == namespace]

    def admit(self, objects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
        return admit(objects, self.objects("Namespace", None), ImageMap())

    def apply(self, objects: list[dict[str, Any]]) -> list[str]:
        return desired.apply(self.store, PLAN, objects)

    def delete(self, kind: str, namespace: str, name: str) -> list[str]:
        return desired.delete(self.store, kind, namespace, name)

    def pod_metadata(self, namespace: str, pod: str, labels: dict[str, str],
                     annotations: dict[str, str]) -> None:
        raise RemoraError(f"pod {pod!r} not found in namespace {namespace!r}", "")

    def logs(self, namespace: str, pod: str, container: str | None, previous: bool,
             tail: int | None) -> LogRef:
        raise RemoraError(f"container {container!r} is not valid for pod {pod}", "")

    def exec_argv(self, namespace: str, pod: str, container: str | None) -> list[str]:
        return ["ip", "netns", "exec", f"pod-{pod}"]

    def nodes(self) -> list[dict[str, Any]]:
        return [{"name": "kf-node1", "index": 1, "subnet": "10.20.0.0/24",
                 "gateway": "10.20.0.1", "nodeIP": "192.168.0.1"}]

    def events(self) -> list[dict[str, Any]]:
        return EventRecorder(self.store).list()

    def managed_fields(self) -> list[dict[str, Any]]:
        return [{"kind": k, "namespace": ns, "name": n, "uid": uid, "entries": entries}
                for k, ns, n, uid, entries in self.store.managed_fields()]

    def put_managed_fields(self, kind: str, namespace: str, name: str, uid: str,
                           entries: list[dict[str, Any]] | None) -> None:
        self.store.put_managed_fields(kind, namespace, name, uid, entries)


@pytest.fixture
def api(tmp_path: Path) -> Handler:
    handler = Handler(StoreBackend(Store(tmp_path / "remora.db")), TOKEN, clock=lambda: 2e9)
    assert call(handler, "POST", "/api/v1/namespaces", NAMESPACE).status == 201
    return handler


def call(api: Handler, method: str, target: str, body: Any = None,
         **headers: str) -> Response:
    hdrs = {"authorization": f"Bearer {TOKEN}", **{k.replace("_", "-"): v
                                                   for k, v in headers.items()}}
    data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(
        body).encode()
    result = api.handle(Request.parse(method, target, hdrs, data))
    assert isinstance(result, Response), result
    return result


def test_discovery_documents(api: Handler) -> None:
    assert call(api, "GET", "/api").json()["versions"] == ["v1"]
    groups = {g["name"]: g for g in call(api, "GET", "/apis").json()["groups"]}
    assert set(groups) == {"apps", "discovery.k8s.io", "apiextensions.k8s.io",
                           "authorization.k8s.io", "authentication.k8s.io",
                           "coordination.k8s.io",
                           "security.istio.io",
                           # the groups of kubectl's prune allowlist (listed empty)
                           "batch", "networking.k8s.io"}
    assert groups["security.istio.io"]["preferredVersion"]["version"] == "v1"
    core = {r["name"]: r for r in call(api, "GET", "/api/v1").json()["resources"]}
    assert core["pods"]["shortNames"] == ["po"] and core["pods"]["namespaced"]
    assert {"pods/log", "pods/exec", "pods/status"} <= set(core)
    assert core["endpoints"]["verbs"] == ["get", "list", "watch"]
    istio = call(api, "GET", "/apis/security.istio.io/v1beta1").json()["resources"]
    assert {r["name"]: r["shortNames"] for r in istio} == {
        "peerauthentications": ["pa"], "authorizationpolicies": ["ap"]}
    assert call(api, "GET", "/version").json()["minor"] == "32"


def test_istio_kinds_are_listed_as_crds(api: Handler) -> None:
    crds = call(api, "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions").json()
    by_name = {c["metadata"]["name"]: c for c in crds["items"]}
    assert set(by_name) == {"peerauthentications.security.istio.io",
                            "authorizationpolicies.security.istio.io"}
    ap = by_name["authorizationpolicies.security.istio.io"]
    assert ap["spec"]["names"]["shortNames"] == ["ap"]
    assert [(v["name"], v["served"], v["storage"]) for v in ap["spec"]["versions"]] == [
        ("v1", True, True), ("v1beta1", True, False)]
    assert ap["metadata"]["uid"] and ap["metadata"]["creationTimestamp"]
    one = call(api, "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
               "peerauthentications.security.istio.io")
    assert one.status == 200 and one.json()["spec"]["names"]["kind"] == "PeerAuthentication"
    assert call(api, "DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                "peerauthentications.security.istio.io").status == 405


def test_openapi_v3_declares_server_side_field_validation(api: Handler) -> None:
    index = call(api, "GET", "/openapi/v3").json()["paths"]
    assert {"api/v1", "apis/apps/v1", "apis/security.istio.io/v1"} <= set(index)
    url = index["apis/apps/v1"]["serverRelativeURL"]
    doc = call(api, "GET", url).json()
    patch = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "apps", "version": "v1",
                                                        "kind": "Deployment"}
    assert {"name": "fieldValidation", "in": "query"}.items() <= patch["parameters"][2].items()
    # kubectl's patcher computes a strategic-merge patch from the schema only when the
    # operation lists that body type (gvkSupportsPatchOpenAPIV3); a CRD's does not
    assert "application/strategic-merge-patch+json" in patch["requestBody"]["content"]
    pa = call(api, "GET", index["apis/security.istio.io/v1"]["serverRelativeURL"]).json()
    assert "application/strategic-merge-patch+json" not in pa["paths"][
        "/apis/security.istio.io/v1/namespaces/{namespace}/peerauthentications/{name}"][
        "patch"]["requestBody"]["content"]


def _refs(node: Any) -> set[str]:
    if isinstance(node, list):
        return set().union(*map(_refs, node)) if node else set()
    if not isinstance(node, dict):
        return set()
    out = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
    return out.union(*map(_refs, node.values()))


def test_openapi_v3_documents_carry_kubernetes_schemas(api: Handler) -> None:
    """Kubernetes 1.32's own schemas, in the v3 form the apiserver serves: kubectl explain
    reads them, and client-side apply takes its patch metadata from them."""
    index = call(api, "GET", "/openapi/v3").json()["paths"]
    docs = {gv: call(api, "GET", entry["serverRelativeURL"]).json()
            for gv, entry in index.items()}
    for gv, doc in docs.items():
        schemas = doc["components"]["schemas"]
        # every reference resolves inside the same document, as kubectl explain follows it
        targets = {r.removeprefix("#/components/schemas/") for r in _refs(doc)}
        assert targets <= set(schemas), (gv, targets - set(schemas))
        assert not any(r.startswith("#/definitions/") for r in _refs(doc)), gv
    apps = docs["apis/apps/v1"]["components"]["schemas"]
    deployment = apps["io.k8s.api.apps.v1.Deployment"]
    assert deployment["x-kubernetes-group-version-kind"] == [
        {"group": "apps", "kind": "Deployment", "version": "v1"}]
    # a $ref with a description beside it is wrapped in allOf (kube-openapi's WrapRefs)
    strategy = apps["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["strategy"]
    assert strategy["allOf"] == [{"$ref": "#/components/schemas/"
                                          "io.k8s.api.apps.v1.DeploymentStrategy"}]
    assert strategy["x-kubernetes-patch-strategy"] == "retainKeys"
    containers = apps["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert {k: v for k, v in containers.items() if k.startswith("x-")} == {
        "x-kubernetes-list-map-keys": ["name"], "x-kubernetes-list-type": "map",
        "x-kubernetes-patch-merge-key": "name", "x-kubernetes-patch-strategy": "merge"}
    ports = apps["io.k8s.api.core.v1.Container"]["properties"]["ports"]
    assert ports["x-kubernetes-list-map-keys"] == ["containerPort", "protocol"]
    assert ports["x-kubernetes-patch-merge-key"] == "containerPort"
    assert apps["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"] == "int-or-string"
    core = docs["api/v1"]["components"]["schemas"]
    kinds = {g["kind"] for s in core.values() for g in s.get("x-kubernetes-group-version-kind",
                                                              []) if g["group"] == ""}
    assert {"Pod", "PodList", "Service", "Namespace", "Endpoints", "Event", "Node",
            "ConfigMap", "Secret"} <= kinds
    assert "io.k8s.api.apps.v1.Deployment" not in core  # each document its own closure
    # the Istio kinds keep no schema: their CRDs carry no structural one
    istio = docs["apis/security.istio.io/v1"]["components"]["schemas"]
    assert not any(g["group"] == "security.istio.io" for s in istio.values()
                   for g in s.get("x-kubernetes-group-version-kind", []))


def test_openapi_v2_as_json_or_gnostic_protobuf(api: Handler) -> None:
    """/openapi/v2: one swagger 2.0 document with every served path and definition, as
    JSON, or as gnostic's protobuf Document when asked for it (client-go asks for nothing
    else); kubectl's reading of it is judged in test_server.py."""
    doc = call(api, "GET", "/openapi/v2")
    assert doc.status == 200 and doc.content_type == "application/json"
    swagger = doc.json()
    assert swagger["swagger"] == "2.0"
    assert swagger["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"][
        "items"] == {"$ref": "#/definitions/io.k8s.api.core.v1.Container"}
    patch = swagger["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"][
        "patch"]
    assert {"name": "fieldValidation", "in": "query", "type": "string",
            "uniqueItems": True} in patch["parameters"]
    assert "application/strategic-merge-patch+json" in patch["consumes"]
    pb = call(api, "GET", "/openapi/v2",
              accept="application/com.github.proto-openapi.spec.v2@v1.0+protobuf")
    assert pb.status == 200
    assert pb.content_type == "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
    assert pb.body.startswith(b"\n\x032.0\x12")  # Document{swagger = 1: "2.0", info = 2}
    etag = dict(pb.headers)["Etag"]
    assert etag == f'"{hashlib.sha512(pb.body).hexdigest().upper()}"'
    assert call(api, "GET", "/openapi/v2", if_none_match=etag,
                accept="application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
                ).status == 304
    with pytest.raises(ValueError, match="patternProperties"):
        gnostic.schema({"type": "object", "patternProperties": {}})


def test_openapi_v3_hash_and_etag(api: Handler) -> None:
    """handler3's caching: the index names each document by the SHA-512 of its bytes, the
    document answers it as its ETag, immutable when asked by that hash, 304 when the
    client has it."""
    url = call(api, "GET", "/openapi/v3").json()["paths"]["api/v1"]["serverRelativeURL"]
    digest = url.partition("?hash=")[2]
    got = call(api, "GET", url)
    assert hashlib.sha512(got.body).hexdigest().upper() == digest
    assert ("Etag", f'"{digest}"') in got.headers
    assert ("Cache-Control", "public, immutable") in got.headers
    plain = call(api, "GET", "/openapi/v3/api/v1")
    assert plain.body == got.body and ("Etag", f'"{digest}"') in plain.headers
    assert all(name != "Cache-Control" for name, _ in plain.headers)
    again = call(api, "GET", url, if_none_match=f'"{digest}"')
    assert again.status == 304 and again.body == b""


@pytest.mark.parametrize(("method", "path", "code", "reason"), [
    ("GET", "/api/v1/namespaces/demo/serviceaccounts", 404, "NotFound"),
    ("GET", "/apis/policy/v1/poddisruptionbudgets", 404, "NotFound"),
    ("GET", "/api/v1/namespaces/demo/configmaps/x", 404, "NotFound"),
    ("POST", "/api/v1/namespaces/demo/configmaps", 404, "NotFound"),
    ("DELETE", "/apis/batch/v1/namespaces/demo/jobs/x", 404, "NotFound"),
    ("GET", "/api/v1/namespaces/demo/pods/x/attach", 404, "NotFound"),
    ("GET", "/api/v1/namespaces/demo/namespaces", 404, "NotFound"),
    ("GET", "/nothing/here", 404, "NotFound"),
    ("DELETE", "/apis/apps/v1/namespaces/demo/replicasets/x", 405, "MethodNotAllowed"),
    ("POST", "/api/v1/namespaces/demo/endpoints", 405, "MethodNotAllowed"),
    ("DELETE", "/api/v1/namespaces/demo/pods", 405, "MethodNotAllowed"),
    ("PUT", "/apis/apps/v1/namespaces/demo/deployments/x/status", 405, "MethodNotAllowed"),
    ("POST", "/api", 405, "MethodNotAllowed"),
    ("GET", "/api/v1/namespaces/demo/pods/nope", 404, "NotFound"),
])
def test_refusals_are_status_objects(api: Handler, method: str, path: str, code: int,
                                     reason: str) -> None:
    resp = call(api, method, path)
    status = resp.json()
    assert resp.status == code
    assert (status["kind"], status["apiVersion"], status["status"], status["code"],
            status["reason"]) == ("Status", "v1", "Failure", code, reason)
    assert status["message"]


def test_prune_allowlist_kinds_list_empty_and_nothing_else(api: Handler) -> None:
    """kubectl apply --prune maps every kind of its default allowlist through discovery
    and lists each by label: the kinds the lab does not store are there, list and watch
    only, listed empty; any other request is the 404 that names what is stored."""
    core = {r["name"]: r for r in call(api, "GET", "/api/v1").json()["resources"]}
    assert core["configmaps"]["verbs"] == ["list", "watch"]
    assert core["persistentvolumes"]["namespaced"] is False
    assert "batch" in [g["name"] for g in call(api, "GET", "/apis").json()["groups"]]
    for path in ("/api/v1/namespaces/demo/configmaps?labelSelector=app%3Dx",
                 "/apis/batch/v1/namespaces/demo/cronjobs", "/api/v1/persistentvolumes",
                 "/apis/networking.k8s.io/v1/ingresses", "/apis/apps/v1/statefulsets"):
        listed = call(api, "GET", path)
        assert listed.status == 200 and listed.json()["items"] == [], path
        assert listed.warnings == []  # a client's (kubectl prune's) list: no noise
    # a person's `kubectl get configmaps` (a Table) is told why it is empty
    shown = call(api, "GET", "/api/v1/namespaces/demo/configmaps",
                 accept="application/json;as=Table;v=v1;g=meta.k8s.io")
    assert shown.json()["rows"] == []
    assert [c["name"] for c in shown.json()["columnDefinitions"]] == ["Name", "Created At"]
    assert shown.warnings and "the lab does not store them" in shown.warnings[0]
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    made = call(api, "POST", "/api/v1/namespaces/demo/configmaps", cm)
    assert made.status == 404
    assert "configmaps: the lab does not serve them; it stores Namespace, Pod" in \
        made.json()["message"]
    assert call(api, "GET", "/api/v1/namespaces/demo/configmaps").json()["items"] == []


def test_token_is_required(api: Handler) -> None:
    for auth in ({}, {"authorization": "Bearer wrong"}):
        resp = api.handle(Request.parse("GET", "/api/v1/pods", auth))
        assert isinstance(resp, Response) and resp.status == 401
        assert resp.json()["reason"] == "Unauthorized"


def test_create_get_conflict_list_with_selectors(api: Handler) -> None:
    made = call(api, "POST", "/apis/apps/v1/namespaces/demo-to/deployments", SERVER)
    assert made.status == 201
    body = made.json()
    assert body["metadata"]["uid"] and body["metadata"]["resourceVersion"]
    assert body["spec"]["replicas"] == 1  # the apiserver's default
    again = call(api, "POST", "/apis/apps/v1/namespaces/demo-to/deployments", SERVER)
    assert again.status == 409 and again.json()["reason"] == "AlreadyExists"
    assert call(api, "POST", "/api/v1/namespaces/demo-to/services", SVC).status == 201
    svc = call(api, "GET", "/api/v1/namespaces/demo-to/services/simple-server-svc").json()
    assert svc["spec"]["clusterIP"].startswith("172.16.")
    listed = call(api, "GET", "/api/v1/services?labelSelector=app%3Dweb").json()
    assert listed["kind"] == "ServiceList" and len(listed["items"]) == 1
    assert call(api, "GET", "/api/v1/services?labelSelector=app%3Ddb").json()["items"] == []
    by_name = call(api, "GET", "/apis/apps/v1/deployments?fieldSelector=metadata.name%3D"
                   "simple-server").json()["items"]
    assert [d["metadata"]["name"] for d in by_name] == ["simple-server"]
    assert call(api, "GET", "/apis/apps/v1/deployments?fieldSelector=metadata.namespace"
                "%21%3Ddemo-to").json()["items"] == []
    assert call(api, "GET", "/api/v1/pods?labelSelector=a+in+(").status == 400
    names = [n["metadata"]["name"] for n in call(api, "GET", "/api/v1/namespaces").json()
             ["items"]]
    assert names == ["default", "demo-to"]


def test_an_invalid_object_is_refused_with_the_fix(api: Handler) -> None:
    bad = json.loads(json.dumps(SVC))
    bad["spec"]["ports"][0]["port"] = 99999
    resp = call(api, "POST", "/api/v1/namespaces/demo-to/services", bad)
    assert resp.status == 422 and resp.json()["reason"] == "Invalid"
    assert "out of range" in resp.json()["message"] and "fix:" in resp.json()["message"]
    assert call(api, "GET", "/api/v1/services").json()["items"] == []
    wrong_ns = call(api, "POST", "/api/v1/namespaces/other/services", SVC)
    assert wrong_ns.status == 400 and "namespace" in wrong_ns.json()["message"]


def test_table_output_as_kubectl_asks_for_it(api: Handler) -> None:
    call(api, "POST", "/api/v1/namespaces/demo-to/services", SVC)
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    t = call(api, "GET", "/api/v1/namespaces/demo-to/services", accept=accept).json()
    assert t["kind"] == "Table" and t["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"].upper() for c in t["columnDefinitions"]] == [
        "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    assert [c["priority"] for c in t["columnDefinitions"]][-1] == 1  # -o wide only
    cells = t["rows"][0]["cells"]
    assert cells[0] == "simple-server-svc" and cells[4] == "18080/TCP"
    assert t["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    assert t["rows"][0]["object"]["metadata"]["namespace"] == "demo-to"


def test_patch_kinds_and_delete(api: Handler) -> None:
    call(api, "POST", "/apis/apps/v1/namespaces/demo-to/deployments", SERVER)
    url = "/apis/apps/v1/namespaces/demo-to/deployments/simple-server"
    before = call(api, "GET", url).json()
    patch = {"spec": {"template": {"metadata": {"annotations": {
        "sidecar.istio.io/interceptionMode": "TPROXY"}}}}}
    resp = call(api, "PATCH", url, patch,
                content_type="application/strategic-merge-patch+json")
    assert resp.status == 200
    after = resp.json()
    assert after["spec"]["template"]["metadata"]["annotations"] == {
        "sidecar.istio.io/interceptionMode": "TPROXY"}
    assert after["spec"]["template"]["spec"]["containers"][0]["name"] == "demo"
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert int(after["metadata"]["resourceVersion"]) > int(
        before["metadata"]["resourceVersion"])
    bad = call(api, "PATCH", url, {"spec": {"template": {"metadata": {"annotations": {
        "sidecar.istio.io/interceptionMode": "BOGUS"}}}}},
        content_type="application/merge-patch+json")
    assert bad.status == 422 and "interceptionMode" in bad.json()["message"]
    scaled = call(api, "PATCH", url, [{"op": "replace", "path": "/spec/replicas", "value": 3}],
                  content_type="application/json-patch+json").json()
    assert scaled["spec"]["replicas"] == 3
    # a write naming a stale resourceVersion is refused, the current one accepted
    stale = dict(after, spec={**after["spec"], "replicas": 5})
    conflict = call(api, "PUT", url, stale)
    assert conflict.status == 409 and conflict.json()["reason"] == "Conflict"
    assert "the object has been modified" in conflict.json()["message"]
    fresh = call(api, "GET", url).json()
    replaced = call(api, "PUT", url, dict(fresh, spec={**fresh["spec"], "replicas": 5}))
    assert replaced.status == 200 and replaced.json()["spec"]["replicas"] == 5
    dry = call(api, "DELETE", url + "?dryRun=All")
    assert dry.status == 200 and call(api, "GET", url).status == 200
    gone = call(api, "DELETE", url)
    assert gone.status == 200 and gone.json()["metadata"]["name"] == "simple-server"
    assert call(api, "GET", url).status == 404
    # server-side apply creates what is not there
    applied = call(api, "PATCH", url + "?fieldManager=kubectl", SERVER,
                   content_type="application/apply-patch+yaml")
    assert applied.status == 201


class RevisionedBackend(StoreBackend):
    """Deployments carry their numbered templates, as the node's Api serves them
    (node/api.py: the `remora` block the API's revision annotation comes from)."""

    def objects(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        items = super().objects(kind, namespace)
        if kind == "Deployment":
            for d in items:
                meta = d["metadata"]
                d["remora"] = {"revisions": desired.revisions(self.store, meta["namespace"],
                                                              meta["name"])}
        return items


def test_rollout_undo_patch_of_a_deployment_without_annotations(tmp_path: Path) -> None:
    # `kubectl rollout undo` (polymorphichelpers/rollback.go getDeploymentPatch) sends a
    # JSON patch that replaces /spec/template and /metadata/annotations; the Deployment
    # has the controller's revision annotation even when its manifest has none, so the
    # replace must find it (it was: 422 "cannot replace '/metadata/annotations': it does
    # not exist", and undo failed for the seed's server.yaml)
    api = Handler(RevisionedBackend(Store(tmp_path / "remora.db")), TOKEN, clock=lambda: 2e9)
    assert call(api, "POST", "/api/v1/namespaces", NAMESPACE).status == 201
    assert call(api, "POST", "/apis/apps/v1/namespaces/demo-to/deployments",
                SERVER).status == 201
    url = "/apis/apps/v1/namespaces/demo-to/deployments/simple-server"
    first = call(api, "GET", url).json()
    assert "annotations" not in SERVER["metadata"]
    assert first["metadata"]["annotations"] == {"deployment.kubernetes.io/revision": "1"}
    patched = call(api, "PATCH", url, {"spec": {"template": {"metadata": {"annotations": {
        "sidecar.istio.io/interceptionMode": "TPROXY"}}}}},
        content_type="application/strategic-merge-patch+json").json()
    assert patched["metadata"]["annotations"] == {"deployment.kubernetes.io/revision": "2"}
    undo = call(api, "PATCH", url, [
        {"op": "replace", "path": "/spec/template", "value": first["spec"]["template"]},
        {"op": "replace", "path": "/metadata/annotations",
         "value": patched["metadata"]["annotations"]}],
        content_type="application/json-patch+json")
    assert undo.status == 200, undo.json()
    back = call(api, "GET", url).json()
    assert "annotations" not in back["spec"]["template"]["metadata"]
    # the earlier template becomes the newest revision (sync.go getNewReplicaSet)
    assert back["metadata"]["annotations"] == {"deployment.kubernetes.io/revision": "3"}
    # served, not stored: the patches carried "2", which would be stale now (`remora get
    # -o yaml` reads the stored object)
    stored = api.backend.objects("Deployment", "demo-to")[0]
    assert "annotations" not in stored["metadata"], stored["metadata"]
    call(api, "PATCH", url, {"metadata": {"annotations": {"team": "a"}}},
         content_type="application/merge-patch+json")
    stored = api.backend.objects("Deployment", "demo-to")[0]
    assert stored["metadata"]["annotations"] == {"team": "a"}
    assert call(api, "GET", url).json()["metadata"]["annotations"] == {
        "deployment.kubernetes.io/revision": "3", "team": "a"}


def test_watch_log_and_exec_requests_become_streams(api: Handler) -> None:
    call(api, "POST", "/api/v1/namespaces/demo-to/services", SVC)
    watch = api.handle(Request.parse("GET", "/api/v1/namespaces/demo-to/services?watch=1&"
                                     "timeoutSeconds=5",
                                     {"authorization": f"Bearer {TOKEN}"}))
    assert isinstance(watch, Watch) and watch.timeout == 5.0
    _, first = api.watch_start(watch)
    assert [(k, p[1]["metadata"]["name"]) for k, p in first] == [("ADDED",
                                                                  "simple-server-svc")]
    line = json.loads(api.watch_event(watch, "ADDED", first[0][1], True))
    assert line["type"] == "ADDED" and line["object"]["kind"] == "Service"
    since = int(first[0][1][1]["metadata"]["resourceVersion"])
    call(api, "DELETE", "/api/v1/namespaces/demo-to/services/simple-server-svc")
    later = api.handle(Request.parse(
        "GET", f"/api/v1/namespaces/demo-to/services?watch=true&resourceVersion={since}",
        {"authorization": f"Bearer {TOKEN}"}))
    assert isinstance(later, Watch)
    _, replay = api.watch_start(later)
    assert [(k, p[1]["metadata"]["name"]) for k, p in replay] == [("DELETED",
                                                                   "simple-server-svc")]
    missing = call(api, "GET", "/api/v1/namespaces/demo-to/pods/p/log?follow=true")
    assert missing.status == 404 and missing.json()["message"] == 'pods "p" not found'


def test_delete_options_in_the_body_are_honoured(api: Handler) -> None:
    # kubectl sends dryRun and propagationPolicy as a DeleteOptions body, not the query
    call(api, "POST", "/apis/apps/v1/namespaces/demo-to/deployments", SERVER)
    call(api, "POST", "/api/v1/namespaces/demo-to/services", SVC)
    deploy = "/apis/apps/v1/namespaces/demo-to/deployments/simple-server"
    svc = "/api/v1/namespaces/demo-to/services/simple-server-svc"
    dry = {"kind": "DeleteOptions", "apiVersion": "v1", "dryRun": ["All"],
           "propagationPolicy": "Background"}
    for url in (deploy, svc, "/api/v1/namespaces/demo-to"):
        resp = call(api, "DELETE", url, dry)
        assert resp.status == 200, resp.json()
        assert call(api, "GET", url).status == 200  # nothing was deleted
    assert call(api, "DELETE", svc, {**dry, "dryRun": ["Bogus"]}).status == 422
    orphan = call(api, "DELETE", deploy, {"kind": "DeleteOptions", "apiVersion": "v1",
                                          "propagationPolicy": "Orphan"})
    assert orphan.status == 422 and "Orphan" in orphan.json()["message"]
    assert call(api, "GET", deploy).status == 200
    legacy = call(api, "DELETE", deploy + "?orphanDependents=true")
    assert legacy.status == 422 and call(api, "GET", deploy).status == 200
    # a Service has no dependents in the lab: Orphan is the same as Background
    assert call(api, "DELETE", svc, {"propagationPolicy": "Orphan"}).status == 200
    assert call(api, "GET", svc).status == 404
    assert call(api, "DELETE", deploy, {"propagationPolicy": "Foreground"}).status == 200
    assert call(api, "GET", deploy).status == 404


def test_the_default_namespace_may_not_be_deleted(api: Handler) -> None:
    for ns in ("default", "kube-system"):
        resp = call(api, "DELETE", f"/api/v1/namespaces/{ns}")
        assert resp.status == 403 and resp.json()["reason"] == "Forbidden"
        assert resp.json()["message"] == (f'namespaces "{ns}" is forbidden: this namespace '
                                          "may not be deleted")


def test_nothing_is_created_in_a_namespace_that_does_not_exist(api: Handler) -> None:
    svc = json.loads(json.dumps(SVC))
    del svc["metadata"]["namespace"]
    for query in ("", "?dryRun=All"):
        resp = call(api, "POST", f"/api/v1/namespaces/nosuchns/services{query}", svc)
        assert resp.status == 404 and resp.json()["reason"] == "NotFound"
        assert resp.json()["message"] == 'namespaces "nosuchns" not found'
    put = call(api, "PUT", "/api/v1/namespaces/nosuchns/services/simple-server-svc", svc)
    assert put.status == 404
    names = [n["metadata"]["name"] for n in call(api, "GET", "/api/v1/namespaces").json()
             ["items"]]
    assert names == ["default", "demo-to"]  # no phantom namespace
    assert call(api, "POST", "/api/v1/namespaces/default/services", svc).status == 201


class RunningPods(StoreBackend):
    """A store whose bare pods the runtime has made (rows with the server's spec.nodeName
    and an injected sidecar), after RUN_AFTER reads of the pods."""

    def __init__(self, store: Store, run_after: int = 0) -> None:
        super().__init__(store)
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.run_after = run_after

    def objects(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        if kind != "Pod":
            return super().objects(kind, namespace)
        if self.run_after > 0:
            self.run_after -= 1
        else:
            for p in self.store.list_objects("Pod"):
                key = (p["metadata"]["namespace"], p["metadata"]["name"])
                if key not in self.rows:
                    row = json.loads(json.dumps(p))
                    row["metadata"].update(uid="u-1", creationTimestamp=2e9)
                    row["spec"]["nodeName"] = "kf-node1"
                    row["spec"]["containers"].append({"name": "istio-proxy",
                                                      "image": "proxy"})
                    row["status"] = {"phase": "Running", "ready": True}
                    self.rows[key] = row
        return [json.loads(json.dumps(r)) for (ns, _), r in self.rows.items()
                if namespace in (None, ns)]

    def logs(self, namespace: str, pod: str, container: str | None, previous: bool,
             tail: int | None) -> LogRef:
        """The current log is a file (LOG_TEXT); the container never restarted, so there
        is no previous log file."""
        path = self.store.path.parent / ("app.log.1" if previous else "app.log")
        if not previous:
            path.write_text(LOG_TEXT)
        return LogRef(path.read_text() if path.exists() else "", path, container or "r1")

    def pod_metadata(self, namespace: str, pod: str, labels: dict[str, str],
                     annotations: dict[str, str]) -> None:
        meta = self.rows[(namespace, pod)]["metadata"]
        meta["labels"], meta["annotations"] = labels, annotations


LOG_TEXT = "first line\nsecond line\n"
POD = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "r1", "namespace": "demo-to", "labels": {"run": "r1"}},
       "spec": {"containers": [{"name": "r1", "image": "vasth/simple-server"}]}}


def test_a_bare_pod_create_answers_201_before_the_runtime_made_it(tmp_path: Path) -> None:
    api = Handler(RunningPods(Store(tmp_path / "remora.db"), run_after=1000), TOKEN,
                  clock=lambda: 2e9)
    api.pod_wait = 0
    call(api, "POST", "/api/v1/namespaces", NAMESPACE)
    made = call(api, "POST", "/api/v1/namespaces/demo-to/pods", POD)
    assert made.status == 201, made.json()
    body = made.json()
    assert body["metadata"]["name"] == "r1" and body["status"]["phase"] == "Pending"
    assert body["metadata"]["creationTimestamp"] == "2033-05-18T03:33:20Z"


def test_a_bare_pod_takes_labels_and_refuses_spec_changes(tmp_path: Path) -> None:
    api = Handler(RunningPods(Store(tmp_path / "remora.db")), TOKEN, clock=lambda: 2e9)
    call(api, "POST", "/api/v1/namespaces", NAMESPACE)
    assert call(api, "POST", "/api/v1/namespaces/demo-to/pods", POD).status == 201
    url = "/api/v1/namespaces/demo-to/pods/r1"
    smp = "application/strategic-merge-patch+json"
    labelled = call(api, "PATCH", url, {"metadata": {"labels": {"tier": "qa"},
                                                     "annotations": {"note": "x"}}},
                    content_type=smp)
    assert labelled.status == 200, labelled.json()
    assert labelled.warnings == []  # no "unknown field spec.nodeName" for the server's own
    got = call(api, "GET", url).json()
    assert got["metadata"]["labels"] == {"run": "r1", "tier": "qa"}
    assert got["metadata"]["annotations"] == {"note": "x"}
    image = call(api, "PATCH", url, {"spec": {"containers": [{"name": "r1",
                                                              "image": "busybox"}]}},
                 content_type=smp)
    assert image.status == 422 and "image" in image.json()["message"]
    other = call(api, "PATCH", url, [{"op": "add", "path": "/spec/hostname", "value": "h"}],
                 content_type="application/json-patch+json")
    assert other.status == 422
    assert "pod updates may not change fields other than" in other.json()["message"]
    assert call(api, "GET", url).json()["spec"]["containers"][0]["image"] == \
        "vasth/simple-server"


def test_a_pods_label_update_is_recorded_in_its_managed_fields(tmp_path: Path) -> None:
    """`kubectl label pod r1 a=b` (a merge patch, User-Agent kubectl-label/...) is an
    Update by manager kubectl-label owning f:metadata.f:labels.f:a, as the apiserver's
    field manager records any write; the creator keeps what it owns. Before, a pod's
    own updates left its managedFields as they were."""
    api = Handler(RunningPods(Store(tmp_path / "remora.db")), TOKEN, clock=lambda: 2e9)
    call(api, "POST", "/api/v1/namespaces", NAMESPACE)
    made = call(api, "POST", "/api/v1/namespaces/demo-to/pods?fieldManager=kubectl-run",
                POD)
    assert made.status == 201
    url = "/api/v1/namespaces/demo-to/pods/r1"
    agent = "kubectl-label/v1.32.4 (linux/amd64) kubernetes/59526cd"
    labelled = call(api, "PATCH", url, {"metadata": {"labels": {"a": "b"}}},
                    content_type="application/merge-patch+json", user_agent=agent)
    assert labelled.status == 200, labelled.json()

    def held(obj: dict[str, Any]) -> dict[str, Any]:
        return {e["manager"]: (e["operation"], e["apiVersion"], e["fieldsV1"])
                for e in obj["metadata"]["managedFields"]}

    got = held(call(api, "GET", url).json())
    assert got["kubectl-label"] == ("Update", "v1",
                                    {"f:metadata": {"f:labels": {"f:a": {}}}})
    assert got["kubectl-run"][2]["f:metadata"]["f:labels"] == {".": {}, "f:run": {}}
    assert held(labelled.json()) == got
    # a dry run shows what it would record and records nothing
    dry = call(api, "PATCH", url + "?dryRun=All", {"metadata": {"labels": {"c": "d"}}},
               content_type="application/merge-patch+json", user_agent=agent)
    assert held(dry.json())["kubectl-label"][2] == {
        "f:metadata": {"f:labels": {"f:a": {}, "f:c": {}}}}
    assert held(call(api, "GET", url).json()) == got
    # removing the label takes it from its manager (which then holds nothing)
    call(api, "PATCH", url, {"metadata": {"labels": {"a": None}}},
         content_type="application/merge-patch+json", user_agent=agent)
    assert "kubectl-label" not in held(call(api, "GET", url).json())


def test_protobuf_bodies_are_read_as_their_json(api: Handler) -> None:
    # what `kubectl create namespace cap-ns` sent: the protobuf envelope around a Namespace
    body = (pb.DATA / "namespace.bin").read_bytes()
    resp = call(api, "POST", "/api/v1/namespaces", body,
                content_type="application/vnd.kubernetes.protobuf")
    assert resp.status == 201, resp.body
    assert call(api, "GET", "/api/v1/namespaces/cap-ns").json()["status"] == {
        "phase": "Active"}
    # a Deployment for 0 replicas (*int32: kept at 0, not defaulted to 1), with a field
    # number the lab's schema does not know: warned about, as an unknown JSON field is
    template = pb.ld(3, pb.ld(1, pb.meta("", app="z")),
                     pb.ld(2, pb.ld(2, pb.ld(1, "demo"), pb.ld(2, "vasth/simple-server"))))
    spec = pb.ld(2, pb.vi(1, 0), pb.ld(2, pb.ld(1, pb.ld(1, "app"), pb.ld(2, "z"))), template,
                 pb.ld(999, "from a newer client"))
    made = call(api, "POST", "/apis/apps/v1/namespaces/demo-to/deployments",
                pb.envelope("apps/v1", "Deployment", pb.ld(1, pb.meta("z")) + spec),
                content_type="application/vnd.kubernetes.protobuf")
    assert made.status == 201, made.body
    assert made.json()["spec"]["replicas"] == 0
    assert any("unknown field number 999" in w and "DeploymentSpec at spec" in w
               for w in made.warnings), made.warnings
    # PUT .../scale of a Scale for 3, then for 0: autoscaling/v1 leaves replicas 0 out
    url = "/apis/apps/v1/namespaces/demo-to/deployments/z/scale"
    for replicas, wire in ((3, pb.ld(2, pb.vi(1, 3))), (0, pb.ld(2, b""))):
        scaled = call(api, "PUT", url, pb.envelope("autoscaling/v1", "Scale",
                                                   pb.ld(1, pb.meta("z")) + wire),
                      content_type="application/vnd.kubernetes.protobuf")
        assert scaled.status == 200 and scaled.json()["spec"]["replicas"] == replicas
    # a kind the lab does not decode: 415 naming it
    secret = call(api, "POST", "/api/v1/namespaces", pb.envelope("v1", "Secret", b""),
                  content_type="application/vnd.kubernetes.protobuf")
    assert secret.status == 415 and "Secret" in secret.json()["message"]


def test_derived_endpoints_carry_rfc3339_timestamps(api: Handler) -> None:
    call(api, "POST", "/api/v1/namespaces/demo-to/services", SVC)
    svc = call(api, "GET", "/api/v1/namespaces/demo-to/services/simple-server-svc").json()
    for url in ("/api/v1/namespaces/demo-to/endpoints/simple-server-svc",
                "/apis/discovery.k8s.io/v1/namespaces/demo-to/endpointslices/"
                "simple-server-svc-remora"):
        created = call(api, "GET", url).json()["metadata"]["creationTimestamp"]
        assert isinstance(created, str) and created == svc["metadata"]["creationTimestamp"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created)


def test_exec_needs_websocket_and_refuses_spdy(tmp_path: Path) -> None:
    api = Handler(RunningPods(Store(tmp_path / "remora.db")), TOKEN, clock=lambda: 2e9)
    call(api, "POST", "/api/v1/namespaces", NAMESPACE)
    missing = call(api, "GET", "/api/v1/namespaces/demo-to/pods/p/exec?command=ls",
                   upgrade="websocket", sec_websocket_protocol="v5.channel.k8s.io")
    assert missing.status == 404  # a valid upgrade, but no such pod
    call(api, "POST", "/api/v1/namespaces/demo-to/pods", POD)
    url = "/api/v1/namespaces/demo-to/pods/r1/exec?command=ls&stdout=true"
    spdy = call(api, "POST", url, upgrade="SPDY/3.1", connection="Upgrade")
    assert spdy.status == 400 and "v5.channel.k8s.io" in spdy.json()["message"]
    plain = call(api, "POST", url)
    assert plain.status == 400 and "WebSocket" in plain.json()["message"]
    old = call(api, "GET", url, upgrade="websocket",
               sec_websocket_protocol="channel.k8s.io")
    assert old.status == 400 and "v5.channel.k8s.io" in old.json()["message"]
    # an unknown container is named on either upgrade (kubectl tries WebSocket, then SPDY)
    for headers in ({"upgrade": "websocket", "sec_websocket_protocol": "v5.channel.k8s.io"},
                    {"upgrade": "SPDY/3.1", "connection": "Upgrade"}):
        bad = call(api, "POST", url + "&container=nope", **headers)
        assert bad.status == 400
        assert bad.json()["message"] == "container nope is not valid for pod r1"
    ok = api.handle(Request.parse("GET", url + "&container=istio-proxy", {
        "authorization": f"Bearer {TOKEN}", "upgrade": "websocket",
        "sec-websocket-protocol": "v5.channel.k8s.io"}))
    assert not isinstance(ok, Response)


def test_portforward_is_the_websocket_tunnel_and_refuses_spdy(tmp_path: Path) -> None:
    api = Handler(RunningPods(Store(tmp_path / "remora.db")), TOKEN, clock=lambda: 2e9)
    call(api, "POST", "/api/v1/namespaces", NAMESPACE)
    tunnel = {"upgrade": "websocket", "sec_websocket_protocol": "SPDY/3.1+portforward.k8s.io"}
    url = "/api/v1/namespaces/demo-to/pods/r1/portforward"
    assert call(api, "POST", url, **tunnel).status == 404  # no such pod
    call(api, "POST", "/api/v1/namespaces/demo-to/pods", POD)
    # kubectl falls back to SPDY when the WebSocket upgrade fails: that is named
    spdy = call(api, "POST", url, upgrade="SPDY/3.1", connection="Upgrade")
    assert spdy.status == 400 and "SPDY/3.1+portforward.k8s.io" in spdy.json()["message"]
    ok = api.handle(Request.parse("POST", url, {
        "authorization": f"Bearer {TOKEN}", "upgrade": "websocket",
        "sec-websocket-protocol": "SPDY/3.1+portforward.k8s.io"}))
    assert isinstance(ok, PortForward) and ok.pod == "r1" and ok.uid == "u-1"
    # discovery lists it, as kubectl's api-resources and auth checks read it
    names = [r["name"] for r in call(api, "GET", "/api/v1").json()["resources"]]
    assert "pods/portforward" in names


def test_istio_objects_are_served_in_the_version_asked_for(api: Handler) -> None:
    pa = {"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
          "metadata": {"name": "strict", "namespace": "demo-to"},
          "spec": {"mtls": {"mode": "STRICT"}}}
    made = call(api, "POST", "/apis/security.istio.io/v1beta1/namespaces/demo-to/"
                "peerauthentications", pa)
    assert made.status == 201 and made.json()["apiVersion"] == "security.istio.io/v1beta1"
    got = {}
    for version in ("v1", "v1beta1"):
        url = f"/apis/security.istio.io/{version}/namespaces/demo-to/peerauthentications"
        got[version] = call(api, "GET", url + "/strict").json()
        assert got[version]["apiVersion"] == f"security.istio.io/{version}"
        listed = call(api, "GET", url).json()
        assert listed["apiVersion"] == f"security.istio.io/{version}"
        assert [i["apiVersion"] for i in listed["items"]] == [f"security.istio.io/{version}"]
    # one object: reading it in the other version is not a change
    assert got["v1"]["metadata"]["resourceVersion"] == \
        got["v1beta1"]["metadata"]["resourceVersion"]


def test_unsupported_deployment_fields_are_refused_by_name_paused_is_kept(api: Handler) -> None:
    url = "/apis/apps/v1/namespaces/demo-to/deployments"
    other = json.loads(json.dumps(SERVER))
    other["spec"]["strategy"] = {"type": "BlueGreen"}
    refused = call(api, "POST", url, other)
    assert refused.status == 422 and "spec.strategy.type" in refused.json()["message"]
    assert 'supported values: "Recreate", "RollingUpdate"' in refused.json()["message"]
    assert call(api, "POST", url, SERVER).status == 201
    # spec.paused is honoured now (`kubectl rollout pause|resume`): stored and served
    pause = call(api, "PATCH", url + "/simple-server", {"spec": {"paused": True}},
                 content_type="application/strategic-merge-patch+json")
    assert pause.status == 200 and pause.json()["spec"]["paused"] is True
    assert call(api, "GET", url + "/simple-server").json()["spec"]["paused"] is True
    resume = call(api, "PATCH", url + "/simple-server", {"spec": {"paused": None}},
                  content_type="application/strategic-merge-patch+json")
    assert resume.status == 200
    assert "paused" not in call(api, "GET", url + "/simple-server").json()["spec"]


def test_rolling_update_limits_are_kept_served_and_checked(api: Handler) -> None:
    url = "/apis/apps/v1/namespaces/demo-to/deployments"
    # served as 1/0 whatever was given before: now stored, served, and (the node's
    # controller, tests/unit/node/test_controller.py) honoured
    surge = json.loads(json.dumps(SERVER))
    surge["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%"}}
    made = call(api, "POST", url, surge)
    assert made.status == 201, made.body
    assert made.json()["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {
        "maxSurge": "50%", "maxUnavailable": 0}}  # the lab's default for the one left out
    patched = call(api, "PATCH", url + "/simple-server", {"spec": {"strategy": {
        "rollingUpdate": {"maxUnavailable": 2}}}},
        content_type="application/strategic-merge-patch+json")
    assert patched.json()["spec"]["strategy"]["rollingUpdate"] == {
        "maxSurge": "50%", "maxUnavailable": 2}
    assert call(api, "GET", url + "/simple-server").json()["spec"]["strategy"][
        "rollingUpdate"] == {"maxSurge": "50%", "maxUnavailable": 2}
    # values the apiserver refuses (ValidateRollingUpdateDeployment), named
    for rolling, field, why in (
            ({"maxSurge": 0, "maxUnavailable": 0}, "maxUnavailable", "may not be 0 when"),
            ({"maxUnavailable": "120%"}, "maxUnavailable", "greater than 100%"),
            ({"maxSurge": "lots"}, "maxSurge", "percent string"),
            ({"maxSurge": -1}, "maxSurge", "out of range")):
        bad = json.loads(json.dumps(SERVER))
        bad["metadata"]["name"] = "bad"
        bad["spec"]["strategy"] = {"rollingUpdate": rolling}
        refused = call(api, "POST", url, bad)
        assert refused.status == 422, (rolling, refused.body)
        message = refused.json()["message"]
        assert f"spec.strategy.rollingUpdate.{field}" in message and why in message, message


def test_recreate_strategy_is_kept_and_served(api: Handler) -> None:
    url = "/apis/apps/v1/namespaces/demo-to/deployments"
    recreate = json.loads(json.dumps(SERVER))
    recreate["spec"]["strategy"] = {"type": "Recreate"}
    made = call(api, "POST", url, recreate)
    assert made.status == 201, made.body
    assert made.json()["spec"]["strategy"] == {"type": "Recreate"}  # no rollingUpdate
    # back to RollingUpdate (kubectl patch), and again to Recreate: the lab stores no
    # defaulted rollingUpdate, so naming the type alone switches it (as `kubectl apply`
    # does on a cluster through the strategy's retainKeys); clearing the served
    # rollingUpdate as well (what a plain patch needs on a cluster) works too
    rolled = call(api, "PATCH", url + "/simple-server", {"spec": {"strategy": {
        "type": "RollingUpdate"}}}, content_type="application/strategic-merge-patch+json")
    assert rolled.json()["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    kept = call(api, "PATCH", url + "/simple-server", {"spec": {"strategy": {
        "type": "Recreate"}}}, content_type="application/strategic-merge-patch+json")
    back = call(api, "PATCH", url + "/simple-server", {"spec": {"strategy": {
        "type": "Recreate", "rollingUpdate": None}}},
        content_type="application/strategic-merge-patch+json")
    assert back.status == 200 and back.json()["spec"]["strategy"] == {"type": "Recreate"}
    assert kept.status == 200 and kept.json()["spec"]["strategy"] == {"type": "Recreate"}


def test_immutable_fields_cannot_change(api: Handler) -> None:
    call(api, "POST", "/api/v1/namespaces/demo-to/services", SVC)
    svc = "/api/v1/namespaces/demo-to/services/simple-server-svc"
    ip = call(api, "GET", svc).json()["spec"]["clusterIP"]
    moved = call(api, "PATCH", svc, {"spec": {"clusterIP": "172.16.0.250"}},
                 content_type="application/merge-patch+json")
    assert moved.status == 422
    assert moved.json()["message"] == ('Service "simple-server-svc" is invalid: '
                                       'spec.clusterIPs[0]: Invalid value: ["172.16.0.250"]: '
                                       "may not change once set")
    assert call(api, "GET", svc).json()["spec"]["clusterIP"] == ip
    same = call(api, "PATCH", svc, {"spec": {"clusterIP": ip, "ports": [{"port": 18081}]}},
                content_type="application/merge-patch+json")
    assert same.status == 200, same.json()
    call(api, "POST", "/apis/apps/v1/namespaces/demo-to/deployments", SERVER)
    deploy = "/apis/apps/v1/namespaces/demo-to/deployments/simple-server"
    selector = call(api, "PATCH", deploy, {"spec": {"selector": {"matchLabels": {
        "web": "other"}}}}, content_type="application/merge-patch+json")
    assert selector.status == 422 and "spec.selector" in selector.json()["message"]
    assert "field is immutable" in selector.json()["message"]


def test_log_options(tmp_path: Path) -> None:
    api = Handler(RunningPods(Store(tmp_path / "remora.db")), TOKEN, clock=lambda: 2e9)
    call(api, "POST", "/api/v1/namespaces", NAMESPACE)
    call(api, "POST", "/api/v1/namespaces/demo-to/pods", POD)
    url = "/api/v1/namespaces/demo-to/pods/r1/log"
    assert call(api, "GET", url).body == LOG_TEXT.encode()
    assert call(api, "GET", url + "?limitBytes=5").body == b"first"
    assert call(api, "GET", url + "?limitBytes=0").status == 422
    followed = api.handle(Request.parse("GET", url + "?follow=true&limitBytes=5",
                                        {"authorization": f"Bearer {TOKEN}"}))
    assert isinstance(followed, LogStream)
    assert (followed.text, followed.remaining) == ("first", 0)
    for query in ("sinceSeconds=10", "sinceTime=2026-01-01T00:00:00Z", "timestamps=true"):
        refused = call(api, "GET", f"{url}?{query}")
        assert refused.status == 400 and "not supported by the lab" in \
            refused.json()["message"]
    previous = call(api, "GET", url + "?previous=true")
    assert previous.status == 400
    assert previous.json()["message"] == ('previous terminated container "r1" in pod "r1" '
                                          "not found")


def test_events_are_the_recorded_ones(api: Handler) -> None:
    """The served Events are the node's records (remora.node.events), selected by the
    fields `kubectl describe` asks for; one of a pod that is gone is still there."""
    store = api.backend.store  # type: ignore[attr-defined]
    recorder = EventRecorder(store)
    pod = Involved("Pod", "demo-to", "gone-1", "u-1", field_path="spec.containers{app}")
    deploy = Involved("Deployment", "demo-to", "web", "u-2", "apps/v1")
    recorder.record(pod, "Started", "Started container app", component="kubelet",
                    host="kf-node1")
    recorder.record(deploy, "ScalingReplicaSet", "Scaled up replica set web-abc to 3",
                    component="deployment-controller")
    listed = call(api, "GET", "/api/v1/namespaces/demo-to/events").json()["items"]
    assert [e["reason"] for e in listed] == ["Started", "ScalingReplicaSet"]
    selector = ("involvedObject.name=web,involvedObject.namespace=demo-to,"
                "involvedObject.kind=Deployment,involvedObject.uid=u-2")
    mine = call(api, "GET", f"/api/v1/namespaces/demo-to/events?fieldSelector={selector}")
    assert [e["message"] for e in mine.json()["items"]] == [
        "Scaled up replica set web-abc to 3"]
    assert call(api, "GET", "/api/v1/namespaces/other/events").json()["items"] == []
    name = listed[0]["metadata"]["name"]
    one = call(api, "GET", f"/api/v1/namespaces/demo-to/events/{name}")
    assert one.status == 200
    assert one.json()["source"] == {"component": "kubelet", "host": "kf-node1"}


def test_a_fetched_object_put_back_keeps_the_stored_spec(api: Handler) -> None:
    """A PUT of what GET served (defaults spelled out: replicas, strategy,
    revisionHistoryLimit, progressDeadlineSeconds; a Service's clusterIP(s), type and
    ports' protocol/targetPort) compares equal to the stored spec in defaulted form, as
    the apiserver's: the store keeps its spec, the generation and resourceVersion stay.
    A real change still moves the generation."""
    url = "/apis/apps/v1/namespaces/demo-to/deployments/simple-server"
    assert call(api, "POST", "/apis/apps/v1/namespaces/demo-to/deployments",
                SERVER).status == 201
    before = call(api, "GET", url).json()
    stored = api.backend.objects("Deployment", "demo-to")[0]["spec"]
    assert before["spec"]["revisionHistoryLimit"] == 10 and "strategy" in before["spec"]
    assert "revisionHistoryLimit" not in stored and "strategy" not in stored
    after = call(api, "PUT", url, before).json()
    assert after["metadata"]["generation"] == before["metadata"]["generation"] == 1
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert api.backend.objects("Deployment", "demo-to")[0]["spec"] == stored
    # a value the served form would read otherwise is no default: validated, refused
    odd = call(api, "PUT", url, {**after, "spec": {**after["spec"], "strategy": {
        "type": "BlueGreen"}}})
    assert odd.status == 422 and "spec.strategy.type" in odd.json()["message"]
    scaled = call(api, "PUT", url, {**after, "spec": {**after["spec"], "replicas": 2}})
    assert scaled.json()["metadata"]["generation"] == 2

    svc_url = "/api/v1/namespaces/demo-to/services/simple-server-svc"
    assert call(api, "POST", "/api/v1/namespaces/demo-to/services", SVC).status == 201
    served = call(api, "GET", svc_url).json()
    spelled = {**served, "spec": {**served["spec"], "sessionAffinity": "None", "ports": [
        {"port": 18080, "protocol": "TCP", "targetPort": 18080}]}}
    again = call(api, "PUT", svc_url, spelled).json()
    # a Service has no generation (its registry strategy sets none)
    assert "generation" not in again["metadata"]
    assert again["metadata"]["resourceVersion"] == served["metadata"]["resourceVersion"]
    assert again["spec"] == served["spec"]


def test_a_namespace_carries_its_name_label(api: Handler) -> None:
    got = call(api, "GET", "/api/v1/namespaces/demo-to").json()["metadata"]
    assert got["labels"]["kubernetes.io/metadata.name"] == "demo-to"
    assert "generation" not in got
    assert call(api, "GET", "/api/v1/namespaces/default").json()["metadata"]["labels"] == {
        "kubernetes.io/metadata.name": "default"}
