"""The addresses a source-ip diagnosis needs, each with where it came from.

Client and server pod IPs, the service address and port, and the HTTP authority are read
from what the user gave (flags), the access logs (DOWNSTREAM_REMOTE_ADDRESS,
DOWNSTREAM_LOCAL_ADDRESS, UPSTREAM_HOST, :authority), the Istio node ids in the config
dumps (``sidecar~POD_IP~POD.NS~...``) and the client's route domains (Istio lists a
service's ClusterIP there). What none of them gives becomes a TEST-NET placeholder
(RFC 5737), marked as such.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from remora.diagnose.facts import is_ip, split_hostport
from remora.diagnose.source_ip.evidence import Evidence
from remora.errors import RemoraError

if TYPE_CHECKING:
    from remora.diagnose.envoy.access_log import AccessLogEntry

PLACEHOLDER_CLIENT = "192.0.2.10"
PLACEHOLDER_SERVER = "192.0.2.20"
PLACEHOLDER_VIP = "198.51.100.10"
# IPv6: the documentation prefix (RFC 3849)
PLACEHOLDERS_V6 = {PLACEHOLDER_CLIENT: "2001:db8::10", PLACEHOLDER_SERVER: "2001:db8::20",
                   PLACEHOLDER_VIP: "2001:db8:96::10"}


@dataclass(frozen=True)
class Fact:
    value: str
    source: str  # where it came from: "--client-ip", "access log line 2", "assumed", ...

    @property
    def known(self) -> bool:
        return not self.source.startswith("placeholder")


def ip_of(addr: str | None) -> str | None:
    if not addr:
        return None
    ip, _ = split_hostport(addr)
    return ip if is_ip(ip) else None


def log_port(entry: AccessLogEntry) -> int | None:
    """The destination port an inbound access-log line is for: its DOWNSTREAM_LOCAL_ADDRESS
    (the original destination the listener restored), else the port Istio names in the
    inbound cluster (``inbound|18080||``, pilot's BuildSubsetKey); None when neither says."""
    _, port = split_hostport(entry.downstream_local_address or "")
    if port:
        return int(port)
    m = re.match(r"inbound\|(\d+)\|", entry.upstream_cluster or "")
    return int(m.group(1)) if m else None


def for_port(entries: list[AccessLogEntry], port: int | str | None) -> list[AccessLogEntry]:
    """The lines of this destination port (all of them when the port is not known):
    a line for another port of the same pod says nothing about this one."""
    if not port:
        return entries
    return [e for e in entries if log_port(e) == int(port)]


def resolve_facts(ev: Evidence) -> dict[str, Fact]:
    """Client IP, server IP, service address and port, each with where it came from."""
    facts: dict[str, Fact] = {}
    s_in = [e for e in ev.server.access_log if e.direction == "inbound"]
    c_out = [e for e in ev.client.access_log if e.direction == "outbound"]

    def first(*cands: tuple[str | None, str]) -> Fact | None:
        for value, source in cands:
            if value:
                return Fact(value, source)
        return None

    z_in = [e for e in ev.server.ztunnel_log if e.direction == "inbound"]
    client = first(
        (ev.client.ip, "given"),
        *((ip_of(e.src), f"ztunnel log line {e.line} (src.addr)") for e in z_in),
        # the client of a line for another port (a metrics scraper) is not this client
        *((ip_of(e.downstream_remote_address), f"server access log line {e.line}")
          for e in for_port(s_in, ev.target.port)),
        (ev.client.config.pod_ip() if ev.client.config else None, "client config node id"),
        *((ip_of(e.downstream_remote_address), f"client access log line {e.line}") for e in c_out),
    )
    server = first(
        (ev.server.ip, "given"),
        *((ip_of(e.dst), f"ztunnel log line {e.line} (dst.addr)") for e in z_in),
        (ev.server.config.pod_ip() if ev.server.config else None, "server config node id"),
        *((ip_of(e.downstream_local_address), f"server access log line {e.line}") for e in s_in),
        *((ip_of(e.upstream_host), f"client access log line {e.line}") for e in c_out),
    )
    facts["client_ip"] = client or Fact(PLACEHOLDER_CLIENT, "placeholder (client pod IP unknown)")
    facts["server_ip"] = server or Fact(PLACEHOLDER_SERVER, "placeholder (server pod IP unknown)")
    host = ev.target.host
    port = ev.target.port
    port_fact = first(
        (str(port) if port else None, "--to"),
        *((str(split_hostport(e.downstream_local_address or "")[1] or "") or None,
           f"server access log line {e.line}") for e in s_in),
        *((str(split_hostport(e.downstream_local_address or "")[1] or "") or None,
           f"client access log line {e.line}") for e in c_out),
        _inbound_port(ev),
        _inbound_cluster_port(ev),
        *((str(split_hostport(e.dst)[1] or "") or None, f"ztunnel log line {e.line} "
           "(dst.addr)") for e in z_in),
    )
    if port_fact is None:
        raise RemoraError("cannot tell the destination port from the evidence",
                          "pass --to HOST:PORT (e.g. --to simple-server-svc.demo-to:18080)")
    facts["port"] = port_fact
    if host and is_ip(host):
        facts["service_ip"] = Fact(host, "--to")
    else:
        vip = first(*((ip_of(e.downstream_local_address), f"client access log line {e.line}")
                      for e in c_out))
        vip = vip or _vip_from_routes(ev, host)
        facts["service_ip"] = vip or Fact(PLACEHOLDER_VIP, "placeholder (service ClusterIP "
                                          "unknown; assumed outside every excluded CIDR)")
    authority = first(
        (f"{host}:{port_fact.value}" if host and not is_ip(host) else None, "--to"),
        *((e.authority, f"server access log line {e.line}")
          for e in for_port(s_in, port_fact.value)),
        *((e.authority, f"client access log line {e.line}") for e in c_out),
    )
    if authority:
        facts["authority"] = authority
    if family_of(ev, facts) == 6:
        for name in ("client_ip", "server_ip", "service_ip"):
            f = facts[name]
            if not f.known:
                facts[name] = Fact(PLACEHOLDERS_V6[f.value], f.source.replace(
                    "placeholder", "placeholder, IPv6", 1))
    return facts


def family_of(ev: Evidence, facts: dict[str, Fact]) -> int:
    """The connection's address family: that of the known addresses (an IPv6 client,
    pod or service address: the IPv6 rules and ``::6`` decide), else IPv6 when the rules
    given are IPv6 only (ip6tables)."""
    known = [f.value for name, f in facts.items()
             if name in ("client_ip", "server_ip", "service_ip") and f.known and is_ip(f.value)]
    if known:
        return 6 if ":" in known[0] else 4
    v6_only = any(p.iptables6 is not None and p.iptables is None for p in (ev.client, ev.server))
    return 6 if v6_only else 4


def _inbound_port(ev: Evidence) -> tuple[str | None, str]:
    """The one service port the server's virtualInbound has chains for, if just one."""
    cfg = ev.server.config
    ports: set[int] = set()
    for lst in cfg.listeners if cfg else []:
        if lst.get("name") != "virtualInbound":
            continue
        for chain in lst.get("filter_chains", []) or []:
            port = (chain.get("filter_chain_match") or {}).get("destination_port")
            if port and int(port) not in (15006, 15001, 15008):
                ports.add(int(port))
    only = str(ports.pop()) if len(ports) == 1 else None
    return only, "the server's only inbound port (virtualInbound chains)"


def _inbound_cluster_port(ev: Evidence) -> tuple[str | None, str]:
    """The port in the server's inbound cluster names, if they name just one.

    Istio names a sidecar's inbound clusters ``inbound|PORT|PORTNAME|HOST`` (before 1.10
    ``inbound|9080|http|productpage.default.svc.cluster.local``, from 1.10
    ``inbound|18080||``): the port is the service's target port, the one the client's
    connection reaches the server pod on. InboundPassthroughCluster names none."""
    cfg = ev.server.config
    ports: set[int] = set()
    names: list[str] = []
    for name in cfg.clusters if cfg else {}:
        kind, _, rest = str(name).partition("|")
        port = rest.partition("|")[0]
        if kind == "inbound" and port.isdigit() and int(port) not in (15006, 15001, 15008):
            ports.add(int(port))
            names.append(str(name))
    if len(ports) != 1:
        return None, ""
    return str(ports.pop()), f"the server's inbound cluster name {names[0]}"


def _vip_from_routes(ev: Evidence, host: str | None) -> Fact | None:
    """Istio lists a service's ClusterIP among its virtual host's domains."""
    cfg = ev.client.config
    if cfg is None or not host:
        return None
    vhosts = [vh for rc in cfg.routes.values() for vh in rc.get("virtual_hosts", []) or []]
    for lst in cfg.listeners:
        for chain in lst.get("filter_chains", []) or []:
            for f in chain.get("filters", []) or []:
                rc = (f.get("typed_config") or {}).get("route_config") or {}
                vhosts.extend(rc.get("virtual_hosts", []) or [])
    for vh in vhosts:
        domains = [str(d) for d in vh.get("domains", []) or []]
        if host in domains or any(d.split(":")[0] == host for d in domains):
            ips = [d.split(":")[0] for d in domains if is_ip(d.split(":")[0])]
            if ips:
                return Fact(ips[0], f"client route domains of {vh.get('name')}")
    return None
