"""Address plan and allocation: per-node pod /24s, pod IPs, ClusterIPs (pure, no I/O).

The node runtime persists what is allocated in the store; this module only decides. Node N
(1-based) owns the N-th /24 of the pod CIDR and keeps its first host address for the
bridge (the pods' gateway), like a kubenet/bridge CNI node: with the default 10.20.0.0/16,
node 1 is 10.20.0.0/24 with gateway 10.20.0.1, so the seed's 10.20.0.77 and 10.20.0.78 are
node-1 pod addresses. ClusterIPs come from the service CIDR, picked from a hash of the
service's name (stable across re-creation, spread like Kubernetes' random allocator) and
probed linearly on collision; the first address (the `kubernetes` service in a cluster)
and the DNS address are reserved.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from remora.errors import RemoraError, UsageError

DEFAULT_POD_CIDR = "10.20.0.0/16"
DEFAULT_SERVICE_CIDR = "172.16.0.0/16"
DEFAULT_NODE_CIDR = "192.168.0.0/24"
NODE_SUBNET_PREFIX = 24


def _network(text: str, what: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise UsageError(
            f"{what} {text!r} is not an IPv4 network ({exc})",
            f"give the {what} as ADDRESS/PREFIX with no host bits, e.g. 10.20.0.0/16",
        ) from None


@dataclass(frozen=True)
class NodeSubnet:
    index: int
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    node_ip: ipaddress.IPv4Address  # the node's address on the fabric


@dataclass(frozen=True)
class AddressPlan:
    pod_cidr: ipaddress.IPv4Network
    service_cidr: ipaddress.IPv4Network
    node_cidr: ipaddress.IPv4Network
    dns_ip: ipaddress.IPv4Address
    pod_ip_start: int = 2

    @classmethod
    def build(
        cls,
        pod_cidr: str = DEFAULT_POD_CIDR,
        service_cidr: str = DEFAULT_SERVICE_CIDR,
        node_cidr: str = DEFAULT_NODE_CIDR,
        dns_ip: str | None = None,
        pod_ip_start: int = 2,
    ) -> AddressPlan:
        pods = _network(pod_cidr, "pod CIDR")
        services = _network(service_cidr, "service CIDR")
        nodes = _network(node_cidr, "node CIDR")
        if pods.prefixlen > NODE_SUBNET_PREFIX:
            raise UsageError(
                f"pod CIDR {pod_cidr} is smaller than one node's /24",
                "use a pod CIDR of /24 or larger, e.g. 10.20.0.0/16",
            )
        for a, b, an, bn in ((pods, services, "pod", "service"), (pods, nodes, "pod", "node"),
                             (services, nodes, "service", "node")):
            if a.overlaps(b):
                raise UsageError(f"{an} CIDR {a} overlaps {bn} CIDR {b}",
                                 "choose non-overlapping ranges")
        dns = ipaddress.IPv4Address(dns_ip) if dns_ip else services.network_address + 10
        if dns not in services:
            raise UsageError(f"DNS address {dns} is outside the service CIDR {services}",
                             "pick an address inside the service CIDR")
        if not 2 <= pod_ip_start <= 250:
            raise UsageError(f"pod IP start offset {pod_ip_start} is out of range",
                             "use an offset between 2 and 250")
        return cls(pods, services, nodes, dns, pod_ip_start)

    @property
    def max_nodes(self) -> int:
        return int(min(
            2 ** (NODE_SUBNET_PREFIX - self.pod_cidr.prefixlen),
            self.node_cidr.num_addresses - 2,
        ))

    def node(self, index: int) -> NodeSubnet:
        if not 1 <= index <= self.max_nodes:
            raise UsageError(f"node {index} does not fit the address plan",
                             f"use at most {self.max_nodes} nodes or a larger pod CIDR")
        subnet = list(self.pod_cidr.subnets(new_prefix=NODE_SUBNET_PREFIX))[index - 1]
        return NodeSubnet(index, subnet, subnet.network_address + 1,
                          self.node_cidr.network_address + index)

    def node_of(self, ip: str) -> int | None:
        addr = ipaddress.IPv4Address(ip)
        if addr not in self.pod_cidr:
            return None
        offset = int(addr) - int(self.pod_cidr.network_address)
        return int(offset // 2 ** (32 - NODE_SUBNET_PREFIX) + 1)

    def reserved_service_ips(self) -> set[str]:
        return {str(self.service_cidr.network_address), str(self.service_cidr.network_address + 1),
                str(self.service_cidr.broadcast_address), str(self.dns_ip)}


def pods_per_node(plan: AddressPlan) -> int:
    """How many pod addresses one node's /24 holds: from the start offset to the last host
    address, without the gateway (allocate_pod_ip's range)."""
    node = plan.node(1)
    base, gateway = int(node.subnet.network_address), int(node.gateway)
    return sum(1 for offset in range(plan.pod_ip_start, node.subnet.num_addresses - 1)
               if base + offset != gateway)


def allocate_pod_ip(plan: AddressPlan, node_index: int, used: Iterable[str]) -> str:
    """The lowest free address of the node's /24 from the start offset (gateway excluded)."""
    node = plan.node(node_index)
    taken = set(used)
    base = int(node.subnet.network_address)
    for offset in range(plan.pod_ip_start, node.subnet.num_addresses - 1):
        candidate = str(ipaddress.IPv4Address(base + offset))
        if candidate not in taken and candidate != str(node.gateway):
            return candidate
    raise RemoraError(
        f"node {node_index} has no free pod address left in {node.subnet}",
        "delete pods, or start the lab with more nodes",
    )


def allocate_cluster_ip(
    plan: AddressPlan, namespace: str, name: str, used: Iterable[str]
) -> str:
    """A stable pseudo-random free address of the service CIDR for NAMESPACE/NAME."""
    taken = set(used) | plan.reserved_service_ips()
    size = plan.service_cidr.num_addresses
    base = int(plan.service_cidr.network_address)
    start = int.from_bytes(hashlib.sha256(f"{namespace}/{name}".encode()).digest()[:4], "big")
    for step in range(size):
        candidate = str(ipaddress.IPv4Address(base + (start + step) % size))
        if candidate not in taken:
            return candidate
    raise RemoraError(f"the service CIDR {plan.service_cidr} is full",
                      "delete services or use a larger service CIDR")


def check_cluster_ip(plan: AddressPlan, ip: str, owner: str, used: dict[str, str]) -> str:
    """Validate a user-requested spec.clusterIP (as the API server does)."""
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        raise UsageError(f"{owner}: spec.clusterIP {ip!r} is not an IPv4 address",
                         "remove spec.clusterIP or give an address") from None
    if addr not in plan.service_cidr or ip in plan.reserved_service_ips():
        raise UsageError(
            f"{owner}: spec.clusterIP {ip} is not allocatable from {plan.service_cidr}",
            "remove spec.clusterIP to get one allocated, or pick a free address in range")
    holder = used.get(ip)
    if holder is not None and holder != owner:
        raise UsageError(f"{owner}: spec.clusterIP {ip} is already allocated to {holder}",
                         "remove spec.clusterIP or pick another address")
    return ip
