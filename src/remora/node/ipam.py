"""Address plan and allocation: per-node pod /24s, pod IPs, ClusterIPs (pure, no I/O).

The node runtime persists what is allocated in the store; this module only decides. Node N
(1-based) owns the N-th /24 of the pod CIDR and keeps its first host address for the
bridge (the pods' gateway), like a kubenet/bridge CNI node: with the default 10.20.0.0/16,
node 1 is 10.20.0.0/24 with gateway 10.20.0.1, so the seed's 10.20.0.77 and 10.20.0.78 are
node-1 pod addresses. ClusterIPs come from the service CIDR, picked from a hash of the
service's name (stable across re-creation, spread like Kubernetes' random allocator) and
probed linearly on collision; the first address (the `kubernetes` service in a cluster)
and the DNS address are reserved.

IPv6 (`--ip-family ipv6|dual`): pods also (or only) get an address from a ULA /48,
fd00:10:20::/48, a /64 per node (node 1 = fd00:10:20::/64, gateway fd00:10:20::1). A pod's
IPv6 host part is its IPv4 offset's decimal digits read as hex, so the seed's 10.20.0.77
is fd00:10:20::77 beside it (and an IPv6-only pod gets the address it would have had). The
IPv6 service range is fd00:96::/108 (Kubernetes allows at most 20 host bits for an IPv6
service CIDR), its DNS address fd00:96::a. Services take `ipFamilies` /
`ipFamilyPolicy` as the API server defaults and checks them (service_families).
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
DEFAULT_POD_CIDR6 = "fd00:10:20::/48"
DEFAULT_SERVICE_CIDR6 = "fd00:96::/108"
DEFAULT_NODE_CIDR6 = "fd00:192:168::/64"
NODE_SUBNET_PREFIX6 = 64
IPV4, IPV6 = "IPv4", "IPv6"
# `remora up --ip-family`: the cluster's families, the primary (default) one first, as a
# dual-stack cluster's --service-cluster-ip-range=v4,v6 makes IPv4 the default family.
IP_FAMILIES: dict[str, tuple[str, ...]] = {"ipv4": (IPV4,), "ipv6": (IPV6,),
                                            "dual": (IPV4, IPV6)}
_POD6 = ipaddress.IPv6Network(DEFAULT_POD_CIDR6)
_SERVICE6 = ipaddress.IPv6Network(DEFAULT_SERVICE_CIDR6)
_NODE6 = ipaddress.IPv6Network(DEFAULT_NODE_CIDR6)
POLICIES = ("PreferDualStack", "RequireDualStack", "SingleStack")  # core/v1 IPFamilyPolicy


def family_of(ip: str) -> str:
    return IPV6 if ipaddress.ip_address(ip).version == 6 else IPV4


def check_ip_family(name: str) -> tuple[str, ...]:
    if name not in IP_FAMILIES:
        raise UsageError(f"unknown IP family {name!r}",
                         "use --ip-family ipv4, --ip-family ipv6 or --ip-family dual")
    return IP_FAMILIES[name]


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
    # the node's IPv6 /64, gateway and fabric address (always planned; used when the
    # cluster has IPv6)
    subnet6: ipaddress.IPv6Network = _POD6
    gateway6: ipaddress.IPv6Address = _POD6.network_address
    node_ip6: ipaddress.IPv6Address = _NODE6.network_address


@dataclass(frozen=True)
class AddressPlan:
    pod_cidr: ipaddress.IPv4Network
    service_cidr: ipaddress.IPv4Network
    node_cidr: ipaddress.IPv4Network
    dns_ip: ipaddress.IPv4Address
    pod_ip_start: int = 2
    families: tuple[str, ...] = (IPV4,)
    pod_cidr6: ipaddress.IPv6Network = _POD6
    service_cidr6: ipaddress.IPv6Network = _SERVICE6
    node_cidr6: ipaddress.IPv6Network = _NODE6

    @property
    def ipv6(self) -> bool:
        return IPV6 in self.families

    @property
    def ipv4(self) -> bool:
        return IPV4 in self.families

    @property
    def dual_stack(self) -> bool:
        return len(self.families) > 1

    @property
    def dns_ip6(self) -> ipaddress.IPv6Address:
        return self.service_cidr6.network_address + 10

    def dns_ips(self) -> list[str]:
        """The cluster DNS addresses the pods use: one per cluster family, primary first."""
        return [str(self.dns_ip) if f == IPV4 else str(self.dns_ip6) for f in self.families]

    def service_cidr_of(self, family: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return self.service_cidr if family == IPV4 else self.service_cidr6

    @classmethod
    def build(
        cls,
        pod_cidr: str = DEFAULT_POD_CIDR,
        service_cidr: str = DEFAULT_SERVICE_CIDR,
        node_cidr: str = DEFAULT_NODE_CIDR,
        dns_ip: str | None = None,
        pod_ip_start: int = 2,
        ip_family: str = "ipv4",
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
        return cls(pods, services, nodes, dns, pod_ip_start, check_ip_family(ip_family))

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
        subnet6 = ipaddress.IPv6Network(
            (int(self.pod_cidr6.network_address) + ((index - 1) << (128 - NODE_SUBNET_PREFIX6)),
             NODE_SUBNET_PREFIX6))
        return NodeSubnet(index, subnet, subnet.network_address + 1,
                          self.node_cidr.network_address + index, subnet6,
                          subnet6.network_address + 1, self.node_cidr6.network_address + index)

    def node_of(self, ip: str) -> int | None:
        addr = ipaddress.IPv4Address(ip)
        if addr not in self.pod_cidr:
            return None
        offset = int(addr) - int(self.pod_cidr.network_address)
        return int(offset // 2 ** (32 - NODE_SUBNET_PREFIX) + 1)

    def reserved_service_ips(self) -> set[str]:
        return {str(self.service_cidr.network_address), str(self.service_cidr.network_address + 1),
                str(self.service_cidr.broadcast_address), str(self.dns_ip),
                str(self.service_cidr6.network_address),
                str(self.service_cidr6.network_address + 1), str(self.dns_ip6)}


def pods_per_node(plan: AddressPlan) -> int:
    """How many pod addresses one node's /24 holds: from the start offset to the last host
    address, without the gateway (allocate_pod_ip's range)."""
    node = plan.node(1)
    base, gateway = int(node.subnet.network_address), int(node.gateway)
    return sum(1 for offset in range(plan.pod_ip_start, node.subnet.num_addresses - 1)
               if base + offset != gateway)


def allocate_pod_ip(plan: AddressPlan, node_index: int, used: Iterable[str]) -> str:
    """The lowest free IPv4 address of the node's /24 from the start offset (gateway
    excluded)."""
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


def pod_ip6(node: NodeSubnet, offset: int) -> str:
    """The IPv6 address of the pod at OFFSET in its node's range: the offset's decimal
    digits as the hex host part (offset 77 -> fd00:10:20::77), readable beside the IPv4."""
    return str(node.subnet6.network_address + int(str(offset), 16))


def allocate_pod_ips(plan: AddressPlan, node_index: int, used: Iterable[str]) -> list[str]:
    """The pod's addresses, one per cluster family (the primary first): the lowest offset
    from the start offset whose addresses are all free (gateway excluded)."""
    node = plan.node(node_index)
    taken = set(used)
    base = int(node.subnet.network_address)
    for offset in range(plan.pod_ip_start, node.subnet.num_addresses - 1):
        v4 = str(ipaddress.IPv4Address(base + offset))
        if v4 == str(node.gateway):
            continue
        ips = [v4 if f == IPV4 else pod_ip6(node, offset) for f in plan.families]
        if not taken.intersection(ips):
            return ips
    ranges = " and ".join(str(node.subnet if f == IPV4 else node.subnet6)
                          for f in plan.families)
    raise RemoraError(
        f"node {node_index} has no free pod address left in {ranges}",
        "delete pods, or start the lab with more nodes",
    )


def allocate_cluster_ip(
    plan: AddressPlan, namespace: str, name: str, used: Iterable[str], family: str = IPV4
) -> str:
    """A stable pseudo-random free address of the service CIDR of FAMILY for NAMESPACE/NAME."""
    taken = set(used) | plan.reserved_service_ips()
    cidr = plan.service_cidr_of(family)
    size = cidr.num_addresses
    base = int(cidr.network_address)
    start = int.from_bytes(hashlib.sha256(f"{namespace}/{name}".encode()).digest()[:4], "big")
    for step in range(size):
        candidate = str(ipaddress.ip_address(base + (start + step) % size)
                        if family == IPV4 else ipaddress.IPv6Address(base + (start + step) % size))
        if candidate not in taken:
            return candidate
    raise RemoraError(f"the service CIDR {cidr} is full",
                      "delete services or use a larger service CIDR")


def service_families(plan: AddressPlan, spec: dict[str, object],
                     owner: str) -> tuple[tuple[str, ...], str]:
    """(ipFamilies, ipFamilyPolicy) of a Service as the API server defaults and checks them
    (pkg/registry/core/service/storage/alloc.go initIPFamilyFields, and
    pkg/apis/core/validation ValidateService), with Kubernetes' own messages.

    A policy left out is RequireDualStack when two families (or two clusterIPs) are given,
    else SingleStack; families left out are the clusterIPs' families, else the cluster's
    default (its first) family; a dual-stack policy adds the other family. PreferDualStack
    on a single-stack cluster keeps the one family; RequireDualStack there is refused, as is
    a family the cluster does not have.
    """
    def fail(path: str, problem: str) -> UsageError:
        return UsageError(f"{owner}: {path}: {problem}",
                          "see the Service's ipFamilies and ipFamilyPolicy in the Kubernetes "
                          f"docs; this lab's families: {', '.join(plan.families)}")

    raw_policy = spec.get("ipFamilyPolicy")
    raw_families = spec.get("ipFamilies") or []
    cluster_ips = [str(ip) for ip in spec.get("clusterIPs") or [] if ip]  # type: ignore[attr-defined]
    if not cluster_ips and spec.get("clusterIP"):
        cluster_ips = [str(spec["clusterIP"])]
    cluster_ips = [ip for ip in cluster_ips if ip != "None"]
    if raw_policy is not None and raw_policy not in POLICIES:
        raise fail("spec.ipFamilyPolicy", f'Unsupported value: "{raw_policy}": supported '
                   'values: "PreferDualStack", "RequireDualStack", "SingleStack"')
    if not isinstance(raw_families, list):
        raise fail("spec.ipFamilies", "Invalid value: must be a list")
    families: list[str] = []
    for i, fam in enumerate(raw_families):
        if fam not in (IPV4, IPV6):
            raise fail(f"spec.ipFamilies[{i}]",
                       f'Unsupported value: "{fam}": supported values: "IPv4", "IPv6"')
        if fam in families:
            raise fail(f"spec.ipFamilies[{i}]", f'Duplicate value: "{fam}"')
        families.append(str(fam))
    if len(families) > 2:
        raise fail("spec.ipFamilies", f"Too many: {len(families)}: must have at most 2 items")
    for i, ip in enumerate(cluster_ips):
        try:
            fam = family_of(ip)
        except ValueError:
            raise fail(f"spec.clusterIPs[{i}]", f'Invalid value: "{ip}": must be a valid IP '
                       "address, (e.g. 10.9.8.7 or 2001:db8::ffff)") from None
        if i < len(families) and families[i] != fam:
            raise fail(f"spec.clusterIPs[{i}]", f'Invalid value: "{ip}": expected an '
                       f"{families[i]} value as indicated by `ipFamilies[{i}]`")
        if i == 0 and not families:
            families.append(fam)
        elif i == 1 and len(families) < 2:
            if fam == families[0]:
                raise fail("spec.clusterIPs[1]", f'Invalid value: "{ip}": may specify no '
                           "more than one IP for each IP family")
            families.append(fam)
    policy = str(raw_policy) if raw_policy is not None else (
        "RequireDualStack" if len(families) == 2 else "SingleStack")
    if policy == "SingleStack" and len(families) > 1:
        raise fail("spec.ipFamilyPolicy", f'Invalid value: "{policy}": must be '
                   "RequireDualStack or PreferDualStack when multiple IP families are "
                   "specified")
    if policy == "RequireDualStack" and not plan.dual_stack:
        raise fail("spec.ipFamilyPolicy", f'Invalid value: "{policy}": this cluster is not '
                   "configured for dual-stack services")
    for i, fam in enumerate(families):
        if fam not in plan.families and not (policy == "PreferDualStack" and i > 0):
            raise fail(f"spec.ipFamilies[{i}]", f'Invalid value: "{fam}": not configured '
                       "on this cluster")
    if not families:
        families = [plan.families[0]]
    if policy != "SingleStack" and len(families) == 1 and plan.dual_stack:
        families.append(IPV6 if families[0] == IPV4 else IPV4)
    return tuple(f for f in families if f in plan.families), policy


def check_cluster_ip(plan: AddressPlan, ip: str, owner: str, used: dict[str, str]) -> str:
    """Validate a user-requested spec.clusterIP (as the API server does)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise UsageError(f"{owner}: spec.clusterIP {ip!r} is not an IP address",
                         "remove spec.clusterIP or give an address") from None
    cidr = plan.service_cidr_of(family_of(ip))
    if addr not in cidr or ip in plan.reserved_service_ips():
        raise UsageError(
            f"{owner}: spec.clusterIP {ip} is not allocatable from {cidr}",
            "remove spec.clusterIP to get one allocated, or pick a free address in range")
    holder = used.get(ip)
    if holder is not None and holder != owner:
        raise UsageError(f"{owner}: spec.clusterIP {ip} is already allocated to {holder}",
                         "remove spec.clusterIP or pick another address")
    return ip
