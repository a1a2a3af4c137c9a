"""The capture rules for the native nftables backend (`--native-nftables`, Istio >= 1.28).

A port of tools/istio-nftables/pkg/capture/run.go (Istio 86c9f01): the same decisions as
the iptables model (model.py), expressed as nft rules in three `inet` tables
(istio-proxy-nat, -mangle, -raw). One rule list serves both families; IPv6-only rules are
added only when IPv6 is on. The call order is the output order, held to Istio's goldens
in tests/data/conformance/istio-nftables.
https://github.com/istio/istio/blob/master/tools/istio-nftables/pkg/capture/run.go
"""

from __future__ import annotations

from dataclasses import dataclass

from remora.capture.config import CaptureConfig
from remora.capture.model import DNS_AGENT_PORT, OUTBOUND_MARK, separate_ranges
from remora.capture.validate import split

NAT, MANGLE, RAW = "istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"
TABLES = (NAT, MANGLE, RAW)
PREROUTING, OUTPUT = "prerouting", "output"
INBOUND, OUTPUT_CHAIN, OUTPUT_DNS = "istio-inbound", "istio-output", "istio-output-dns"
REDIRECT, IN_REDIRECT = "istio-redirect", "istio-in-redirect"
DIVERT, TPROXY, DROP = "istio-divert", "istio-tproxy", "istio-drop"
COUNTER = "counter"


@dataclass(frozen=True)
class NftRule:
    table: str
    chain: str
    rule: str
    index: int | None = None  # an insert (knftables Rule.Index) when set


class _Builder:
    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.rules: list[NftRule] = []

    def add(self, chain: str, table: str, *params: str) -> None:
        self.rules.append(NftRule(table, chain, " ".join(params)))

    def add6(self, chain: str, table: str, *params: str) -> None:
        if self.ipv6:
            self.add(chain, table, *params)

    def insert(self, chain: str, table: str, index: int, *params: str) -> None:
        self.rules.append(NftRule(table, chain, " ".join(params), index))

    def insert6(self, chain: str, table: str, index: int, *params: str) -> None:
        if self.ipv6:
            self.insert(chain, table, index, *params)


def build_nft(config: CaptureConfig) -> list[NftRule]:
    c = config
    b = _Builder(bool(c.enable_ipv6))
    lo4 = c.host_ipv4_loopback_cidr
    excl4, excl6 = separate_ranges(c.outbound_ip_ranges_exclude)
    incl4, incl6 = separate_ranges(c.outbound_ip_ranges_include)
    dns4, dns6 = c.dns_servers_v4 or (), c.dns_servers_v6 or ()
    redirect_dns = c.redirect_dns and (c.capture_all_dns or bool(dns4) or bool(dns6))

    for nic in c.exclude_interfaces:
        b.add(PREROUTING, NAT, "iifname", nic, COUNTER, "return")
        b.add(OUTPUT, NAT, "oifname", nic, COUNTER, "return")
    if c.tproxy:
        for nic in c.exclude_interfaces:
            b.add(PREROUTING, MANGLE, "iifname", nic, COUNTER, "return")
            b.add(OUTPUT, MANGLE, "oifname", nic, COUNTER, "return")
    for nic in c.reroute_virtual_interfaces:
        b.insert(PREROUTING, NAT, 0, "iifname", nic, COUNTER, "return")
    if c.drop_invalid:
        b.add(PREROUTING, MANGLE, "meta l4proto tcp", "ct state", "invalid", COUNTER, "jump", DROP)
        b.add(DROP, MANGLE, COUNTER, "drop")
    b.add(INBOUND, NAT, "meta l4proto tcp", "tcp dport", c.inbound_tunnel_port, COUNTER,
          "return")
    b.add(REDIRECT, NAT, "meta l4proto tcp", COUNTER, "redirect to", ":" + c.proxy_port)
    b.add(IN_REDIRECT, NAT, "meta l4proto tcp", COUNTER, "redirect to",
          ":" + c.inbound_capture_port)
    _inbound(b, c, lo4)
    b.add(OUTPUT, NAT, COUNTER, "jump", OUTPUT_CHAIN)
    for port in c.outbound_ports_exclude:
        b.add(OUTPUT_CHAIN, NAT, "tcp dport", port, COUNTER, "return")
        b.add(OUTPUT_CHAIN, NAT, "udp dport", port, COUNTER, "return")
    b.add(OUTPUT_CHAIN, NAT, "oifname", "lo", "ip saddr", "127.0.0.6/32", COUNTER, "return")
    b.add6(OUTPUT_CHAIN, NAT, "oifname", "lo", "ip6 saddr", "::6/128", COUNTER, "return")
    loopback_included = incl4.has_loopback or incl6.has_loopback
    for owner, ids in (("skuid", c.proxy_uid), ("skgid", c.proxy_gid)):
        for ident in ids:
            if redirect_dns and owner == "skuid":
                ports = "{ 53, " + c.inbound_tunnel_port + " }"
            else:
                ports = c.inbound_tunnel_port
            b.add(OUTPUT_CHAIN, NAT, "oifname", "lo", "meta l4proto tcp", "ip daddr", "!=", lo4,
                  "tcp dport", "!=", ports, owner, ident, COUNTER, "jump", IN_REDIRECT)
            b.add6(OUTPUT_CHAIN, NAT, "oifname", "lo", "meta l4proto tcp", "ip6 daddr", "!=",
                   "::1/128", "tcp dport", "!=", ports, owner, ident, COUNTER, "jump",
                   IN_REDIRECT)
            if not loopback_included:
                if redirect_dns:
                    b.add(OUTPUT_CHAIN, NAT, "oifname", "lo", "meta l4proto tcp", "tcp dport",
                          "!=", "53", owner, "!=", ident, COUNTER, "return")
                else:
                    b.add(OUTPUT_CHAIN, NAT, "oifname", "lo", owner, "!=", ident, COUNTER,
                          "return")
            b.add(OUTPUT_CHAIN, NAT, owner, ident, COUNTER, "return")
    if c.owner_groups_include == "*":
        for group in split(c.owner_groups_exclude):
            b.add(OUTPUT_CHAIN, NAT, "skgid", group, COUNTER, "return")
    else:
        matchers = [p for g in split(c.owner_groups_include) for p in ("skgid", "!=", g)]
        b.add(OUTPUT_CHAIN, NAT, *matchers, COUNTER, "return")
    if redirect_dns:
        _dns(b, c, dns4, dns6)
    b.add(OUTPUT_CHAIN, NAT, "ip daddr", lo4, COUNTER, "return")
    b.add6(OUTPUT_CHAIN, NAT, "ip6 daddr", "::1/128", COUNTER, "return")
    for cidr in excl4.cidrs:
        b.add(OUTPUT_CHAIN, NAT, "ip daddr", cidr, COUNTER, "return")
    for cidr in excl6.cidrs:
        b.add6(OUTPUT_CHAIN, NAT, "ip6 daddr", cidr, COUNTER, "return")
    for port in c.outbound_ports_include:
        b.add(OUTPUT_CHAIN, NAT, "tcp dport", port, COUNTER, "jump", REDIRECT)
    if incl4.wildcard or incl6.wildcard:
        b.add(OUTPUT_CHAIN, NAT, COUNTER, "jump", REDIRECT)
        for nic in c.reroute_virtual_interfaces:
            b.insert(PREROUTING, NAT, 0, "iifname", nic, COUNTER, "jump", REDIRECT)
    else:
        for cidr in incl4.cidrs:
            for nic in c.reroute_virtual_interfaces:
                b.insert(PREROUTING, NAT, 0, "iifname", nic, "ip daddr", cidr, COUNTER, "jump",
                         REDIRECT)
            b.add(OUTPUT_CHAIN, NAT, "ip daddr", cidr, COUNTER, "jump", REDIRECT)
        for cidr in incl6.cidrs:
            for nic in c.reroute_virtual_interfaces:
                b.insert6(PREROUTING, NAT, 0, "iifname", nic, "ip6 daddr", cidr, COUNTER, "jump",
                          REDIRECT)
            b.add6(OUTPUT_CHAIN, NAT, "ip6 daddr", cidr, COUNTER, "jump", REDIRECT)
    if c.tproxy:
        _tproxy_extras(b, c, lo4)
    return b.rules


def _inbound(b: _Builder, c: CaptureConfig, lo4: str) -> None:
    if not c.inbound_ports_include:
        return
    wildcard = c.inbound_ports_include == ("*",)
    if not c.tproxy:
        b.add(PREROUTING, NAT, "meta l4proto tcp", COUNTER, "jump", INBOUND)
        if wildcard:
            for port in c.inbound_ports_exclude:
                b.add(INBOUND, NAT, "meta l4proto tcp", "tcp dport", port, COUNTER, "return")
            b.add(INBOUND, NAT, "meta l4proto tcp", COUNTER, "jump", IN_REDIRECT)
        else:
            for port in c.inbound_ports_include:
                b.add(INBOUND, NAT, "meta l4proto tcp", "tcp dport", port, COUNTER, "jump",
                      IN_REDIRECT)
        return
    mark = c.inbound_tproxy_mark
    b.add(DIVERT, MANGLE, COUNTER, "meta mark set", mark)
    b.add(DIVERT, MANGLE, COUNTER, "accept")
    b.add(TPROXY, MANGLE, "meta l4proto tcp", "ip daddr", "!=", lo4, "tproxy ip to",
          ":" + c.inbound_capture_port, "meta mark set", mark, COUNTER, "accept")
    b.add6(TPROXY, MANGLE, "meta l4proto tcp", "ip6 daddr", "!=", "::1/128", "tproxy ip6 to",
           ":" + c.inbound_capture_port, "meta mark set", mark, COUNTER, "accept")
    b.add(PREROUTING, MANGLE, "meta l4proto tcp", COUNTER, "jump", INBOUND)
    if wildcard:
        for port in c.inbound_ports_exclude:
            b.add(INBOUND, MANGLE, "meta l4proto tcp", "tcp dport", port, COUNTER, "return")
        b.add(INBOUND, MANGLE, "meta l4proto tcp", "ct state", "related,established", COUNTER,
              "jump", DIVERT)
        b.add(INBOUND, MANGLE, "meta l4proto tcp", COUNTER, "jump", TPROXY)
    else:
        for port in c.inbound_ports_include:
            b.add(INBOUND, MANGLE, "meta l4proto tcp", "ct state", "related,established",
                  "tcp dport", port, COUNTER, "jump", DIVERT)
            b.add(INBOUND, MANGLE, "meta l4proto tcp", "tcp dport", port, COUNTER, "jump", TPROXY)


def _dns(b: _Builder, c: CaptureConfig, dns4: tuple[str, ...], dns6: tuple[str, ...]) -> None:
    to = ("redirect", "to", ":" + DNS_AGENT_PORT)
    b.add(OUTPUT, RAW, COUNTER, "jump", OUTPUT_DNS)
    if c.capture_all_dns or dns4 or dns6:
        b.add(OUTPUT_CHAIN, NAT, COUNTER, "jump", OUTPUT_DNS)
    for proto in ("tcp", "udp"):
        if c.capture_all_dns:
            l4 = ("meta l4proto tcp",) if proto == "tcp" else ()
            b.add(OUTPUT_DNS, NAT, *l4, f"{proto} dport", "53", COUNTER, *to)
            continue
        for s in dns4:
            b.add(OUTPUT_DNS, NAT, "ip daddr", s + "/32", f"{proto} dport", "53", COUNTER, *to)
        for s in dns6:
            b.add6(OUTPUT_DNS, NAT, "ip6 daddr", s + "/128", f"{proto} dport", "53", COUNTER,
                   *to)
    for owner, ids in (("skuid", c.proxy_uid), ("skgid", c.proxy_gid)):
        for ident in ids:
            b.add(OUTPUT_DNS, RAW, "udp dport", "53", "meta", owner, ident, COUNTER,
                  "ct", "zone", "set", "1")
            b.add(OUTPUT_DNS, RAW, "udp sport", DNS_AGENT_PORT, "meta", owner, ident, COUNTER,
                  "ct", "zone", "set", "2")
    if c.capture_all_dns:
        b.add(PREROUTING, RAW, COUNTER, "jump", INBOUND)
        b.add(OUTPUT_DNS, RAW, "udp dport", "53", COUNTER, "ct", "zone", "set", "2")
        b.add(INBOUND, RAW, "udp sport", "53", COUNTER, "ct", "zone", "set", "1")
        return
    if dns4 or dns6:
        b.add(PREROUTING, RAW, COUNTER, "jump", INBOUND)
    for s in dns4:
        b.add(OUTPUT_DNS, RAW, "udp dport", "53", "ip daddr", s + "/32", COUNTER,
              "ct", "zone", "set", "2")
        b.add(INBOUND, RAW, "udp sport", "53", "ip saddr", s + "/32", COUNTER,
              "ct", "zone", "set", "1")
    for s in dns6:
        b.add6(OUTPUT_DNS, RAW, "udp dport", "53", "ip6 daddr", s + "/128", COUNTER,
               "ct", "zone", "set", "2")
        b.add6(INBOUND, RAW, "udp sport", "53", "ip6 saddr", s + "/128", COUNTER,
               "ct", "zone", "set", "1")


def _tproxy_extras(b: _Builder, c: CaptureConfig, lo4: str) -> None:
    mark = c.inbound_tproxy_mark
    b.add(PREROUTING, MANGLE, "meta l4proto tcp", "mark", mark, COUNTER, "ct mark set mark")
    b.add(OUTPUT, MANGLE, "oifname", "lo", "meta l4proto tcp", "mark", mark, COUNTER, "return")
    for owner, ids in (("skuid", c.proxy_uid), ("skgid", c.proxy_gid)):
        for ident in ids:
            b.add(OUTPUT, MANGLE, "oifname", "lo", "meta l4proto tcp", "ip daddr", "!=", lo4,
                  owner, ident, COUNTER, "meta mark set", OUTBOUND_MARK)
            b.add6(OUTPUT, MANGLE, "oifname", "lo", "meta l4proto tcp", "ip6 daddr", "!=",
                   "::1/128", owner, ident, COUNTER, "meta mark set", OUTBOUND_MARK)
    b.add(OUTPUT, MANGLE, "meta l4proto tcp", "ct", "mark", mark, COUNTER, "meta mark set",
          "ct", "mark")
    b.insert(INBOUND, MANGLE, 0, "meta l4proto tcp", "mark", mark, COUNTER, "return")
    b.insert(INBOUND, MANGLE, 1, "iifname", "lo", "meta l4proto tcp", "ip saddr",
             "127.0.0.6/32", COUNTER, "return")
    b.insert6(INBOUND, MANGLE, 1, "iifname", "lo", "meta l4proto tcp", "ip6 saddr", "::6/128",
              COUNTER, "return")
    b.insert(INBOUND, MANGLE, 2, "iifname", "lo", "meta l4proto tcp", "mark", "!=",
             OUTBOUND_MARK, COUNTER, "return")
