"""AuthorizationPolicy -> Envoy RBAC filter configs, as istiod translates them.

pilot/pkg/security/authz/builder (builder.go, model/model.go, model/generator.go):

- the policies that apply to a workload are those of the root namespace (no selector:
  every workload; with one: the workloads it selects) and of the workload's namespace
  (no selector, or a matching one);
- one RBAC filter per action, DENY before ALLOW (a request must pass both); each rule of
  each policy becomes one Envoy policy named ``ns[NS]-policy[NAME]-rule[i]``;
- an ALLOW policy without rules still makes the ALLOW filter exist, and with nothing to
  match it denies everything (Istio's "allow nothing");
- a rule: its ``from`` entries are ORed principals, its ``to`` entries ORed permissions;
  inside an entry every field is ANDed, inside a field the values are ORed; ``not*``
  fields are ``not_id``/``not_rule``; ``when`` conditions are ANDed to every entry;
- the network (TCP) filter cannot see HTTP fields (hosts, methods, paths, request.*):
  an ALLOW rule using one is left out (it can never match), a DENY rule is kept with
  those fields dropped (it denies more, never less).

Principals are SPIFFE URIs: ``cluster.local/ns/foo/sa/bar`` matches the peer certificate's
``spiffe://cluster.local/ns/foo/sa/bar``; ``namespaces`` match ``.*/ns/NS/.*``;
``ipBlocks`` are ``direct_remote_ip`` (the TCP peer), ``remoteIpBlocks`` ``remote_ip``
(the client XFF/PROXY protocol say it is; the same as the peer on a sidecar).
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/rbac/v3/rbac.proto
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

from remora.controlplane.envoy_common import JSON, TYPE
from remora.resources.objects import Pod
from remora.resources.security import (
    ROOT_NAMESPACE,
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
    selects,
)

HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
HTTP_RBAC_TYPE = TYPE + "envoy.extensions.filters.http.rbac.v3.RBAC"
NETWORK_RBAC_TYPE = TYPE + "envoy.extensions.filters.network.rbac.v3.RBAC"
TCP_STAT_PREFIX = "tcp."  # Istio's network RBAC stat prefix: tcp.rbac.allowed/denied


def policy_name(namespace: str, name: str, index: int) -> str:
    return f"ns[{namespace}]-policy[{name}]-rule[{index}]"


def applicable(policies: Iterable[AuthorizationPolicy], pod: Pod,
               root_namespace: str = ROOT_NAMESPACE) -> list[AuthorizationPolicy]:
    ns, labels = pod.metadata.namespace, pod.metadata.labels
    return [p for p in policies
            if p.metadata.namespace in (ns, root_namespace) and selects(p.selector, labels)]


# -- matchers ------------------------------------------------------------------------
def _string_match(value: str, prefix: str = "", ignore_case: bool = False) -> JSON:
    """Istio's * wildcard: ``*`` alone, ``abc*`` prefix, ``*abc`` suffix, else exact."""
    out: JSON
    if value == "*":
        out = {"safe_regex": {"regex": ".+"}}
    elif value.endswith("*"):
        out = {"prefix": prefix + value[:-1]}
    elif value.startswith("*"):
        out = {"suffix": value[1:]}
    else:
        out = {"exact": prefix + value}
    if ignore_case and "safe_regex" not in out:
        out["ignore_case"] = True
    return out


def _cidr(value: str) -> JSON:
    net = ipaddress.ip_network(value, strict=False)
    return {"address_prefix": str(net.network_address), "prefix_len": net.prefixlen}


def _principal(value: str) -> JSON:
    return {"authenticated": {"principal_name": _string_match(value, prefix="spiffe://")}}


def _namespace(value: str) -> JSON:
    regex = ".*/ns/" + (".*" if value == "*" else re.escape(value)) + "/.*"
    return {"authenticated": {"principal_name": {"safe_regex": {"regex": regex}}}}


def _header(name: str, value: str, ignore_case: bool = False) -> JSON:
    return {"header": {"name": name, "string_match": _string_match(value,
                                                                   ignore_case=ignore_case)}}


def _path(value: str) -> JSON:
    if value == "*":
        return {"any": True}
    return {"url_path": {"path": _string_match(value)}}


_ID_BUILDERS: dict[str, Callable[[str], JSON]] = {
    "principals": _principal, "namespaces": _namespace,
    "ipBlocks": lambda v: {"direct_remote_ip": _cidr(v)},
    "remoteIpBlocks": lambda v: {"remote_ip": _cidr(v)},
}
_RULE_BUILDERS: dict[str, Callable[[str], JSON]] = {
    "ports": lambda v: {"destination_port": int(v)},
    "methods": lambda v: _header(":method", v),
    "paths": _path,
    "hosts": lambda v: _header(":authority", v, ignore_case=True),
}


def _or_ids(ids: list[JSON]) -> JSON:
    return ids[0] if len(ids) == 1 else {"or_ids": {"ids": ids}}


def _or_rules(rules: list[JSON]) -> JSON:
    return rules[0] if len(rules) == 1 else {"or_rules": {"rules": rules}}


def _source_ids(s: Source) -> list[JSON]:
    out = []
    for field, build in _ID_BUILDERS.items():
        yes, no = getattr(s, field), getattr(s, "not" + field[0].upper() + field[1:])
        if yes:
            out.append(_or_ids([build(v) for v in yes]))
        if no:
            out.append({"not_id": _or_ids([build(v) for v in no])})
    return out


def _operation_rules(o: Operation, tcp: bool) -> list[JSON]:
    out = []
    for field, build in _RULE_BUILDERS.items():
        if tcp and field != "ports":
            continue
        yes, no = getattr(o, field), getattr(o, "not" + field[0].upper() + field[1:])
        if yes:
            out.append(_or_rules([build(v) for v in yes]))
        if no:
            out.append({"not_rule": _or_rules([build(v) for v in no])})
    return out


def _condition(c: Condition) -> tuple[str, JSON]:
    """("principal" | "permission", matcher) for one when condition."""
    builders: dict[str, tuple[str, Callable[[str], JSON]]] = {
        "source.ip": ("principal", lambda v: {"direct_remote_ip": _cidr(v)}),
        "remote.ip": ("principal", lambda v: {"remote_ip": _cidr(v)}),
        "source.principal": ("principal", _principal),
        "source.namespace": ("principal", _namespace),
        "destination.port": ("permission", lambda v: {"destination_port": int(v)}),
    }
    if c.key in builders:
        side, build = builders[c.key]
    else:  # request.headers[NAME]
        side, name = "principal", c.key[len("request.headers["):-1]

        def build(v: str) -> JSON:
            return _header(name, v)
    parts = []
    if c.values:
        parts.append(_or_ids([build(v) for v in c.values]) if side == "principal"
                     else _or_rules([build(v) for v in c.values]))
    if c.notValues:
        if side == "principal":
            parts.append({"not_id": _or_ids([build(v) for v in c.notValues])})
        else:
            parts.append({"not_rule": _or_rules([build(v) for v in c.notValues])})
    matcher = parts[0] if len(parts) == 1 else (
        {"and_ids": {"ids": parts}} if side == "principal" else {"and_rules": {"rules": parts}})
    return side, matcher


def _and_ids(ids: list[JSON]) -> JSON:
    return {"any": True} if not ids else {"and_ids": {"ids": ids}}


def _and_rules(rules: list[JSON]) -> JSON:
    return {"any": True} if not rules else {"and_rules": {"rules": rules}}


def compile_rule(rule: Rule, action: str, tcp: bool) -> JSON | None:
    """One Envoy Policy (permissions + principals), or None when the rule is left out."""
    http_only = any(o.http_only for o in rule.operations) or any(c.http_only for c in rule.when)
    if tcp and http_only and action == "ALLOW":
        return None
    conditions = [_condition(c) for c in rule.when if not (tcp and c.http_only)]
    id_conds = [m for side, m in conditions if side == "principal"]
    rule_conds = [m for side, m in conditions if side == "permission"]
    principals = [_and_ids(_source_ids(s) + id_conds) for s in rule.sources] \
        or [_and_ids(id_conds)]
    permissions = [_and_rules(_operation_rules(o, tcp) + rule_conds) for o in rule.operations] \
        or [_and_rules(rule_conds)]
    return {"permissions": permissions, "principals": principals}


def compile_rules(policies: list[AuthorizationPolicy], action: str, tcp: bool) -> JSON:
    out: dict[str, JSON] = {}
    for p in policies:
        if p.action != action:
            continue
        for i, rule in enumerate(p.rules):
            compiled = compile_rule(rule, action, tcp)
            if compiled is not None:
                out[policy_name(p.metadata.namespace, p.metadata.name, i)] = compiled
    return {"action": action, "policies": out}


def _filters(policies: list[AuthorizationPolicy], tcp: bool) -> list[JSON]:
    filters = []
    for action in ("DENY", "ALLOW"):
        if not any(p.action == action for p in policies):
            continue
        typed: JSON = {"@type": NETWORK_RBAC_TYPE if tcp else HTTP_RBAC_TYPE,
                       "rules": compile_rules(policies, action, tcp)}
        if tcp:
            typed["stat_prefix"] = TCP_STAT_PREFIX
        filters.append({"name": NETWORK_RBAC if tcp else HTTP_RBAC, "typed_config": typed})
    return filters


def http_rbac_filters(policies: list[AuthorizationPolicy]) -> list[JSON]:
    """HTTP filters to put before the router of the inbound HCMs (DENY, then ALLOW)."""
    return _filters(policies, tcp=False)


def network_rbac_filters(policies: list[AuthorizationPolicy]) -> list[JSON]:
    """Network filters to put before tcp_proxy on the inbound TCP chains."""
    return _filters(policies, tcp=True)
