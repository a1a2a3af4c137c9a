"""The lab's network: node namespaces with a bridge, a fabric between nodes, pod veths.

    [pod netns]  eth0 10.20.0.77/32, default via 10.20.0.1 (onlink)
        | veth
    [node netns remora-node-1]  rmbr0 10.20.0.1/24, ip_forward=1, lo 172.16.0.10/32 (DNS)
        | eth0 192.168.0.1/24, route 10.20.1.0/24 via 192.168.0.2 ...
    [fabric netns remora-fabric]  rmfab0 bridge joining every node's uplink

Pods get a /32 and reach everything, pods on their own node included, through the node's
gateway, as Calico-style routed CNIs do. That puts the node's netfilter on every pod-to-pod
path, so kube-proxy's DNAT of a ClusterIP is undone on the reply even when client and
endpoint share a bridge, without br_netfilter (a host module remora must not depend on).
The node sends no ICMP redirects for the same reason. Pods on different nodes are routed
through the fabric by plain per-node routes: no NAT, the pod source address arrives as is.
Nothing here runs in the host's namespace: links are created inside lab namespaces.

With IPv6 (`--ip-family ipv6|dual`) the same scheme is repeated for the other family: the
bridge also holds the node's /64 gateway (fd00:10:20::1/64), a pod's eth0 an address/128
with a link route to that gateway and a default route through it, the node forwards
IPv6 (net.ipv6.conf.all.forwarding, set in the lab's namespaces only), the IPv6 service
range is local on the node with the IPv6 DNS address on lo, and the fabric carries a
route per node /64. Addresses are added without duplicate address detection (IFA_F_NODAD):
they are the lab's own, and a tentative address could not be bound for a second or two.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from remora.netns import NETNS_RUN_DIR
from remora.node import naming, netlink
from remora.node.ipam import AddressPlan, NodeSubnet

NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
}

NODE_SYSCTLS6 = {
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv6.conf.default.forwarding": "1",
}

NUD_PERMANENT = 0x80  # linux/neighbour.h: the bridge's own (local) fdb entries
IFA_F_NODAD = 0x02  # linux/if_addr.h

BRIDGE_NF_SYSCTLS = (
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
)


@dataclass(frozen=True)
class NodeNet:
    index: int
    netns: str
    subnet: NodeSubnet


def node_nets(prefix: str, plan: AddressPlan, count: int) -> list[NodeNet]:
    return [NodeNet(i, naming.node_name(prefix, i), plan.node(i)) for i in range(1, count + 1)]


def _up(ipr: object, ifname: str) -> None:
    idx = netlink.link_index(ipr, ifname)
    ipr.link("set", index=idx, state="up")  # type: ignore[attr-defined]


def _ensure_addr(ipr: object, ifname: str, address: str, prefixlen: int) -> None:
    idx = netlink.link_index(ipr, ifname)
    have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx)}  # type: ignore[attr-defined]
    if address not in have:
        if ":" in address:
            ipr.addr("add", index=idx, address=address, prefixlen=prefixlen,  # type: ignore[attr-defined]
                     family=socket.AF_INET6, flags=IFA_F_NODAD)
        else:
            ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)  # type: ignore[attr-defined]


def ensure_nodes(prefix: str, plan: AddressPlan, count: int) -> list[NodeNet]:
    """Create (or complete) the fabric and COUNT node namespaces; idempotent."""
    nodes = node_nets(prefix, plan, count)
    fabric = naming.fabric_name(prefix)
    if not netlink.exists(fabric):
        netlink.create(fabric)
    with netlink.rtnl(fabric) as ipr:
        _up(ipr, "lo")
        if not ipr.link_lookup(ifname=naming.FABRIC_BRIDGE):
            ipr.link("add", ifname=naming.FABRIC_BRIDGE, kind="bridge")
        _up(ipr, naming.FABRIC_BRIDGE)
    for node in nodes:
        _ensure_node(prefix, plan, node, fabric)
    for node in nodes:
        _ensure_routes(node, nodes, plan.ipv6)
    return nodes


def _ensure_node(prefix: str, plan: AddressPlan, node: NodeNet, fabric: str) -> None:
    if not netlink.exists(node.netns):
        netlink.create(node.netns)
    for key, value in {**NODE_SYSCTLS, **(NODE_SYSCTLS6 if plan.ipv6 else {})}.items():
        netlink.sysctl(node.netns, key, value)
    # If the host has br_netfilter loaded, bridged frames would also traverse iptables in
    # this namespace (the per-netns default is on) and a DNAT back to the sending pod would
    # be bridged out of the port it came in on and dropped (no hairpin). Pods here are
    # routed, never bridged to each other, so switch that path off for this namespace.
    for key in BRIDGE_NF_SYSCTLS:
        with contextlib.suppress(FileNotFoundError):
            netlink.sysctl(node.netns, key, "0")
    uplink = naming.fabric_veth(node.index)
    with netlink.rtnl(fabric) as fab:
        if not fab.link_lookup(ifname=uplink):
            fab.link("add", ifname=uplink, kind="veth",
                     peer={"ifname": naming.NODE_UPLINK,
                           "net_ns_fd": str(NETNS_RUN_DIR / node.netns)})
        idx = netlink.link_index(fab, uplink)
        fab.link("set", index=idx, master=netlink.link_index(fab, naming.FABRIC_BRIDGE),
                 state="up")
    with netlink.rtnl(node.netns) as ipr:
        _up(ipr, "lo")
        _ensure_addr(ipr, "lo", str(plan.dns_ip), 32)
        # The whole service CIDR is local to the node (AnyIP): traffic to a ClusterIP that
        # kube-proxy's rules did not DNAT (no endpoints, no such service) is refused at
        # the node, as on a cluster, instead of being unroutable.
        ipr.route("replace", dst=str(plan.service_cidr), type="local", table=255, scope=254,
                  oif=netlink.link_index(ipr, "lo"))
        if not ipr.link_lookup(ifname=naming.BRIDGE):
            # A fixed MAC: a bridge without one takes the lowest MAC of its ports, so it
            # changes when a pod's veth comes or goes and the other pods' cached neighbour
            # entry for the gateway goes stale (their traffic is dropped until it expires).
            mac = "02:" + ":".join(naming.short_hash(node.netns, length=10)[i:i + 2]
                                   for i in range(0, 10, 2))
            ipr.link("add", ifname=naming.BRIDGE, kind="bridge", address=mac)
        _ensure_addr(ipr, naming.BRIDGE, str(node.subnet.gateway), node.subnet.subnet.prefixlen)
        _up(ipr, naming.BRIDGE)
        _ensure_addr(ipr, naming.NODE_UPLINK, str(node.subnet.node_ip),
                     plan.node_cidr.prefixlen)
        _up(ipr, naming.NODE_UPLINK)
        if plan.ipv6:
            lo = netlink.link_index(ipr, "lo")
            _ensure_addr(ipr, "lo", str(plan.dns_ip6), 128)
            ipr.route("replace", dst=str(plan.service_cidr6), type="local", table=255,
                      scope=254, oif=lo, family=socket.AF_INET6)
            _ensure_addr(ipr, naming.BRIDGE, str(node.subnet.gateway6),
                         node.subnet.subnet6.prefixlen)
            _ensure_addr(ipr, naming.NODE_UPLINK, str(node.subnet.node_ip6),
                         plan.node_cidr6.prefixlen)


def _ensure_routes(node: NodeNet, nodes: list[NodeNet], ipv6: bool = False) -> None:
    with netlink.rtnl(node.netns) as ipr:
        for other in nodes:
            if other.index == node.index:
                continue
            ipr.route("replace", dst=str(other.subnet.subnet), gateway=str(other.subnet.node_ip))
            if ipv6:
                ipr.route("replace", dst=str(other.subnet.subnet6),
                          gateway=str(other.subnet.node_ip6), family=socket.AF_INET6)


def pod_mac(ip: str) -> str:
    """The MAC of a pod's eth0, derived from its IP as Docker does: 02:42 + the IP's bytes.

    0x02 = locally administered, unicast. An IP then always maps to the same MAC, so the
    neighbour entry the node (and anything else) cached for a deleted pod's IP stays right
    for the next pod that gets the IP; a random MAC leaves a REACHABLE entry pointing at a
    MAC nobody has, and the new pod is unreachable until it expires (15-45 s).
    https://github.com/moby/moby/blob/v20.10.0/libnetwork/netutils/utils.go (GenerateMACFromIP)
    """
    # an IPv6-only pod: the last four bytes of its address
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(ip).packed[-4:])


def attach_pod(node: NodeNet, pod_netns: str, veth: str, ips: str | list[str]) -> None:
    """Create the pod namespace and plug it into the node's bridge with address IP/32 (and
    /128 for an IPv6 address), a link route to the gateway of each family and a default
    route through it. IPS: the pod's addresses, the primary first."""
    addresses = [ips] if isinstance(ips, str) else list(ips)
    ip = addresses[0]
    if not netlink.exists(pod_netns):
        netlink.create(pod_netns)
    pod_path = str(NETNS_RUN_DIR / pod_netns)
    mac = pod_mac(ip)
    with netlink.rtnl(node.netns) as ipr:
        if not ipr.link_lookup(ifname=veth):
            ipr.link("add", ifname=veth, kind="veth",
                     peer={"ifname": naming.POD_IFNAME, "address": mac, "net_ns_fd": pod_path})
        bridge = netlink.link_index(ipr, naming.BRIDGE)
        port = netlink.link_index(ipr, veth)
        ipr.link("set", index=port, master=bridge, state="up")
        for address in addresses:
            _forget_neighbour(ipr, bridge, address, mac, keep_port=port)
    with netlink.rtnl(pod_netns) as ipr:
        _up(ipr, "lo")
        idx = netlink.link_index(ipr, naming.POD_IFNAME)
        # a veth left by an interrupted attach (or an older remora) may have another MAC
        if ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS") != mac:
            ipr.link("set", index=idx, address=mac)
        for address in addresses:
            _ensure_addr(ipr, naming.POD_IFNAME, address, 128 if ":" in address else 32)
        _up(ipr, naming.POD_IFNAME)
    if any(":" in address for address in addresses):
        # IPv6 has no send_redirects switch for the node: the node, forwarding between two
        # pods on its bridge, sends an ICMPv6 redirect, and a pod that followed it would
        # answer a ClusterIP client directly, around the node's conntrack (its reply is
        # not un-DNATed and the client resets it). The pod ignores redirects instead.
        for key in ("all", "default", naming.POD_IFNAME):
            netlink.sysctl(pod_netns, f"net.ipv6.conf.{key}.accept_redirects", "0")
    with netlink.rtnl(pod_netns) as ipr:
        idx = netlink.link_index(ipr, naming.POD_IFNAME)
        for address in addresses:
            if ":" in address:
                gateway6 = str(node.subnet.gateway6)
                ipr.route("replace", dst=f"{gateway6}/128", oif=idx, scope=253,
                          family=socket.AF_INET6)
                ipr.route("replace", dst="::/0", gateway=gateway6, oif=idx,
                          family=socket.AF_INET6)
            else:
                gateway = str(node.subnet.gateway)
                ipr.route("replace", dst=f"{gateway}/32", oif=idx, scope=253)  # RT_SCOPE_LINK
                ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=idx)


def _forget_neighbour(ipr: Any, bridge: int, ip: str, mac: str, keep_port: int = 0) -> None:
    """Flush what the node remembers about IP: its neighbour entry on the bridge and any
    learned bridge fdb entry for the pod's MAC on a port other than KEEP_PORT.

    With the MAC derived from the IP a kept entry would already be right; the flush also
    covers entries made before that (an address reused across a remora upgrade) and makes
    the node ask afresh (ARP) instead of trusting a REACHABLE entry for a pod that is gone.
    """
    try:
        if ":" in ip:
            ipr.neigh("del", dst=ip, ifindex=bridge, family=socket.AF_INET6)
        else:
            ipr.neigh("del", dst=ip, ifindex=bridge)
    except NetlinkError as exc:
        if exc.code != errno.ENOENT:
            raise
    for entry in ipr.fdb("dump"):
        if (entry.get_attr("NDA_LLADDR") == mac and entry.get_attr("NDA_MASTER") == bridge
                and entry["ifindex"] != keep_port
                and not entry["state"] & NUD_PERMANENT):
            with contextlib.suppress(NetlinkError):  # gone with its port meanwhile
                ipr.fdb("del", ifindex=entry["ifindex"], lladdr=mac, master=bridge)


def detach_pod(node_netns: str, pod_netns: str, veth: str,
               ip: str | list[str] = "") -> None:
    """Remove the pod's veth (both ends go) and its namespace; missing parts are fine.
    With IP (or the pod's IPs), the node's neighbour entries for them are flushed too (see
    _forget_neighbour)."""
    addresses = ([ip] if ip else []) if isinstance(ip, str) else list(ip)
    if netlink.exists(node_netns):
        with netlink.rtnl(node_netns) as ipr:
            for idx in ipr.link_lookup(ifname=veth):
                ipr.link("del", index=idx)
            bridges = ipr.link_lookup(ifname=naming.BRIDGE)
            if addresses and bridges:
                mac = pod_mac(addresses[0])
                for address in addresses:
                    _forget_neighbour(ipr, int(bridges[0]), address, mac)
    netlink.delete(pod_netns)


def remove_nodes(prefix: str, count: int) -> None:
    for i in range(1, count + 1):
        netlink.delete(naming.node_name(prefix, i))
    netlink.delete(naming.fabric_name(prefix))


def is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True



