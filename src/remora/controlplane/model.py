"""What the control plane knows: the cluster snapshot and the service model istiod builds.

The node runtime hands ``generate()`` a ``Snapshot`` (services with their ClusterIPs,
running pods with their IPs); this module turns it into Istio's view: service ports with
their protocol, endpoints per (service, port), and the services a given pod serves.
Names are Istio's: ``outbound|PORT||FQDN`` and ``inbound|PORT||``
(pilot/pkg/model/service.go BuildSubsetKey / BuildInboundSubsetKey).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from remora.controlplane.protocol import (
    HTTP,
    TCP,
    UDP,
    UNSUPPORTED,
    port_protocol,
)
from remora.resources import selection
from remora.resources.objects import Namespace, Pod, Service, ServicePort
from remora.resources.security import AuthorizationPolicy, PeerAuthentication

# Istio's protocol selection lives in controlplane/protocol.py; AUTO is its
# UnsupportedProtocol (not declared: the sidecar sniffs it).
AUTO = UNSUPPORTED
__all__ = ["AUTO", "HTTP", "TCP", "UDP", "port_protocol"]  # re-exported for callers


@dataclass(frozen=True)
class Workload:
    """A running pod as the control plane sees it."""

    pod: Pod
    ip: str
    ready: bool = True
    # status.podIPs, the primary (``ip``) first; empty means ``ip`` alone. A dual-stack
    # pod has one IPv4 and one IPv6 address (Kubernetes allows one per family).
    ips: tuple[str, ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.ips or ((self.ip,) if self.ip else ())

    def address_of_family(self, v6: bool) -> str | None:
        return next((a for a in self.addresses if (":" in a) == v6), None)

    @property
    def namespace(self) -> str:
        return self.pod.metadata.namespace


@dataclass(frozen=True)
class Snapshot:
    """The cluster state one generation is computed from."""

    services: tuple[Service, ...] = ()
    workloads: tuple[Workload, ...] = ()
    namespaces: tuple[Namespace, ...] = field(default=())
    # Istio security policies (controlplane/authn.py, rbac.py, mtls.py)
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    # Service FQDN -> spec.clusterIPs (dual stack: the primary family first). A service
    # without an entry has just its clusterIP.
    cluster_ips: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def service_addresses(self, service: Service) -> tuple[str, ...]:
        found = self.cluster_ips.get(service.fqdn)
        if found:
            return found
        return (service.clusterIP,) if service.clusterIP else ()

    def workload(self, pod: Pod) -> Workload | None:
        key = (pod.metadata.namespace, pod.metadata.name)
        return next((w for w in self.workloads
                     if (w.pod.metadata.namespace, w.pod.metadata.name) == key), None)


def selects(service: Service, pod: Pod) -> bool:
    """Does SERVICE select POD (same namespace, label selector)? remora.resources.selection
    holds the rules, shared with the node's kube-proxy and `explain`."""
    return (service.metadata.namespace == pod.metadata.namespace
            and selection.service_selector(service).matches(pod.metadata.labels))


def target_port(port: ServicePort, pod: Pod) -> int | None:
    """The pod port a service port sends to (named targetPorts resolve per pod)."""
    return selection.target_port(selection.port_spec(port),
                                 selection.candidate(pod, "", True).container_ports)


def outbound_cluster_name(port: int, fqdn: str) -> str:
    return f"outbound|{port}||{fqdn}"


def inbound_cluster_name(port: int) -> str:
    return f"inbound|{port}||"


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    pod: str
    # Envoy's Endpoint.additional_addresses: the pod's other addresses (dual stack)
    additional: tuple[str, ...] = ()


def endpoints(snapshot: Snapshot, service: Service, port: ServicePort) -> list[Endpoint]:
    """Ready pods the service selects, at the port's target, sorted by IP: exactly what
    remora.resources.selection.select_endpoints gives the node's kube-proxy.

    Each pod is reached at its address of the service's primary IP family (the family
    of its first cluster IP, as Kubernetes' EndpointSlice of ipFamilies[0]); an IPv4
    service keeps using each pod's ``ip``; a pod without an address of that family is
    no endpoint. A dual-stack service's dual-stack pods are each one endpoint at their
    own addresses, primary first (below)."""
    addresses = snapshot.service_addresses(service)
    v6 = (":" in addresses[0]) if addresses else None  # None: no cluster IP yet

    def family_ip(w: Workload) -> str:
        if v6 is None or (":" in w.ip) == v6:
            return w.ip
        return w.address_of_family(v6) or ""

    chosen = selection.select_endpoints(
        service.metadata.namespace, selection.service_selector(service),
        [selection.port_spec(port)],
        [selection.candidate(w.pod, family_ip(w), w.ready) for w in snapshot.workloads])
    if len(addresses) < 2:
        return [Endpoint(ip=e.ip, port=e.port, pod=e.pod) for e in chosen]
    # A dual-stack service (two ClusterIPs) and dual-stack pods: istiod with
    # ISTIO_DUAL_STACK (every dual-stack lab) makes one endpoint per pod from the pod's
    # status.podIPs in their order, primary first, and skips the IPv6 EndpointSlice
    # (pilot/pkg/serviceregistry/kube/controller/endpointslice.go
    # updateEndpointCacheForSlice, Istio 1.24+); EDS then carries the first as
    # `address` and the rest as `additional_addresses` (endpoint_builder.go
    # buildEnvoyLbEndpoint), which Envoy connects to by Happy Eyeballs, the first one
    # first. So the family the app dialled (either ClusterIP) does not choose the
    # family the sidecars use: the pod's primary family does.
    by_pod = {w.pod.metadata.name: w for w in snapshot.workloads
              if w.namespace == service.metadata.namespace}
    out = []
    for e in chosen:
        w = by_pod.get(e.pod)
        ips = w.addresses if w is not None else ()
        if len(ips) > 1:
            out.append(Endpoint(ip=ips[0], port=e.port, pod=e.pod, additional=tuple(ips[1:])))
        else:
            out.append(Endpoint(ip=e.ip, port=e.port, pod=e.pod))
    return out


@dataclass(frozen=True)
class InboundPort:
    """One port this pod serves, with the services that send to it (first one decides)."""

    port: int
    protocol: str
    services: tuple[Service, ...]


def inbound_ports(snapshot: Snapshot, pod: Pod) -> list[InboundPort]:
    """Istio builds one inbound chain set per distinct target port of the pod's services.

    When services disagree on a port's protocol the oldest wins in Istio; here the first
    in snapshot order does.
    """
    found: dict[int, tuple[str, list[Service]]] = {}
    for svc in snapshot.services:
        if not selects(svc, pod):
            continue
        for sp in svc.ports:
            proto = port_protocol(sp)
            tp = target_port(sp, pod)
            if proto == UDP or tp is None or tp in (15001, 15006, 15000, 15020, 15021, 15090):
                continue
            entry = found.setdefault(tp, (proto, []))
            if svc not in entry[1]:
                entry[1].append(svc)
    return [InboundPort(port=p, protocol=v[0], services=tuple(v[1]))
            for p, v in sorted(found.items())]


def mesh_ports(service: Service) -> list[ServicePort]:
    """The service's ports that get outbound config: not UDP (Istio generates nothing for
    it), and one per port number. Envoy names a port's cluster ``outbound|PORT||FQDN`` and
    rejects a CDS/LDS update with two resources of one name, so a second port with a
    number already seen (the API server refuses it, validation.go ValidateService
    "Duplicate value"; resources/loader.py too) is dropped rather than stalling the
    update of every sidecar. TCP and UDP 53 side by side are fine: UDP is skipped."""
    seen: set[int] = set()
    out = []
    for sp in service.ports:
        if port_protocol(sp) == UDP or sp.port in seen:
            continue
        seen.add(sp.port)
        out.append(sp)
    return out


def service_refs(services: tuple[Service, ...] | list[Service]) -> list[dict[str, str]]:
    """The ``istio`` filter metadata entries naming services (seed: cluster -o json)."""
    return [{"host": s.fqdn, "name": s.metadata.name, "namespace": s.metadata.namespace}
            for s in services]
