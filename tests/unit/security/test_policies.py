"""PeerAuthentication / AuthorizationPolicy manifests: parsing, strict rejection, authn modes."""

from __future__ import annotations

import pytest

from remora.controlplane.authn import workload_authn
from remora.errors import RemoraError
from remora.resources.loader import load_manifests
from remora.resources.objects import Container, ObjectMeta, Pod, PodSpec
from remora.resources.security import AuthorizationPolicy, PeerAuthentication

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: demo-to}
spec:
  selector: {matchLabels: {app: simple-server}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo-from/sa/default"]
        ipBlocks: ["10.20.0.78"]
    to:
    - operation: {ports: [18080], methods: [GET], paths: ["/common/*"]}
    when:
    - key: request.headers[x-token]
      values: ["ok"]
"""


def _one(text: str) -> object:
    loaded = load_manifests(text)
    assert len(loaded.objects) == 1
    return loaded.objects[0]


def test_authorization_policy_round_trip() -> None:
    p = _one(POLICY)
    assert isinstance(p, AuthorizationPolicy)
    assert p.selector == {"app": "simple-server"}
    src = p.rules[0].sources[0]
    assert src.ipBlocks == ("10.20.0.78/32",)
    assert p.rules[0].operations[0].ports == ("18080",)
    assert p.rules[0].when[0].key == "request.headers[x-token]"
    again = _one(__import__("yaml").safe_dump(p.to_dict()))
    assert again == p


@pytest.mark.parametrize("bad, path", [
    ("notPrincipal: [x]", "spec.rules[0].from[0].source.notPrincipal"),
    ("ipBlocks: [10.20.0.300]", "spec.rules[0].from[0].source.ipBlocks[0]"),
    ("remoteIpBlocks: [10.0.0.0/40]", "spec.rules[0].from[0].source.remoteIpBlocks[0]"),
])
def test_bad_source_is_rejected_with_the_field(bad: str, path: str) -> None:
    text = f"""
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: p, namespace: ns}}
spec:
  rules:
  - from:
    - source: {{{bad}}}
"""
    with pytest.raises(RemoraError) as err:
        load_manifests(text)
    assert path in str(err.value)
    assert "AuthorizationPolicy/ns/p" in str(err.value)


@pytest.mark.parametrize("spec, words", [
    ("action: AUDIT", "action AUDIT is not supported"),
    ("action: CUSTOM", "action CUSTOM is not supported"),
    ("action: MAYBE", "unknown action"),
    ("rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]", "unsupported condition"),
    ("rules: [{to: [{operation: {ports: ['0']}}]}]", "invalid port"),
    ("rulez: []", "spec.rulez: unknown field"),
])
def test_bad_policy_spec(spec: str, words: str) -> None:
    text = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: p, namespace: ns}}
spec: {{{spec}}}
"""
    with pytest.raises(RemoraError, match=words.replace("[", r"\[")):
        load_manifests(text)


def test_empty_allow_policy_has_no_rules() -> None:
    p = _one("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
             "metadata: {name: deny-all, namespace: ns}\nspec: {}\n")
    assert isinstance(p, AuthorizationPolicy)
    assert p.action == "ALLOW" and p.rules == ()


def _pa(ns: str, mode: str, selector: dict[str, str] | None = None,
        ports: dict[int, str] | None = None) -> PeerAuthentication:
    return PeerAuthentication(metadata=ObjectMeta(name=f"pa-{ns}-{mode.lower()}", namespace=ns),
                              selector=selector or {}, mode=mode, port_modes=ports or {})


def _pod(ns: str, labels: dict[str, str]) -> Pod:
    return Pod(metadata=ObjectMeta(name="p", namespace=ns, labels=labels),
               spec=PodSpec(containers=(Container(name="c", image="i"),)))


def test_peer_authentication_parse_and_port_level_needs_selector() -> None:
    pa = _one("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo-to}
spec:
  selector: {matchLabels: {app: s}}
  mtls: {mode: STRICT}
  portLevelMtls: {"18080": {mode: PERMISSIVE}}
""")
    assert isinstance(pa, PeerAuthentication)
    assert pa.mode == "STRICT" and pa.port_modes == {18080: "PERMISSIVE"}
    with pytest.raises(RemoraError, match="portLevelMtls requires a selector"):
        load_manifests("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
                       "metadata: {name: x, namespace: n}\n"
                       "spec: {portLevelMtls: {'80': {mode: STRICT}}}\n")
    with pytest.raises(RemoraError, match=r"spec\.mtls\.mode: unknown mode"):
        load_manifests("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
                       "metadata: {name: x, namespace: n}\nspec: {mtls: {mode: strict}}\n")


def test_authn_scopes_and_inheritance() -> None:
    pod = _pod("demo-to", {"app": "s"})
    assert workload_authn([], pod).port(18080).mode == "PERMISSIVE"
    mesh = _pa("istio-system", "STRICT")
    assert workload_authn([mesh], pod).port(1).mode == "STRICT"
    ns_disable = _pa("demo-to", "DISABLE")
    assert workload_authn([mesh, ns_disable], pod).mode == "DISABLE"
    other_ns = _pa("elsewhere", "DISABLE")
    assert workload_authn([mesh, other_ns], pod).mode == "STRICT"
    wl = _pa("demo-to", "UNSET", {"app": "s"}, {18080: "PERMISSIVE", 9000: "UNSET"})
    got = workload_authn([mesh, wl], pod)
    assert got.port(18080).mode == "PERMISSIVE" and got.port(18080).tls \
        and got.port(18080).plaintext
    assert got.port(9000).mode == "STRICT" and not got.port(9000).plaintext
    assert got.port(1).mode == "STRICT"
    not_selected = _pa("demo-to", "DISABLE", {"app": "other"})
    assert workload_authn([mesh, not_selected], pod).mode == "STRICT"


def test_snapshot_from_store_dicts_carries_policies() -> None:
    from remora.controlplane.adapters import snapshot_from_dicts

    pa = _pa("istio-system", "STRICT").to_dict()
    ap = load_manifests(POLICY).objects[0].to_dict()  # type: ignore[union-attr]
    snap = snapshot_from_dicts([], [], [], policies=[ap, pa])
    assert [p.mode for p in snap.peer_authentications] == ["STRICT"]
    assert [p.metadata.name for p in snap.authorization_policies] == ["only-client"]
