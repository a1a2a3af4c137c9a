"""The proxy's RBAC engine, fed with what the control plane compiles from policies."""

from __future__ import annotations

import pytest

from remora.controlplane import rbac
from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.rbac_engine import Rbac, RbacInput, parse_rules
from remora.resources.loader import load_manifests
from remora.resources.security import AuthorizationPolicy

CLIENT = "spiffe://cluster.local/ns/demo-from/sa/default"


def engines(text: str, tcp: bool = False) -> list[Rbac]:
    pols = [o for o in load_manifests(text).objects if isinstance(o, AuthorizationPolicy)]
    filters = rbac.network_rbac_filters(pols) if tcp else rbac.http_rbac_filters(pols)
    out = []
    for f in filters:
        r = parse_rules(Fields(f["typed_config"]["rules"], "rules"))
        assert r is not None
        out.append(r)
    return out


def request(direct: str = "10.20.0.78", remote: str | None = None, port: int = 18080,
            principal: str | None = CLIENT, method: str = "GET", path: str = "/",
            http: bool = True, **headers: str) -> RbacInput:
    h = {":method": method, ":path": path, ":authority": "svc:18080", **headers}
    return RbacInput(direct_remote_ip=direct, remote_ip=remote or direct,
                     destination_ip="10.20.0.77", destination_port=port,
                     uri_sans=(principal,) if principal else (),
                     tls=principal is not None, headers=h if http else None)


def allowed(rules: list[Rbac], r: RbacInput) -> tuple[bool, str | None]:
    for e in rules:  # DENY filter first, then ALLOW, like the filter order
        d = e.evaluate(r)
        if not d.allowed:
            return False, d.details
    return True, None


def policy(spec: str, action: str = "ALLOW") -> str:
    return ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: p, namespace: demo-to}}\nspec:\n  action: {action}\n{spec}")


def test_ip_blocks_is_the_peer_remote_ip_blocks_the_client_address() -> None:
    only_client = engines(policy("  rules: [{from: [{source: {ipBlocks: [10.20.0.78]}}]}]\n"))
    assert allowed(only_client, request()) == (True, None)
    assert allowed(only_client, request(direct="127.0.0.6")) == (
        False, "rbac_access_denied_matched_policy[none]")
    # remote (e.g. from XFF) differs from the direct peer: ipBlocks ignores it
    assert allowed(only_client, request(direct="10.20.0.78", remote="1.2.3.4"))[0]
    remote = engines(policy("  rules: [{from: [{source: {remoteIpBlocks: [10.20.0.0/24]}}]}]\n"))
    assert allowed(remote, request(direct="127.0.0.6", remote="10.20.0.9"))[0]
    assert not allowed(remote, request(direct="10.20.0.9", remote="127.0.0.6"))[0]


def test_principals_namespaces_and_unauthenticated_peers() -> None:
    e = engines(policy("  rules: [{from: [{source: {principals: "
                       "[cluster.local/ns/demo-from/sa/default]}}]}]\n"))
    assert allowed(e, request())[0]
    assert not allowed(e, request(principal="spiffe://cluster.local/ns/x/sa/default"))[0]
    assert not allowed(e, request(principal=None))[0]  # plain text: no identity
    ns = engines(policy("  rules: [{from: [{source: {notNamespaces: [demo-from]}}]}]\n"))
    assert not allowed(ns, request())[0]
    assert allowed(ns, request(principal="spiffe://cluster.local/ns/other/sa/x"))[0]
    # not_id of a principal matcher also matches a peer with no certificate (Envoy too)
    assert allowed(ns, request(principal=None))[0]


def test_deny_names_the_matched_rule_and_operations() -> None:
    e = engines(policy("  rules:\n  - to: [{operation: {methods: [POST]}}]\n"
                       "  - to: [{operation: {paths: [/admin*], notPorts: ['9090']}}]\n",
                       action="DENY"))
    assert allowed(e, request(method="GET"))[0]
    assert allowed(e, request(method="POST")) == (
        False, "rbac_access_denied_matched_policy[ns[demo-to]-policy[p]-rule[0]]")
    assert allowed(e, request(path="/admin/x?y=1")) == (
        False, "rbac_access_denied_matched_policy[ns[demo-to]-policy[p]-rule[1]]")
    assert allowed(e, request(path="/admin/x", port=9090))[0]


def test_when_headers_and_source_ip() -> None:
    e = engines(policy("  rules:\n  - when:\n    - {key: 'request.headers[x-token]', "
                       "values: ['ok*']}\n    - {key: source.ip, notValues: [10.1.0.0/16]}\n"))
    assert allowed(e, request(**{"x-token": "okay"}))[0]
    assert not allowed(e, request(**{"x-token": "no"}))[0]
    assert not allowed(e, request(direct="10.1.1.1", **{"x-token": "ok"}))[0]


def test_empty_allow_denies_all_and_tcp_ignores_http_rules() -> None:
    e = engines(policy("  rules: []\n"))
    assert allowed(e, request()) == (False, "rbac_access_denied_matched_policy[none]")
    http_rule = policy("  rules: [{to: [{operation: {methods: [GET]}}]}]\n")
    assert allowed(engines(http_rule), request())[0]
    assert not allowed(engines(http_rule, tcp=True), request(http=False))[0]
    deny = policy("  rules: [{to: [{operation: {methods: [GET], ports: ['18080']}}]}]\n", "DENY")
    assert not allowed(engines(deny, tcp=True), request(http=False))[0]
    assert allowed(engines(deny, tcp=True), request(http=False, port=1))[0]


def test_unknown_rbac_field_is_refused_with_its_path() -> None:
    raw = {"action": "ALLOW", "policies": {"p": {"permissions": [{"any": True}],
                                                 "principals": [{"direct_remote_ip": {
                                                     "address_prefix": "10.0.0.0",
                                                     "prefix_len": 8, "bogus": 1}}]}}}
    with pytest.raises(ConfigError, match=r"rules\.policies\.p\.principals\[0\]"
                                          r"\.direct_remote_ip\.bogus"):
        parse_rules(Fields(raw, "rules"))
