"""field_validation: unknown fields against Kubernetes 1.32's schema, the directives, and
the apiserver's texts (the kubectl tests in test_server.py hold them to kubectl)."""

from __future__ import annotations

import pytest

from remora.kubeapi import field_validation as fv
from remora.kubeapi.messages import ApiError


def test_unknown_fields_in_document_order_with_list_indices() -> None:
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "w", "labelz": {}, "annotations": {"a": "b"}},
              "spec": {"replica": 2, "selector": {"matchLabels": {"app": "w"}},
                       "template": {"metadata": {"labels": {"app": "w"}},
                                    "spec": {"containers": [
                                        {"name": "a", "image": "i"},
                                        {"name": "b", "image": "i", "portz": [],
                                         "resources": {"limits": {"cpu": "1"}},
                                         "env": [{"name": "X", "valu": "1"}]}]}}},
              "status": {"replicas": 1}}
    assert fv.unknown_fields("apps", "v1", "Deployment", deploy) == [
        "metadata.labelz", "spec.replica", "spec.template.spec.containers[1].portz",
        "spec.template.spec.containers[1].env[0].valu"]


def test_fields_whose_type_takes_anything() -> None:
    # managedFields' fieldsV1 (FieldsV1), an int-or-string port, a Quantity, map values
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p", "managedFields": [{"fieldsV1": {"f:spec": {}}}]},
           "spec": {"containers": [{"name": "a", "image": "i",
                                    "readinessProbe": {"httpGet": {"port": "http"}},
                                    "resources": {"requests": {"memory": "1Gi"}}}],
                    "nodeSelector": {"disk": "ssd"}}}
    assert fv.unknown_fields("", "v1", "Pod", pod) == []
    # a kind without a schema (the Istio CRDs) takes anything
    assert fv.unknown_fields("security.istio.io", "v1", "PeerAuthentication",
                             {"spec": {"anything": 1}}) == []


def test_directives() -> None:
    assert fv.directive("") == fv.WARN  # the apiserver's default
    assert [fv.directive(d) for d in ("Strict", "Warn", "Ignore")] == ["Strict", "Warn",
                                                                      "Ignore"]
    with pytest.raises(ApiError) as err:
        fv.directive("strict")
    assert err.value.code == 400 and '"Ignore", "Strict", "Warn"' in err.value.message


def test_errors_as_the_apiserver_writes_them() -> None:
    created = fv.decode_error("Deployment", "v1", ["spec.b", "spec.a"])
    assert (created.code, created.reason) == (400, "BadRequest")
    assert created.message == ('Deployment in version "v1" cannot be handled as a '
                               'Deployment: strict decoding error: unknown field "spec.b", '
                               'unknown field "spec.a"')
    patched = fv.patch_error({"spec": {"replica": 2, "a": [1, None, True]}},
                             ["spec.replica", "spec.a"])
    assert (patched.code, patched.reason) == (422, "Invalid")
    cause = ('Invalid value: "map[spec:map[a:[1 <nil> true] replica:2]]": strict decoding '
             'error: unknown field "spec.a", unknown field "spec.replica"')
    assert patched.details == {"causes": [{"reason": "FieldValueInvalid", "message": cause,
                                           "field": "patch"}]}
    assert fv.warnings(["spec.x"]) == ['unknown field "spec.x"']


@pytest.mark.parametrize(("value", "printed"), [
    (1e6, "1e+06"), (1234567.0, "1.234567e+06"), (123456.0, "123456"), (1.5, "1.5"),
    (0.0001, "0.0001"), (1e-05, "1e-05"), (-2.5e-07, "-2.5e-07"), (3.0, "3"), (0.0, "0"),
])
def test_go_float_formatting(value: float, printed: str) -> None:
    """fmt's %v of a float64 (shortest digits; %e below 1e-4 or from 1e6)."""
    assert fv.go_value(value) == printed
