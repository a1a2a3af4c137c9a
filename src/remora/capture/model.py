"""The capture rules as data, built in the order of Istio's `IptablesConfigurator.Run()`.

A line-by-line port of tools/istio-iptables/pkg/capture/run.go (Istio 86c9f01, 1.28+) and
its rule builder (tools/istio-iptables/pkg/builder/iptables_builder_impl.go): every rule is
recorded for IPv4 and, when IPv6 is on, for IPv6, with `PLACEHOLDER_IP_VERSION_SPECIFIC`
replaced by the family's address (127.0.0.1/32 or ::1/128, 127.0.0.6/32 or ::6/128). The
order of calls is the order of the restore text, so it must not change; Istio's golden
files (tests/data/conformance/istio-iptables) hold it byte for byte.
https://github.com/istio/istio/blob/master/tools/istio-iptables/pkg/capture/run.go
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from remora.capture.config import CaptureConfig
from remora.capture.validate import split

# Chain names (tools/istio-iptables/pkg/constants/constants.go).
ISTIO_OUTPUT = "ISTIO_OUTPUT"
ISTIO_OUTPUT_DNS = "ISTIO_OUTPUT_DNS"
ISTIO_INBOUND = "ISTIO_INBOUND"
ISTIO_DIVERT = "ISTIO_DIVERT"
ISTIO_TPROXY = "ISTIO_TPROXY"
ISTIO_REDIRECT = "ISTIO_REDIRECT"
ISTIO_IN_REDIRECT = "ISTIO_IN_REDIRECT"
ISTIO_DROP = "ISTIO_DROP"
BUILTIN_CHAINS_AND_TARGETS = frozenset(
    {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING", "ACCEPT", "RETURN", "DROP"})
# "app call VIP --> envoy outbound -(mark 1338)-> envoy inbound --> app" (constants.go).
OUTBOUND_MARK = "1338"
DNS_AGENT_PORT = "15053"
_PLACEHOLDER = "PLACEHOLDER_IP_VERSION_SPECIFIC"
V6_LOOPBACK = "::1/128"


@dataclass(frozen=True)
class Rule:
    """One `-A CHAIN ...` or `-I CHAIN POS ...` line of table TABLE."""

    table: str
    chain: str
    params: tuple[str, ...]  # starts with "-A", chain or "-I", chain, position

    @property
    def text(self) -> str:
        return " ".join(self.params)


@dataclass(frozen=True)
class TproxyRouting:
    """`ip rule add fwmark MARK lookup TABLE` + `ip route add local default dev lo table
    TABLE`, per family (tools/common/tproxy/run_linux.go configureTProxyRoutes)."""

    mark: int
    table: int
    ipv6: bool


@dataclass(frozen=True)
class RuleSet:
    v4: tuple[Rule, ...]
    v6: tuple[Rule, ...]
    ipv6: bool
    routing: TproxyRouting | None
    # `ip -6 addr add ::6/128 dev lo` (configureIPv6Addresses) when IPv6 is on.
    lo_ipv6_address: bool


@dataclass(frozen=True)
class Ranges:
    wildcard: bool = False
    cidrs: tuple[str, ...] = ()
    has_loopback: bool = False


def separate_ranges(items: tuple[str, ...]) -> tuple[Ranges, Ranges]:
    """run.go separateV4V6 (items are already valid prefixes)."""
    if items == ("*",):
        return Ranges(wildcard=True), Ranges(wildcard=True)
    v4: list[str] = []
    v6: list[str] = []
    loop4 = loop6 = False
    for item in items:
        addr = ipaddress.ip_address(item.split("/", 1)[0])
        if addr.version == 4:
            v4.append(item)
            loop4 = loop4 or addr.is_loopback
        else:
            v6.append(item)
            loop6 = loop6 or addr == ipaddress.IPv6Address("::1")
    return Ranges(False, tuple(v4), loop4), Ranges(False, tuple(v6), loop6)


class _Builder:
    """IptablesRuleBuilder: records rules per family; IPv6 rules only when IPv6 is on."""

    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.v4: list[Rule] = []
        self.v6: list[Rule] = []

    def append_v4(self, chain: str, table: str, *params: str) -> None:
        self.v4.append(Rule(table, chain, ("-A", chain, *params)))

    def append_v6(self, chain: str, table: str, *params: str) -> None:
        if self.ipv6:
            self.v6.append(Rule(table, chain, ("-A", chain, *params)))

    def append(self, chain: str, table: str, *params: str) -> None:
        self.append_v4(chain, table, *params)
        self.append_v6(chain, table, *params)

    def insert_v4(self, chain: str, table: str, pos: int, *params: str) -> None:
        self.v4.append(Rule(table, chain, ("-I", chain, str(pos), *params)))

    def insert_v6(self, chain: str, table: str, pos: int, *params: str) -> None:
        if self.ipv6:
            self.v6.append(Rule(table, chain, ("-I", chain, str(pos), *params)))

    def insert(self, chain: str, table: str, pos: int, *params: str) -> None:
        self.insert_v4(chain, table, pos, *params)
        self.insert_v6(chain, table, pos, *params)

    def append_versioned(self, ip4: str, ip6: str, chain: str, table: str, *params: str) -> None:
        self.append_v4(chain, table, *(ip4 if p == _PLACEHOLDER else p for p in params))
        self.append_v6(chain, table, *(ip6 if p == _PLACEHOLDER else p for p in params))


def build(config: CaptureConfig) -> RuleSet:
    """The rules istio-iptables would install for CONFIG (IPv6 and DNS servers resolved)."""
    c = config
    ipv6 = bool(c.enable_ipv6)
    dns4 = c.dns_servers_v4 or ()
    dns6 = c.dns_servers_v6 or ()
    b = _Builder(ipv6)
    lo4 = c.host_ipv4_loopback_cidr
    _excl4, _excl6 = separate_ranges(c.outbound_ip_ranges_exclude)
    incl4, incl6 = separate_ranges(c.outbound_ip_ranges_include)
    # "REDIRECT_DNS is set, but CAPTURE_ALL_DNS is false, and no DNS servers provided.
    # DNS capture disabled."
    redirect_dns = c.redirect_dns and (c.capture_all_dns or bool(dns4) or bool(dns6))
    tproxy = c.tproxy

    # shortCircuitExcludeInterfaces
    for nic in c.exclude_interfaces:
        b.append("PREROUTING", "nat", "-i", nic, "-j", "RETURN")
        b.append("OUTPUT", "nat", "-o", nic, "-j", "RETURN")
    if tproxy:
        for nic in c.exclude_interfaces:
            b.append("PREROUTING", "mangle", "-i", nic, "-j", "RETURN")
            b.append("OUTPUT", "mangle", "-o", nic, "-j", "RETURN")
    # shortCircuitKubeInternalInterface
    for nic in c.reroute_virtual_interfaces:
        b.insert("PREROUTING", "nat", 1, "-i", nic, "-j", "RETURN")
    if c.drop_invalid:
        b.append("PREROUTING", "mangle", "-m", "conntrack", "--ctstate", "INVALID",
                 "-j", ISTIO_DROP)
        b.append(ISTIO_DROP, "mangle", "-j", "DROP")
    b.append(ISTIO_INBOUND, "nat", "-p", "tcp", "--dport", c.inbound_tunnel_port, "-j", "RETURN")
    b.append(ISTIO_REDIRECT, "nat", "-p", "tcp", "-j", "REDIRECT", "--to-ports", c.proxy_port)
    b.append(ISTIO_IN_REDIRECT, "nat", "-p", "tcp", "-j", "REDIRECT",
             "--to-ports", c.inbound_capture_port)
    _inbound(b, c, lo4)
    b.append("OUTPUT", "nat", "-j", ISTIO_OUTPUT)
    for port in c.outbound_ports_exclude:
        b.append(ISTIO_OUTPUT, "nat", "-p", "tcp", "--dport", port, "-j", "RETURN")
        b.append(ISTIO_OUTPUT, "nat", "-p", "udp", "--dport", port, "-j", "RETURN")
    # "127.0.0.6/::6 is bind connect from inbound passthrough cluster"
    b.append_versioned("127.0.0.6/32", "::6/128", ISTIO_OUTPUT, "nat",
                       "-o", "lo", "-s", _PLACEHOLDER, "-j", "RETURN")
    loopback_included = incl4.has_loopback or incl6.has_loopback
    for owner, ids in (("--uid-owner", c.proxy_uid), ("--gid-owner", c.proxy_gid)):
        for ident in ids:
            # App -> Service VIP -> Envoy outbound -> Envoy inbound -> app, over lo.
            if redirect_dns and owner == "--uid-owner":
                not_ports: tuple[str, ...] = ("-m", "multiport", "!", "--dports",
                                              "53," + c.inbound_tunnel_port)
            else:
                not_ports = ("!", "--dport", c.inbound_tunnel_port)
            b.append_versioned(lo4, V6_LOOPBACK, ISTIO_OUTPUT, "nat", "-o", "lo",
                               "!", "-d", _PLACEHOLDER, "-p", "tcp", *not_ports,
                               "-m", "owner", owner, ident, "-j", ISTIO_IN_REDIRECT)
            # appN => appN over lo is not captured, unless a loopback CIDR is included.
            if not loopback_included:
                dns_tcp = ("-p", "tcp", "!", "--dport", "53") if redirect_dns else ()
                b.append(ISTIO_OUTPUT, "nat", "-o", "lo", *dns_tcp,
                         "-m", "owner", "!", owner, ident, "-j", "RETURN")
            # Never capture Envoy's own traffic (protocol-independent).
            b.append(ISTIO_OUTPUT, "nat", "-m", "owner", owner, ident, "-j", "RETURN")
    _owner_groups(b, c)
    if redirect_dns:
        _dns(b, c, dns4, dns6)
    b.append_versioned(lo4, V6_LOOPBACK, ISTIO_OUTPUT, "nat", "-d", _PLACEHOLDER, "-j", "RETURN")
    for cidr in _excl4.cidrs:
        b.append_v4(ISTIO_OUTPUT, "nat", "-d", cidr, "-j", "RETURN")
    for cidr in _excl6.cidrs:
        b.append_v6(ISTIO_OUTPUT, "nat", "-d", cidr, "-j", "RETURN")
    for port in c.outbound_ports_include:
        b.append(ISTIO_OUTPUT, "nat", "-p", "tcp", "--dport", port, "-j", ISTIO_REDIRECT)
    _outbound_include(b.append_v4, b.insert_v4, incl4, c)
    _outbound_include(b.append_v6, b.insert_v6, incl6, c)
    if tproxy:
        _tproxy_extras(b, c, lo4)

    routing = None
    if c.inbound_ports_include and tproxy:
        routing = TproxyRouting(int(c.inbound_tproxy_mark), int(c.inbound_tproxy_route_table),
                                ipv6)
    return RuleSet(tuple(b.v4), tuple(b.v6), ipv6, routing, ipv6)


def _inbound(b: _Builder, c: CaptureConfig, lo4: str) -> None:
    """run.go handleInboundPortsInclude."""
    if not c.inbound_ports_include:
        return
    if c.tproxy:
        b.append(ISTIO_DIVERT, "mangle", "-j", "MARK", "--set-mark", c.inbound_tproxy_mark)
        b.append(ISTIO_DIVERT, "mangle", "-j", "ACCEPT")
        b.append_versioned(lo4, V6_LOOPBACK, ISTIO_TPROXY, "mangle", "!", "-d", _PLACEHOLDER,
                           "-p", "tcp", "-j", "TPROXY",
                           "--tproxy-mark", c.inbound_tproxy_mark + "/0xffffffff",
                           "--on-port", c.inbound_capture_port)
        table = "mangle"
    else:
        table = "nat"
    b.append("PREROUTING", table, "-p", "tcp", "-j", ISTIO_INBOUND)
    if c.inbound_ports_include == ("*",):
        for port in c.inbound_ports_exclude:
            b.append(ISTIO_INBOUND, table, "-p", "tcp", "--dport", port, "-j", "RETURN")
        if c.tproxy:
            b.append(ISTIO_INBOUND, "mangle", "-p", "tcp", "-m", "conntrack",
                     "--ctstate", "RELATED,ESTABLISHED", "-j", ISTIO_DIVERT)
            b.append(ISTIO_INBOUND, "mangle", "-p", "tcp", "-j", ISTIO_TPROXY)
        else:
            b.append(ISTIO_INBOUND, "nat", "-p", "tcp", "-j", ISTIO_IN_REDIRECT)
        return
    for port in c.inbound_ports_include:
        if c.tproxy:
            b.append(ISTIO_INBOUND, "mangle", "-p", "tcp", "--dport", port, "-m", "conntrack",
                     "--ctstate", "RELATED,ESTABLISHED", "-j", ISTIO_DIVERT)
            b.append(ISTIO_INBOUND, "mangle", "-p", "tcp", "--dport", port, "-j", ISTIO_TPROXY)
        else:
            b.append(ISTIO_INBOUND, "nat", "-p", "tcp", "--dport", port, "-j", ISTIO_IN_REDIRECT)


def _owner_groups(b: _Builder, c: CaptureConfig) -> None:
    """run.go handleCaptureByOwnerGroup over config.ParseInterceptFilter."""
    if c.owner_groups_include == "*":
        for group in split(c.owner_groups_exclude):
            b.append(ISTIO_OUTPUT, "nat", "-m", "owner", "--gid-owner", group, "-j", "RETURN")
        return
    matchers: list[str] = []
    for group in split(c.owner_groups_include):
        matchers += ["-m", "owner", "!", "--gid-owner", group]
    b.append(ISTIO_OUTPUT, "nat", *matchers, "-j", "RETURN")


def _dns(b: _Builder, c: CaptureConfig, dns4: tuple[str, ...], dns6: tuple[str, ...]) -> None:
    """run.go SetupDNSRedir + addDNSConntrackZones."""
    all_dns = c.capture_all_dns
    b.append("OUTPUT", "raw", "-j", ISTIO_OUTPUT_DNS)
    if all_dns or dns4:
        b.append_v4(ISTIO_OUTPUT, "nat", "-j", ISTIO_OUTPUT_DNS)
    if all_dns or dns6:
        b.append_v6(ISTIO_OUTPUT, "nat", "-j", ISTIO_OUTPUT_DNS)
    redirect = ("-j", "REDIRECT")
    if all_dns:
        b.append(ISTIO_OUTPUT_DNS, "nat", "-p", "tcp", "--dport", "53", *redirect,
                 "--to-ports", DNS_AGENT_PORT)
        # Istio writes --to-port (singular) for UDP; iptables accepts both.
        b.append(ISTIO_OUTPUT_DNS, "nat", "-p", "udp", "--dport", "53", *redirect,
                 "--to-port", DNS_AGENT_PORT)
    else:
        for s in dns4:
            b.append_v4(ISTIO_OUTPUT_DNS, "nat", "-p", "tcp", "--dport", "53", "-d", s + "/32",
                        *redirect, "--to-ports", DNS_AGENT_PORT)
        for s in dns6:
            b.append_v6(ISTIO_OUTPUT_DNS, "nat", "-p", "tcp", "--dport", "53", "-d", s + "/128",
                        *redirect, "--to-ports", DNS_AGENT_PORT)
        for s in dns4:
            b.append_v4(ISTIO_OUTPUT_DNS, "nat", "-p", "udp", "--dport", "53", "-d", s + "/32",
                        *redirect, "--to-port", DNS_AGENT_PORT)
        for s in dns6:
            b.append_v6(ISTIO_OUTPUT_DNS, "nat", "-p", "udp", "--dport", "53", "-d", s + "/128",
                        *redirect, "--to-port", DNS_AGENT_PORT)
    # Conntrack zones: Istio <-> upstream resolvers in zone 1, clients <-> Istio in zone 2.
    for owner, ids in (("--uid-owner", c.proxy_uid), ("--gid-owner", c.proxy_gid)):
        for ident in ids:
            b.append(ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--dport", "53", "-m", "owner",
                     owner, ident, "-j", "CT", "--zone", "1")
            b.append(ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--sport", DNS_AGENT_PORT, "-m",
                     "owner", owner, ident, "-j", "CT", "--zone", "2")
    if all_dns:
        b.append("PREROUTING", "raw", "-j", ISTIO_INBOUND)
        b.append(ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2")
        b.append(ISTIO_INBOUND, "raw", "-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1")
        return
    if dns4:
        b.append_v4("PREROUTING", "raw", "-j", ISTIO_INBOUND)
    for s in dns4:
        b.append_v4(ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--dport", "53", "-d", s + "/32",
                    "-j", "CT", "--zone", "2")
        b.append_v4(ISTIO_INBOUND, "raw", "-p", "udp", "--sport", "53", "-s", s + "/32",
                    "-j", "CT", "--zone", "1")
    if dns6:
        b.append_v6("PREROUTING", "raw", "-j", ISTIO_INBOUND)
    for s in dns6:
        b.append_v6(ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--dport", "53", "-d", s + "/128",
                    "-j", "CT", "--zone", "2")
        b.append_v6(ISTIO_INBOUND, "raw", "-p", "udp", "--sport", "53", "-s", s + "/128",
                    "-j", "CT", "--zone", "1")


def _outbound_include(append: Callable[..., None], insert: Callable[..., None], ranges: Ranges,
                      c: CaptureConfig) -> None:
    """run.go handleOutboundIncludeRules, once per family."""
    if ranges.wildcard:
        append(ISTIO_OUTPUT, "nat", "-j", ISTIO_REDIRECT)
        for nic in c.reroute_virtual_interfaces:
            insert("PREROUTING", "nat", 1, "-i", nic, "-j", ISTIO_REDIRECT)
        return
    for cidr in ranges.cidrs:
        for nic in c.reroute_virtual_interfaces:
            insert("PREROUTING", "nat", 1, "-i", nic, "-d", cidr, "-j", ISTIO_REDIRECT)
        append(ISTIO_OUTPUT, "nat", "-d", cidr, "-j", ISTIO_REDIRECT)


def _tproxy_extras(b: _Builder, c: CaptureConfig, lo4: str) -> None:
    """The mangle rules that make TPROXY and original_src work (end of run.go Run())."""
    mark = c.inbound_tproxy_mark
    # "save packet mark set by envoy.filters.listener.original_src as connection mark"
    b.append("PREROUTING", "mangle", "-p", "tcp", "-m", "mark", "--mark", mark,
             "-j", "CONNMARK", "--save-mark")
    # "If the packet is already marked with 1337, then return."
    b.append("OUTPUT", "mangle", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark,
             "-j", "RETURN")
    for owner, ids in (("--uid-owner", c.proxy_uid), ("--gid-owner", c.proxy_gid)):
        for ident in ids:
            b.append_versioned(lo4, V6_LOOPBACK, "OUTPUT", "mangle", "!", "-d", _PLACEHOLDER,
                               "-p", "tcp", "-o", "lo", "-m", "owner", owner, ident,
                               "-j", "MARK", "--set-mark", OUTBOUND_MARK)
    # App replies get the connection's mark back, so policy routing sends them to lo.
    b.append("OUTPUT", "mangle", "-p", "tcp", "-m", "connmark", "--mark", mark,
             "-j", "CONNMARK", "--restore-mark")
    b.insert(ISTIO_INBOUND, "mangle", 1, "-p", "tcp", "-m", "mark", "--mark", mark,
             "-j", "RETURN")
    b.insert_v4(ISTIO_INBOUND, "mangle", 2, "-p", "tcp", "-s", "127.0.0.6/32", "-i", "lo",
                "-j", "RETURN")
    b.insert_v6(ISTIO_INBOUND, "mangle", 2, "-p", "tcp", "-s", "::6/128", "-i", "lo",
                "-j", "RETURN")
    b.insert(ISTIO_INBOUND, "mangle", 3, "-p", "tcp", "-i", "lo", "-m", "mark", "!",
             "--mark", OUTBOUND_MARK, "-j", "RETURN")

