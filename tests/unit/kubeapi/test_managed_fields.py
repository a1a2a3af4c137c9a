"""managed_fields.py's pieces and the API's server-side apply requests that kubectl does
not send (a missing fieldManager, keys given twice, a version or managedFields in the
configuration, an Istio kind without a schema), against structured-merge-diff's and the
apiserver's wording."""

from __future__ import annotations

import json

from remora.kubeapi import managed_fields as mf
from remora.kubeapi import patches
from remora.kubeapi.handlers import Handler
from tests.unit.kubeapi.test_handlers import SERVER, api, call  # noqa: F401  (fixture)

APPLY = "application/apply-patch+yaml"
URL = "/apis/apps/v1/namespaces/demo-to/deployments/simple-server"
DEPLOY = mf.kind_schema("apps", "v1", "Deployment")


def test_paths_print_and_encode_as_the_apiserver() -> None:
    path = ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"a"}', "f:ports",
            'k:{"containerPort":80,"protocol":"TCP"}', "f:containerPort")
    assert mf.path_string(path) == ('.spec.template.spec.containers[name="a"].ports'
                                    '[containerPort=80,protocol="TCP"].containerPort')
    assert mf.path_string(("f:metadata", "f:finalizers", 'v:"x"')) == \
        '.metadata.finalizers[="x"]'
    fields = {("f:metadata", "f:labels"), ("f:metadata", "f:labels", "f:app"),
              ("f:spec", "f:replicas")}
    trie = mf.to_fields_v1(fields)
    assert trie == {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {"f:replicas": {}}}
    assert mf.from_fields_v1(trie) == fields


def test_field_set_of_an_applied_configuration() -> None:
    config = {"metadata": {"labels": {"app": "a"}},
              "spec": {"selector": {"matchLabels": {"app": "a"}},
                       "template": {"spec": {"containers": [
                           {"name": "c", "args": ["x", "y"],
                            "ports": [{"containerPort": 80}]}]}}}}
    assert sorted(mf.leaves(DEPLOY, config)) == sorted([
        ("f:metadata", "f:labels", "f:app"),
        ("f:spec", "f:selector"),  # LabelSelector is an atomic map
        ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"c"}'),
        ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"c"}', "f:args"),
        ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"c"}', "f:name"),
        ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"c"}', "f:ports",
         'k:{"containerPort":80,"protocol":"TCP"}'),
        ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"c"}', "f:ports",
         'k:{"containerPort":80,"protocol":"TCP"}', "f:containerPort")])
    assert mf.validate(DEPLOY, {"spec": {"template": {"spec": {"containers": [
        {"image": "x"}, {"bad": 1}]}}}}) == [  # the list is left at its first bad item
        ".spec.template.spec.containers: element 0: associative list with keys has an "
        'element that omits key field "name" (and doesn\'t have default value)']
    assert mf.validate(DEPLOY, {"spec": {"template": {"spec": {"containers": [
        {"name": "a"}, {"name": "a"}]}}}}) == [
        '.spec.template.spec.containers: duplicate entries for key [name="a"]']
    # a map's entries are members even with children (resources.limits is a map of
    # scalars; the labels' values are scalars too)
    assert ("f:metadata", "f:annotations", "f:x") in set(mf.leaves(DEPLOY, {
        "metadata": {"annotations": {"x": "1"}}}))


def test_a_field_two_appliers_hold_stays_until_both_drop_it() -> None:
    base = {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "n"}}
    one = {**base, "metadata": {**base["metadata"], "labels": {"a": "1", "b": "2"}}}
    first = mf.apply(DEPLOY, [], None, one, "m1", "apps/v1", False, 1)
    second = mf.apply(DEPLOY, first.entries, first.obj,
                      {**base, "metadata": {**base["metadata"], "labels": {"b": "2"}}},
                      "m2", "apps/v1", False, 2)
    assert second.obj["metadata"]["labels"] == {"a": "1", "b": "2"}
    # m1 drops b: m2 still applies it, so it stays; a goes
    third = mf.apply(DEPLOY, second.entries, second.obj,
                     {**base, "metadata": {**base["metadata"], "labels": {"c": "3"}}},
                     "m1", "apps/v1", False, 3)
    assert third.obj["metadata"]["labels"] == {"b": "2", "c": "3"}
    # m2 drops b too: gone, and the labels map it emptied with it
    fourth = mf.apply(DEPLOY, third.entries, third.obj, base, "m2", "apps/v1", False, 4)
    assert fourth.obj["metadata"]["labels"] == {"c": "3"}
    fifth = mf.apply(DEPLOY, fourth.entries, fourth.obj, base, "m1", "apps/v1", False, 5)
    assert "labels" not in fifth.obj["metadata"]
    # an applier of an empty configuration owns nothing and leaves managedFields
    assert fifth.entries == []


def test_duplicate_keys_as_go_yaml_reports_them() -> None:
    body = b"a: 1\nb:\n  c: 1\n  c: 2\na: 3\n"
    assert patches.duplicate_keys(body) == ['line 4: key "c" already set in map',
                                            'line 5: key "a" already set in map']
    assert patches.duplicate_keys(b"{not yaml: [") == []


def test_apply_requests_refused_as_the_apiserver(api: Handler) -> None:  # noqa: F811
    body = json.dumps(SERVER).encode()
    missing = call(api, "PATCH", URL, body, content_type=APPLY)
    assert (missing.status, missing.json()["message"]) == (
        422, 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is '
        "required for apply patch")
    wrong = call(api, "PATCH", URL + "?fieldManager=m",
                 json.dumps({**SERVER, "apiVersion": "apps/v1beta1"}).encode(),
                 content_type=APPLY)
    assert (wrong.status, wrong.json()["message"]) == (
        400, "Incorrect version specified in apply patch. Specified patch version: "
        "apps/v1beta1, expected: apps/v1")
    managed = call(api, "PATCH", URL + "?fieldManager=m", json.dumps(
        {**SERVER, "metadata": {**SERVER["metadata"], "managedFields": []}}).encode(),
        content_type=APPLY)
    assert (managed.status, managed.json()["message"]) == (
        400, "metadata.managedFields must be nil")
    typo = call(api, "PATCH", URL + "?fieldManager=m&fieldValidation=Ignore", json.dumps(
        {**SERVER, "spec": {**SERVER["spec"], "replica": 2}}).encode(), content_type=APPLY)
    assert typo.status == 500 and "reason" not in typo.json()  # as kubernetes#122480
    assert typo.json()["message"] == (
        "failed to create typed patch object (demo-to/simple-server; apps/v1, "
        "Kind=Deployment): .spec.replica: field not declared in schema")
    # keys given twice: Strict refuses (applyPatcher's strict YAML decoding), Warn warns
    strict = call(api, "PATCH", URL + "?fieldManager=m&fieldValidation=Strict",
                  _yaml_with_duplicate(), content_type=APPLY)
    assert (strict.status, strict.json()["message"]) == (
        400, "error strict decoding YAML: error converting YAML to JSON: yaml: unmarshal "
        'errors:\n  line 3: key "kind" already set in map')
    warned = call(api, "PATCH", URL + "?fieldManager=m&fieldValidation=Warn",
                  _yaml_with_duplicate(), content_type=APPLY)
    assert warned.status == 201, warned.json()
    assert 'line 3: key "kind" already set in map' in warned.warnings


def _yaml_with_duplicate() -> bytes:
    rest = json.dumps({k: v for k, v in SERVER.items() if k not in ("apiVersion", "kind")})
    return ("apiVersion: apps/v1\nkind: Deployment\nkind: Deployment\n"
            + "\n".join(f"{k}: {json.dumps(v)}" for k, v in json.loads(rest).items())
            + "\n").encode()


def test_istio_kind_applies_as_a_deduced_type(api: Handler) -> None:  # noqa: F811
    """No schema for the Istio kinds here: any field is taken (a CRD without a
    structural schema), lists are atomic, and the managedFields still come back."""
    url = "/apis/security.istio.io/v1/namespaces/demo-to/peerauthentications/pa"
    pa = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
          "metadata": {"name": "pa", "namespace": "demo-to"},
          "spec": {"mtls": {"mode": "STRICT"}}}
    made = call(api, "PATCH", url + "?fieldManager=m", json.dumps(pa).encode(),
                content_type=APPLY)
    assert made.status == 201, made.json()
    (entry,) = made.json()["metadata"]["managedFields"]
    # smd's deduced type: every key is a map entry, a member with or without children
    assert entry["fieldsV1"] == {"f:spec": {".": {}, "f:mtls": {".": {}, "f:mode": {}}}}
    assert (entry["manager"], entry["operation"]) == ("m", "Apply")


def test_keyed_lists_merge_in_smds_order() -> None:
    """merge.go: the configuration's items in its order, a live item it does not name
    kept in its place, a new one where the configuration puts it."""
    containers = mf.child(mf.child(mf.child(mf.child(DEPLOY, "spec"), "template"), "spec"),
                          "containers")
    assert containers is not None

    def names(live: list[str], config: list[str]) -> list[str]:
        out = mf.merge(containers, [{"name": x, "image": "live"} for x in live],
                       [{"name": x} for x in config])
        return [c["name"] for c in out]

    assert names(["a", "b"], ["b", "c"]) == ["a", "b", "c"]
    assert names(["a", "b", "c"], ["c", "a"]) == ["b", "c", "a"]
    assert names(["a"], ["z", "a"]) == ["z", "a"]
    merged = mf.merge(containers, [{"name": "a", "image": "x", "args": ["1", "2"]}],
                      [{"name": "a", "args": ["3"]}])
    assert merged == [{"name": "a", "image": "x", "args": ["3"]}]  # args: atomic


def test_an_object_no_manager_holds_a_field_of_has_no_managed_fields(
        api: Handler) -> None:  # noqa: F811
    """ObjectMeta.managedFields is omitempty: a namespace created with nothing but its
    name (stripped from every manager's set, stripmeta.go) shows none, not `[]`."""
    made = call(api, "POST", "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bare"}})
    assert made.status == 201 and "managedFields" not in made.json()["metadata"]
    labelled = call(api, "POST", "/api/v1/namespaces?fieldManager=me", {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "labelled", "labels": {"a": "b"}}}).json()
    assert [(e["manager"], e["operation"], e["fieldsV1"])
            for e in labelled["metadata"]["managedFields"]] == [
        ("me", "Update", {"f:metadata": {"f:labels": {".": {}, "f:a": {}}}})]


def test_values_of_the_wrong_type_as_smd_reports_them() -> None:
    """validate.go checks every value against its type, atomic ones too (a toleration's
    field, by its index): smd's words, as kubernetes-sigs/structured-merge-diff#209
    quotes them (`.s: expected string, got &value.valueUnstructured{Value:1}`)."""
    pod_spec = {"containers": [{"name": "a", "env": [{"name": "X", "value": 1}],
                                "resources": {"limits": {"cpu": 1, "memory": "1Gi"}},
                                "ports": [{"containerPort": "http"}]}],
                "tolerations": [{"effectt": "NoSchedule"}],
                "hostNetwork": "yes"}
    errors = mf.validate(DEPLOY, {"spec": {"replicas": "two", "template": {
        "spec": pod_spec}}})
    assert errors == [
        ".spec.replicas: expected numeric (int or float), got string",
        '.spec.template.spec.containers[name="a"].env[name="X"].value: expected string, '
        "got &value.valueUnstructured{Value:1}",
        '.spec.template.spec.containers[name="a"].ports[containerPort="http",'
        'protocol="TCP"].containerPort: expected numeric (int or float), got string',
        ".spec.template.spec.tolerations[0].effectt: field not declared in schema",
        ".spec.template.spec.hostNetwork: expected boolean, got &{yes}"]
    # a Quantity takes a number or a string; a map where a list goes is refused
    assert mf.validate(DEPLOY, {"spec": {"template": {"spec": {"containers": {}}}}}) == [
        ".spec.template.spec.containers: expected list, got &{map[]}"]


def test_managed_fields_are_stored_with_the_objects_and_outlive_the_api(
        api: Handler) -> None:  # noqa: F811
    """kube-apiserver keeps managedFields in the object in etcd: the lab keeps them in
    the node's store beside the objects, so the API of a restarted daemon (a new Handler
    over the same store) still knows who owns what. An apply then removes the field its
    manager applied before and no longer applies, and another manager's change of it
    is a conflict; before, both were lost with the API's memory."""
    env = {"name": "server", "image": "vasth/simple-server",
           "env": [{"name": "ONE", "value": "1"}, {"name": "TWO", "value": "2"}]}

    def config(**spec: object) -> bytes:
        template = {"metadata": {"labels": {"web": "server"}},
                    "spec": {"containers": [dict(env, **spec)]}}
        return json.dumps({**SERVER, "spec": {**SERVER["spec"], "replicas": 1,
                                              "template": template}}).encode()

    made = call(api, "PATCH", URL + "?fieldManager=kubectl", config(), content_type=APPLY)
    assert made.status == 201, made.json()
    before = made.json()["metadata"]["managedFields"]
    restarted = Handler(api.backend, "t0ken", clock=lambda: 2e9 + 60)
    served = call(restarted, "GET", URL).json()
    assert served["metadata"]["managedFields"] == before
    # ONE no longer applied: removed, as kubectl owned it alone
    again = call(restarted, "PATCH", URL + "?fieldManager=kubectl",
                 config(env=[{"name": "TWO", "value": "2"}]), content_type=APPLY)
    assert again.status == 200, again.json()
    assert again.json()["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "TWO", "value": "2"}]
    # another manager's replicas: kubectl's, a conflict
    other = json.loads(config(env=[{"name": "TWO", "value": "2"}]))
    other["spec"]["replicas"] = 2
    conflict = call(Handler(api.backend, "t0ken", clock=lambda: 2e9 + 120), "PATCH",
                    URL + "?fieldManager=ops", json.dumps(other).encode(),
                    content_type=APPLY)
    assert (conflict.status, conflict.json()["message"]) == (
        409, 'Apply failed with 1 conflict: conflict with "kubectl": .spec.replicas')


def test_stored_managed_fields_go_with_their_object(api: Handler) -> None:  # noqa: F811
    """A deleted object's managedFields are not those of the next object of its name."""
    store = api.backend.store  # type: ignore[attr-defined]
    made = call(api, "PATCH", URL + "?fieldManager=kubectl", json.dumps(SERVER).encode(),
                content_type=APPLY)
    assert made.status == 201, made.json()
    assert [k for k, *_ in store.managed_fields() if k == "Deployment"] == ["Deployment"]
    assert call(api, "DELETE", URL).status == 200
    assert [k for k, *_ in store.managed_fields() if k == "Deployment"] == []
