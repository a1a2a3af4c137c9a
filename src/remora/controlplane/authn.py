"""PeerAuthentication -> the effective mTLS mode of each inbound port of a workload.

Istio's resolution (pilot/pkg/security/authn/policy_applier.go, ComposePeerAuthentication):
the workload's own policy (selector matches, same namespace) overrides the namespace
policy (no selector), which overrides the mesh policy (root namespace istio-system, no
selector); ``UNSET`` inherits from the next wider scope; a port in ``portLevelMtls``
overrides the workload's mode for that port; with nothing set the mode is PERMISSIVE.
When several policies compete at one scope, the oldest wins in Istio; here the first.

The mode decides which inbound chains a port gets (listener_inbound.go):
PERMISSIVE -> tls and raw_buffer chains, STRICT -> tls only, DISABLE -> raw_buffer only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from remora.resources.objects import Pod
from remora.resources.security import ROOT_NAMESPACE, PeerAuthentication, selects

PERMISSIVE, STRICT, DISABLE, UNSET = "PERMISSIVE", "STRICT", "DISABLE", "UNSET"


@dataclass(frozen=True)
class PortAuthn:
    mode: str

    @property
    def tls(self) -> bool:
        return self.mode in (PERMISSIVE, STRICT)

    @property
    def plaintext(self) -> bool:
        return self.mode in (PERMISSIVE, DISABLE)


@dataclass(frozen=True)
class WorkloadAuthn:
    mode: str
    port_modes: dict[int, str]

    def port(self, port: int) -> PortAuthn:
        return PortAuthn(self.port_modes.get(port, self.mode))


def _first(policies: Iterable[PeerAuthentication]) -> PeerAuthentication | None:
    return next(iter(policies), None)


def workload_authn(policies: Iterable[PeerAuthentication], pod: Pod,
                   root_namespace: str = ROOT_NAMESPACE) -> WorkloadAuthn:
    ns = pod.metadata.namespace
    labels = pod.metadata.labels
    pas = list(policies)
    mesh = _first(p for p in pas if p.metadata.namespace == root_namespace and not p.selector)
    namespace = _first(p for p in pas if p.metadata.namespace == ns and not p.selector
                       and ns != root_namespace)
    workload = _first(p for p in pas if p.metadata.namespace == ns and p.selector
                      and selects(p.selector, labels))
    mode = PERMISSIVE
    for scope in (mesh, namespace, workload):
        if scope is not None and scope.mode != UNSET:
            mode = scope.mode
    ports: dict[int, str] = {}
    if workload is not None:
        ports = {port: (m if m != UNSET else mode) for port, m in workload.port_modes.items()}
    return WorkloadAuthn(mode=mode, port_modes=ports)
