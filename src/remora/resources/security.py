"""Istio's security resources: PeerAuthentication and AuthorizationPolicy (security.istio.io).

Field names are the Istio API's (``portLevelMtls``, ``notPrincipals``, ``remoteIpBlocks``);
``to_dict()`` gives the manifest form back, which the node store keeps and
``remora get`` prints. Parsing (with its strict field checks) is in ``security_loader``.
https://istio.io/latest/docs/reference/config/security/peer_authentication/
https://istio.io/latest/docs/reference/config/security/authorization-policy/
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # objects.py imports this module at its end; no import cycle at runtime
    from remora.resources.objects import ObjectMeta

ROOT_NAMESPACE = "istio-system"  # meshConfig.rootNamespace default
MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
SECURITY_API = "security.istio.io/v1"


def _drop_empty(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v not in (None, (), [], {}, "")}


@dataclass(frozen=True)
class PeerAuthentication:
    metadata: ObjectMeta
    selector: dict[str, str] = field(default_factory=dict)  # selector.matchLabels
    mode: str = "UNSET"  # mtls.mode; UNSET inherits from the parent scope
    port_modes: dict[int, str] = field(default_factory=dict)  # portLevelMtls
    apiVersion: str = SECURITY_API
    kind: str = "PeerAuthentication"

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if self.selector:
            spec["selector"] = {"matchLabels": dict(self.selector)}
        if self.mode != "UNSET":
            spec["mtls"] = {"mode": self.mode}
        if self.port_modes:
            spec["portLevelMtls"] = {str(p): {"mode": m} for p, m in self.port_modes.items()}
        return {"apiVersion": self.apiVersion, "kind": self.kind,
                "metadata": self.metadata.to_dict(), "spec": spec}


@dataclass(frozen=True)
class Source:
    principals: tuple[str, ...] = ()
    notPrincipals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    notNamespaces: tuple[str, ...] = ()
    ipBlocks: tuple[str, ...] = ()
    notIpBlocks: tuple[str, ...] = ()
    remoteIpBlocks: tuple[str, ...] = ()
    notRemoteIpBlocks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return _drop_empty({k: list(v) for k, v in self.__dict__.items()})


@dataclass(frozen=True)
class Operation:
    hosts: tuple[str, ...] = ()
    notHosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    notPorts: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    notMethods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    notPaths: tuple[str, ...] = ()

    @property
    def http_only(self) -> bool:
        """Fields a TCP connection cannot be matched on."""
        return bool(self.hosts or self.notHosts or self.methods or self.notMethods
                    or self.paths or self.notPaths)

    def to_dict(self) -> dict[str, Any]:
        return _drop_empty({k: list(v) for k, v in self.__dict__.items()})


@dataclass(frozen=True)
class Condition:
    key: str  # source.ip, remote.ip, source.principal, source.namespace,
    #           destination.port, request.headers[NAME]
    values: tuple[str, ...] = ()
    notValues: tuple[str, ...] = ()

    @property
    def http_only(self) -> bool:
        return self.key.startswith("request.")

    def to_dict(self) -> dict[str, Any]:
        return _drop_empty({"key": self.key, "values": list(self.values),
                            "notValues": list(self.notValues)})


@dataclass(frozen=True)
class Rule:
    sources: tuple[Source, ...] = ()  # rules[].from[].source
    operations: tuple[Operation, ...] = ()  # rules[].to[].operation
    when: tuple[Condition, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return _drop_empty({"from": [{"source": s.to_dict()} for s in self.sources],
                            "to": [{"operation": o.to_dict()} for o in self.operations],
                            "when": [c.to_dict() for c in self.when]})


@dataclass(frozen=True)
class AuthorizationPolicy:
    metadata: ObjectMeta
    selector: dict[str, str] = field(default_factory=dict)
    action: str = "ALLOW"
    rules: tuple[Rule, ...] = ()
    apiVersion: str = SECURITY_API
    kind: str = "AuthorizationPolicy"

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if self.selector:
            spec["selector"] = {"matchLabels": dict(self.selector)}
        spec["action"] = self.action
        if self.rules:
            spec["rules"] = [r.to_dict() for r in self.rules]
        return {"apiVersion": self.apiVersion, "kind": self.kind,
                "metadata": self.metadata.to_dict(), "spec": spec}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """A workload selector (matchLabels) against a pod's labels; empty selects all."""
    return all(labels.get(k) == v for k, v in selector.items())
