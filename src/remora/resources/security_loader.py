"""Reading PeerAuthentication and AuthorizationPolicy manifests, strictly.

Unlike the core kinds (where an unknown field is a warning), a security policy with a
field remora does not know is refused: a misspelt ``notPrincipal`` silently ignored would
allow what the user meant to deny. Values are checked as Istio's validation webhook does
(pkg/config/validation/validation.go ValidateAuthorizationPolicy /
ValidatePeerAuthentication): CIDRs parse, ports are 1-65535, ``when`` keys are known,
portLevelMtls needs a selector, AUDIT/CUSTOM are refused with the reason.
"""

from __future__ import annotations

import ipaddress
import re

from remora.resources.objects import ObjectMeta
from remora.resources.reader import Node
from remora.resources.security import (
    MTLS_MODES,
    AuthorizationPolicy,
    Condition,
    Operation,
    PeerAuthentication,
    Rule,
    Source,
)

API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
KINDS = {(api, kind) for api in API_VERSIONS
         for kind in ("PeerAuthentication", "AuthorizationPolicy")}
_WHEN_KEYS = ("source.ip", "remote.ip", "source.principal", "source.namespace",
              "destination.port")
_HEADER_KEY = re.compile(r"^request\.headers\[([^\[\]]+)\]$")
_SOURCE_FIELDS = tuple(Source.__dataclass_fields__)
_OPERATION_FIELDS = tuple(Operation.__dataclass_fields__)


def strict_done(n: Node, fix: str) -> None:
    """Refuse the first field nothing read (Node.done() would only warn)."""
    for key in n.value:
        if key not in n._seen:
            raise n.ctx.error(n.sub(key), "unknown field", fix)


def _selector(spec: Node) -> dict[str, str]:
    sel = spec.node("selector")
    if sel is None:
        return {}
    labels = sel.string_map("matchLabels", labels=True)
    strict_done(sel, "a workload selector has only matchLabels")
    return labels


def _mode(n: Node, key: str) -> str:
    mode = n.string(key, "UNSET")
    if mode not in MTLS_MODES:
        raise n.ctx.error(n.sub(key), f"unknown mode {mode!r}", "use " + ", ".join(MTLS_MODES))
    return mode


def peer_authentication(root: Node, meta: ObjectMeta) -> PeerAuthentication:
    spec = root.node("spec")
    if spec is None:
        return PeerAuthentication(metadata=meta, apiVersion=root.value["apiVersion"])
    selector = _selector(spec)
    mode = "UNSET"
    mtls = spec.node("mtls")
    if mtls is not None:
        mode = _mode(mtls, "mode")
        strict_done(mtls, "mtls has only mode")
    ports: dict[int, str] = {}
    raw_ports = spec.node("portLevelMtls")
    if raw_ports is not None:
        if not selector:
            raise spec.ctx.error(spec.sub("portLevelMtls"), "portLevelMtls requires a selector",
                                 "add selector.matchLabels naming the workload")
        for key in list(raw_ports.value):
            path = raw_ports.sub(str(key))
            if not str(key).isdigit() or not 1 <= int(key) <= 65535:
                raise spec.ctx.error(path, f"invalid port {key!r}", "use a port number 1-65535")
            entry = raw_ports.node(str(key))
            assert entry is not None
            ports[int(key)] = _mode(entry, "mode")
            strict_done(entry, "portLevelMtls entries have only mode")
        strict_done(raw_ports, "keys of portLevelMtls are port numbers")
    strict_done(spec, "PeerAuthentication spec has selector, mtls and portLevelMtls")
    return PeerAuthentication(metadata=meta, selector=selector, mode=mode, port_modes=ports,
                              apiVersion=root.value["apiVersion"])


def _cidr(n: Node, path: str, value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise n.ctx.error(path, f"invalid IP address or CIDR {value!r}",
                          "give an address (10.20.0.78) or a CIDR (10.20.0.0/16)") from None
    return value if "/" in value else f"{net.network_address}/{net.prefixlen}"


def _port(n: Node, path: str, value: str) -> str:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise n.ctx.error(path, f"invalid port {value!r}", "give ports as strings, e.g. \"18080\"")
    return value


def _list(n: Node, key: str) -> tuple[str, ...]:
    raw = n.value.get(key)
    if isinstance(raw, list):  # ports are often written unquoted: accept YAML integers
        n.value[key] = [str(x) if isinstance(x, int) and not isinstance(x, bool) else x
                        for x in raw]
    values = n.strings(key)
    if raw is not None and not values:
        raise n.ctx.error(n.sub(key), "must not be empty", "leave the field out instead")
    if any(v == "" for v in values):
        raise n.ctx.error(n.sub(key), "empty value", "remove the empty string")
    if key.lower().endswith("ipblocks"):
        return tuple(_cidr(n, f"{n.sub(key)}[{i}]", v) for i, v in enumerate(values))
    if key.lower().endswith("ports"):
        return tuple(_port(n, f"{n.sub(key)}[{i}]", v) for i, v in enumerate(values))
    return values


def _source(n: Node) -> Source:
    for unsupported in ("requestPrincipals", "notRequestPrincipals"):
        if n.has(unsupported):
            raise n.ctx.error(n.sub(unsupported), "request principals (JWT) are not "
                              "supported by remora", "match on principals (mTLS identities)")
    out = Source(**{k: _list(n, k) for k in _SOURCE_FIELDS})
    strict_done(n, "source has " + ", ".join(_SOURCE_FIELDS))
    return out


def _operation(n: Node) -> Operation:
    out = Operation(**{k: _list(n, k) for k in _OPERATION_FIELDS})
    strict_done(n, "operation has " + ", ".join(_OPERATION_FIELDS))
    return out


def _condition(n: Node) -> Condition:
    key = n.string("key", required=True)
    if key not in _WHEN_KEYS and not _HEADER_KEY.match(key):
        raise n.ctx.error(n.sub("key"), f"unsupported condition key {key!r}",
                          "remora supports " + ", ".join(_WHEN_KEYS) + ", request.headers[NAME]")
    values, not_values = _list(n, "values"), _list(n, "notValues")
    if not values and not not_values:
        raise n.ctx.error(n.path, "a condition needs values or notValues",
                          "add values: [...] or notValues: [...] to the condition")
    if key in ("source.ip", "remote.ip"):
        values = tuple(_cidr(n, n.sub("values"), v) for v in values)
        not_values = tuple(_cidr(n, n.sub("notValues"), v) for v in not_values)
    if key == "destination.port":
        for v in values + not_values:
            _port(n, n.sub("values"), v)
    strict_done(n, "a condition has key, values and notValues")
    return Condition(key=key, values=values, notValues=not_values)


def _rule(spec: Node, path: str, value: object) -> Rule:
    n = Node(spec.ctx, value, path)
    sources, operations, conditions = [], [], []
    for p, item in n.items("from"):
        f = Node(n.ctx, item, p)
        s = f.node("source", required=True)
        assert s is not None
        sources.append(_source(s))
        strict_done(f, "from entries have only source")
    for p, item in n.items("to"):
        t = Node(n.ctx, item, p)
        o = t.node("operation", required=True)
        assert o is not None
        operations.append(_operation(o))
        strict_done(t, "to entries have only operation")
    for p, item in n.items("when"):
        conditions.append(_condition(Node(n.ctx, item, p)))
    strict_done(n, "a rule has from, to and when")
    return Rule(tuple(sources), tuple(operations), tuple(conditions))


def authorization_policy(root: Node, meta: ObjectMeta) -> AuthorizationPolicy:
    spec = root.node("spec")
    api = root.value["apiVersion"]
    if spec is None:  # no spec: ALLOW with no rules, which denies everything
        return AuthorizationPolicy(metadata=meta, apiVersion=api)
    for unsupported in ("targetRef", "targetRefs", "provider"):
        if spec.has(unsupported):
            raise spec.ctx.error(spec.sub(unsupported), "not supported by remora",
                                 "select workloads with selector.matchLabels")
    selector = _selector(spec)
    action = spec.string("action", "ALLOW")
    if action in ("AUDIT", "CUSTOM"):
        raise spec.ctx.error(spec.sub("action"), f"action {action} is not supported by remora "
                             "(it needs an audit or external authorization provider)",
                             "use ALLOW or DENY")
    if action not in ("ALLOW", "DENY"):
        raise spec.ctx.error(spec.sub("action"), f"unknown action {action!r}", "use ALLOW or DENY")
    rules = tuple(_rule(spec, p, item) for p, item in spec.items("rules"))
    strict_done(spec, "AuthorizationPolicy spec has selector, action and rules")
    return AuthorizationPolicy(metadata=meta, selector=selector, action=action, rules=rules,
                               apiVersion=api)
