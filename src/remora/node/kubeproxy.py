"""kube-proxy's iptables mode for pods without a sidecar, in each node namespace.

Rendered as data -> iptables-restore text (pure), then loaded with `iptables-restore`
inside every node namespace (which remora owns entirely, so both tables are replaced
whole). Chains mirror kube-proxy's (pkg/proxy/iptables/proxier.go) under remora's names:

  nat PREROUTING/OUTPUT -> REMORA-SERVICES: one rule per ClusterIP:port -> REMORA-SVC-<hash>
  REMORA-SVC-<hash>: endpoint i of n chosen with `-m statistic --mode random --probability
      1/(n-i)` (so each endpoint gets 1/n of new connections), last one unconditionally
  REMORA-SEP-<hash>: DNAT to the endpoint; traffic from the endpoint itself (hairpin) is
      marked 0x4000 and masqueraded in REMORA-POSTROUTING, as KUBE-MARK-MASQ does
  filter INPUT/FORWARD/OUTPUT -> REMORA-SERVICES: a service port with no endpoints REJECTs
      (the client sees "connection refused" at once, as on a cluster)

With IPv6 (`--ip-family ipv6|dual`) the IPv6 ClusterIPs get the same chains in
ip6tables, as kube-proxy runs one proxier per family: `/128` matches,
`DNAT --to-destination [ADDR]:PORT`, `REJECT --reject-with icmp6-port-unreachable`.

Pods with a sidecar never get here for ClusterIP traffic: their own capture rules send it
to the sidecar first, which connects to an endpoint's pod IP directly.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

from remora import netns
from remora.errors import RemoraError
from remora.node.naming import chain_hash

MASQ_MARK = "0x4000"


@dataclass(frozen=True)
class ServicePort:
    namespace: str
    name: str
    port_name: str
    protocol: str  # TCP | UDP | SCTP
    cluster_ip: str
    port: int
    endpoints: tuple[tuple[str, int], ...] = field(default=())

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" + (f":{self.port_name}" if self.port_name else "")


def svc_chain(sp: ServicePort) -> str:
    return "REMORA-SVC-" + chain_hash(sp.key, sp.protocol.lower())


def sep_chain(sp: ServicePort, ip: str, port: int) -> str:
    return "REMORA-SEP-" + chain_hash(sp.key, sp.protocol.lower(), f"{ip}:{port}")


def render(ports: list[ServicePort], ipv6: bool = False) -> str:
    """The nat and filter tables of a node namespace for these service ports (the
    ip6tables-restore text for the IPv6 ones with IPV6)."""
    host = "/128" if ipv6 else "/32"
    unreachable = "icmp6-port-unreachable" if ipv6 else "icmp-port-unreachable"
    ordered = sorted(ports, key=lambda p: (p.namespace, p.name, p.port_name, p.port))
    chains = ["REMORA-SERVICES", "REMORA-MARK-MASQ", "REMORA-POSTROUTING"]
    rules = [
        '-A PREROUTING -m comment --comment "remora service portals" -j REMORA-SERVICES',
        '-A OUTPUT -m comment --comment "remora service portals" -j REMORA-SERVICES',
        '-A POSTROUTING -m comment --comment "remora postrouting rules" -j REMORA-POSTROUTING',
        f"-A REMORA-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}",
        f"-A REMORA-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A REMORA-POSTROUTING -j MARK --set-xmark {MASQ_MARK}/0x0",
        "-A REMORA-POSTROUTING -j MASQUERADE",
    ]
    reject = []
    for sp in ordered:
        proto = sp.protocol.lower()
        match = f"-d {sp.cluster_ip}{host} -p {proto} -m {proto} --dport {sp.port}"
        if not sp.endpoints:
            reject.append(f'-A REMORA-SERVICES {match} -m comment --comment '
                          f'"{sp.key} has no endpoints" -j REJECT --reject-with '
                          f"{unreachable}")
            continue
        svc = svc_chain(sp)
        chains.append(svc)
        rules.append(f'-A REMORA-SERVICES {match} -m comment --comment "{sp.key} cluster IP" '
                     f"-j {svc}")
        n = len(sp.endpoints)
        for i, (ip, port) in enumerate(sp.endpoints):
            sep = sep_chain(sp, ip, port)
            chains.append(sep)
            pick = f"-A {svc} -m comment --comment \"{sp.key} -> {ip}:{port}\""
            if i < n - 1:
                pick += f" -m statistic --mode random --probability {1 / (n - i):.11f}"
            rules.append(f"{pick} -j {sep}")
            rules.append(f"-A {sep} -s {ip}{host} -j REMORA-MARK-MASQ")
            to = f"[{ip}]:{port}" if ipv6 else f"{ip}:{port}"
            rules.append(f"-A {sep} -p {proto} -m {proto} -j DNAT --to-destination {to}")
    nat = ["*nat", *(f":{c} ACCEPT [0:0]" for c in
                     ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")),
           *(f":{c} - [0:0]" for c in chains), *rules, "COMMIT"]
    filt = ["*filter", *(f":{c} ACCEPT [0:0]" for c in ("INPUT", "FORWARD", "OUTPUT")),
            ":REMORA-SERVICES - [0:0]",
            *(f"-A {c} -m conntrack --ctstate NEW -j REMORA-SERVICES"
              for c in ("INPUT", "FORWARD", "OUTPUT")),
            *reject, "COMMIT"]
    return "\n".join(nat + filt) + "\n"


def apply(node_netns: str, text: str, ipv6: bool = False) -> None:
    tool = "ip6tables-restore" if ipv6 else "iptables-restore"
    argv = netns.command(netns.resolve(node_netns), [tool, "-w", "5"])
    result = subprocess.run(argv, input=text.encode(), capture_output=True, check=False)
    if result.returncode != 0:
        raise RemoraError(
            f"{tool} in {node_netns} failed: "
            f"{result.stderr.decode(errors='replace').strip()}",
            "check that iptables (nft backend) is installed; `remora node status` shows the "
            "rules remora tried to load")
