"""AuthorizationPolicy -> Envoy RBAC filter JSON, as istiod writes it."""

from __future__ import annotations

from remora.controlplane import rbac
from remora.resources.loader import load_manifests
from remora.resources.objects import Container, ObjectMeta, Pod, PodSpec
from remora.resources.security import AuthorizationPolicy


def policies(text: str) -> list[AuthorizationPolicy]:
    out = [o for o in load_manifests(text).objects if isinstance(o, AuthorizationPolicy)]
    assert out
    return out


ALLOW_CLIENT = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: demo-to}
spec:
  rules:
  - from:
    - source: {ipBlocks: ["10.20.0.78"], notPrincipals: ["cluster.local/ns/x/sa/*"]}
    to:
    - operation: {ports: ["18080"], methods: ["GET", "HEAD"]}
"""


def test_rule_name_and_shape() -> None:
    [f] = rbac.http_rbac_filters(policies(ALLOW_CLIENT))
    assert f["name"] == "envoy.filters.http.rbac"
    rules = f["typed_config"]["rules"]
    assert rules["action"] == "ALLOW"
    pol = rules["policies"]["ns[demo-to]-policy[allow-client]-rule[0]"]
    assert pol["principals"] == [{"and_ids": {"ids": [
        {"not_id": {"authenticated": {"principal_name": {
            "prefix": "spiffe://cluster.local/ns/x/sa/"}}}},
        {"direct_remote_ip": {"address_prefix": "10.20.0.78", "prefix_len": 32}},
    ]}}] or pol["principals"] == [{"and_ids": {"ids": [
        {"direct_remote_ip": {"address_prefix": "10.20.0.78", "prefix_len": 32}},
        {"not_id": {"authenticated": {"principal_name": {
            "prefix": "spiffe://cluster.local/ns/x/sa/"}}}},
    ]}}]
    assert pol["permissions"] == [{"and_rules": {"rules": [
        {"destination_port": 18080},
        {"or_rules": {"rules": [
            {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
            {"header": {"name": ":method", "string_match": {"exact": "HEAD"}}}]}},
    ]}}]


def test_tcp_allow_rule_with_http_fields_is_left_out_deny_is_narrowed() -> None:
    [allow] = rbac.network_rbac_filters(policies(ALLOW_CLIENT))
    assert allow["typed_config"]["stat_prefix"] == "tcp."
    assert allow["typed_config"]["rules"]["policies"] == {}  # nothing can match: deny all
    deny = policies(ALLOW_CLIENT.replace("rules:", "action: DENY\n  rules:"))
    [f] = rbac.network_rbac_filters(deny)
    pol = f["typed_config"]["rules"]["policies"]["ns[demo-to]-policy[allow-client]-rule[0]"]
    assert pol["permissions"] == [{"and_rules": {"rules": [{"destination_port": 18080}]}}]


def test_deny_before_allow_and_empty_allow_denies_all() -> None:
    text = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nothing, namespace: ns}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: ns}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"""
    filters = rbac.http_rbac_filters(policies(text))
    assert [f["typed_config"]["rules"]["action"] for f in filters] == ["DENY", "ALLOW"]
    assert filters[1]["typed_config"]["rules"]["policies"] == {}
    deny = filters[0]["typed_config"]["rules"]["policies"]["ns[ns]-policy[no-admin]-rule[0]"]
    assert deny["permissions"] == [{"and_rules": {"rules": [
        {"url_path": {"path": {"prefix": "/admin"}}}]}}]
    assert deny["principals"] == [{"any": True}]


def test_when_conditions_and_namespaces() -> None:
    text = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: w, namespace: ns}
spec:
  rules:
  - from: [{source: {namespaces: ["demo-from"]}}]
    when:
    - {key: source.ip, notValues: ["10.0.0.0/8"]}
    - {key: destination.port, values: ["80"]}
"""
    [f] = rbac.http_rbac_filters(policies(text))
    pol = f["typed_config"]["rules"]["policies"]["ns[ns]-policy[w]-rule[0]"]
    assert pol["principals"] == [{"and_ids": {"ids": [
        {"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/demo\\-from/.*"}}}},
        {"not_id": {"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}},
    ]}}]
    assert pol["permissions"] == [{"and_rules": {"rules": [{"destination_port": 80}]}}]


def test_applicable_by_namespace_and_selector() -> None:
    def ap(ns: str, sel: dict[str, str]) -> AuthorizationPolicy:
        return AuthorizationPolicy(metadata=ObjectMeta(name=f"{ns}-{len(sel)}", namespace=ns),
                                   selector=sel)

    pod = Pod(metadata=ObjectMeta(name="p", namespace="a", labels={"app": "s"}),
              spec=PodSpec(containers=(Container(name="c", image="i"),)))
    ps = [ap("a", {}), ap("a", {"app": "s"}), ap("a", {"app": "t"}), ap("b", {}),
          ap("istio-system", {}), ap("istio-system", {"app": "t"})]
    got = [p.metadata.name for p in rbac.applicable(ps, pod)]
    assert got == ["a-0", "a-1", "istio-system-0"]
