"""Service -> endpoints: the one selection the control plane, the node and `explain` share.

Kubernetes' EndpointSlice controller decides which pods back a Service; kube-proxy
programs those, and istiod sends the same set to Envoy by EDS. Here one pure function,
``select_endpoints``, makes that decision, and every caller adapts its own shape to it:
remora.controlplane.model (typed objects -> EDS), remora.node.controller (store dicts ->
kube-proxy rules) and remora.diagnose.evidence.target (`explain`'s candidate server pods).

The rules, as Kubernetes defines them:
- label selectors: ``matchLabels`` (every key equal) and ``matchExpressions`` with
  ``In``, ``NotIn`` (true when the key is absent), ``Exists`` and ``DoesNotExist``, all
  ANDed (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/,
  apimachinery labels.Selector). A Service's ``spec.selector`` is the plain map, i.e.
  matchLabels alone. An empty or missing Service selector selects no pod: the endpoints
  controller leaves such a Service's endpoints to the user (pkg/controller/endpointslice
  skips services whose selector is nil), and remora has no manual Endpoints;
- only pods of the Service's namespace, with an IP, Ready, and not being deleted
  (EndpointSlice marks terminating pods not ready; kube-proxy and istiod send ready
  endpoints only);
- ``targetPort``: a number, a numeric string (``"8080"``, as YAML may carry it), or the
  name of a container port of that pod (resolved per pod: two pods may give the name
  different numbers; a pod without the name is no endpoint for that port). Missing, it
  is the service ``port`` (core/v1 defaulting).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from remora.resources.objects import Pod, Service, ServicePort

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` entry."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        # The API server rejects other operators; an object that bypassed it selects
        # nothing rather than everything.
        return False


@dataclass(frozen=True)
class LabelSelector:
    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Every matchLabels pair and every expression holds (an empty selector: False,
        the Service meaning; see the module docstring)."""
        if self.empty:
            return False
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.matches(labels) for r in self.match_expressions)


def label_selector(raw: Mapping[str, Any] | None) -> LabelSelector:
    """A Service's plain ``selector`` map, or a LabelSelector (matchLabels /
    matchExpressions), as the API's JSON carries them."""
    if not raw:
        return LabelSelector()
    if "matchLabels" not in raw and "matchExpressions" not in raw:
        return LabelSelector({str(k): str(v) for k, v in raw.items()})
    exprs = tuple(Requirement(str(e.get("key", "")), str(e.get("operator", "")),
                              tuple(str(v) for v in e.get("values") or ()))
                  for e in raw.get("matchExpressions") or ())
    labels = {str(k): str(v) for k, v in (raw.get("matchLabels") or {}).items()}
    return LabelSelector(labels, exprs)


@dataclass(frozen=True)
class PortSpec:
    """One Service port: ``targetPort`` None means "same as port"."""

    port: int
    target_port: int | str | None = None
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True)
class Candidate:
    """A pod as endpoint selection needs it."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    ip: str
    ready: bool
    deleting: bool = False
    container_ports: tuple[tuple[str, int], ...] = ()  # (name, containerPort)


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int  # the pod's port (targetPort resolved)
    pod: str
    service_port: int
    port_name: str = ""
    protocol: str = "TCP"


def target_port(port: PortSpec, container_ports: Iterable[tuple[str, int]]) -> int | None:
    """The pod port PORT sends to on a pod with CONTAINER_PORTS; None when the pod has no
    container port of that name."""
    target = port.port if port.target_port is None else port.target_port
    if isinstance(target, int):
        return target
    if target.isdigit():
        return int(target)
    for name, number in container_ports:
        if name and name == target:
            return number
    return None


def _ip_key(ip: str) -> tuple[int, int]:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return (9, 0)
    return (address.version, int(address))


def select_endpoints(namespace: str, selector: LabelSelector, ports: Sequence[PortSpec],
                     pods: Iterable[Candidate]) -> list[Endpoint]:
    """The ready endpoints of a Service in NAMESPACE with SELECTOR and PORTS among PODS,
    one per (pod, service port) whose target resolves; sorted by service port, then
    address (numerically), then pod port."""
    found = []
    for pod in pods:
        if (pod.namespace != namespace or not pod.ip or not pod.ready or pod.deleting
                or not selector.matches(pod.labels)):
            continue
        for sp in ports:
            tp = target_port(sp, pod.container_ports)
            if tp is not None:
                found.append(Endpoint(pod.ip, tp, pod.name, sp.port, sp.name, sp.protocol))
    return sorted(found, key=lambda e: (e.service_port, _ip_key(e.ip), e.port, e.pod))


# -- the shapes the callers hold -------------------------------------------------------------
def port_spec_from_dict(port: Mapping[str, Any]) -> PortSpec:
    target = port.get("targetPort")
    return PortSpec(int(port["port"]), target if isinstance(target, int | str) else None,
                    str(port.get("name") or ""), str(port.get("protocol") or "TCP"))


def candidate_from_dict(pod: Mapping[str, Any]) -> Candidate:
    """A pod as the node's store and `remora get -o json` give it (status.podIP,
    status.ready, metadata.deletionTimestamp)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ports = tuple((str(p.get("name") or ""), int(p["containerPort"]))
                  for c in (pod.get("spec") or {}).get("containers") or ()
                  for p in c.get("ports") or () if "containerPort" in p)
    return Candidate(str(meta.get("namespace") or "default"), str(meta.get("name", "")),
                     dict(meta.get("labels") or {}), str(status.get("podIP") or ""),
                     bool(status.get("ready")), bool(meta.get("deletionTimestamp")), ports)


def service_endpoints_from_dicts(service: Mapping[str, Any],
                                 pods: Iterable[Mapping[str, Any]]) -> list[Endpoint]:
    spec = service.get("spec") or {}
    return select_endpoints(str(service["metadata"].get("namespace") or "default"),
                            label_selector(spec.get("selector")),
                            [port_spec_from_dict(p) for p in spec.get("ports") or ()],
                            [candidate_from_dict(p) for p in pods])


def port_spec(port: ServicePort) -> PortSpec:
    return PortSpec(port.port, port.targetPort, port.name, port.protocol)


def candidate(pod: Pod, ip: str, ready: bool, deleting: bool = False) -> Candidate:
    ports = tuple((p.name, p.containerPort) for c in pod.spec.containers for p in c.ports)
    return Candidate(pod.metadata.namespace, pod.metadata.name, pod.metadata.labels, ip,
                     ready, deleting, ports)


def service_selector(service: Service) -> LabelSelector:
    return LabelSelector(dict(service.selector))
