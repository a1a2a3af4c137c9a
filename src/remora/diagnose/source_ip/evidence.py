"""What a diagnosis is given: per pod, rules, Envoy config and access log; plus the target.

Pure data. ``evidence_files`` fills it from files; the live lab will fill it from its
own pods. Every field may be missing: the diagnosis says which facts that leaves open.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from remora.diagnose.envoy.access_log import AccessLogEntry
from remora.diagnose.envoy.config import EnvoyConfig
from remora.diagnose.iptables.model import Ruleset
from remora.diagnose.iptables.policy_routing import PolicyRouting
from remora.diagnose.source_ip.ztunnel_log import ZtunnelEntry


@dataclass
class PodEvidence:
    role: str  # "client" or "server"
    iptables: Ruleset | None = None
    config: EnvoyConfig | None = None
    access_log: list[AccessLogEntry] = field(default_factory=list)
    app_log: list[str] = field(default_factory=list)  # the app's own RemoteAddr= lines
    pod: str | None = None  # pod name, for the commands we suggest
    namespace: str | None = None
    ip: str | None = None  # pod IP, when the user gives it
    sources: list[str] = field(default_factory=list)
    # The sidecar process's fsuid/fsgid, what `-m owner --uid-owner/--gid-owner` tests
    # (xt_owner.c reads the socket file's f_cred->fsuid/fsgid); None: Istio's default for
    # the interception mode is assumed. Remora's lab runs it with Istio's ids too.
    proxy_uid: int | None = None
    proxy_gid: int | None = None
    proxy_ids_source: str = ""
    policy_routing: PolicyRouting | None = None  # `ip rule` + the tables it looks up
    # istio-init's printed settings (INBOUND_INTERCEPTION_MODE, INBOUND_PORTS_INCLUDE, ...)
    declared: dict[str, str] = field(default_factory=dict)
    shell_script: bool = False  # rules from istio-iptables.sh (Istio 1.4 and before)
    version_text: list[str] = field(default_factory=list)  # `istioctl version`, image tags
    # the version this pod's own pilot-agent logged at start (its istio-proxy log), and
    # where: ((1, 11), "istio-proxy.log line 3: ...Version 1.11.4-...-Clean")
    agent_version: tuple[tuple[int, int], str] | None = None
    ztunnel_log: list[ZtunnelEntry] = field(default_factory=list)  # ambient: ztunnel's lines
    # the IPv6 rules (ip6tables-save, `ip6tables -L -v`, the IPv6 block of a golden):
    # walked instead of ``iptables`` when the connection is IPv6 (source_ip.explain)
    iptables6: Ruleset | None = None
    walk_family: int = 4  # the family whose rules ``iptables`` holds for this diagnosis
    # an istio-proxy log was given but has no access-log line: access logging is off
    # (Istio's default profile sets no meshConfig.accessLogFile)
    access_log_off: str | None = None

    @property
    def empty(self) -> bool:
        return (self.iptables is None and self.iptables6 is None and self.config is None
                and not self.access_log
                and not self.version_text and not self.declared and not self.ztunnel_log)

    def add_rules(self, rs: Ruleset) -> None:
        """Rules of either family, merged into what this pod already has of it."""
        if rs.family == 6:
            if self.iptables6 is None:
                self.iptables6 = rs
            else:
                self.iptables6.merge(rs)
        elif self.iptables is None:
            self.iptables = rs
        else:
            self.iptables.merge(rs)

    def pod_ref(self) -> str:
        """``POD -n NS`` for the commands we suggest (names from the node id if not given)."""
        node_pod, node_ns = self.node_pod()
        name = self.pod or node_pod or f"{self.role.upper()}_POD"
        ns = self.namespace or node_ns
        return f"{name} -n {ns}" if ns else name

    def node_pod(self) -> tuple[str | None, str | None]:
        """(pod, namespace) from the Istio node id ``sidecar~IP~POD.NS~NS.svc.cluster.local``."""
        node = self.config.node_id if self.config else None
        if node and node.count("~") >= 3:
            pod_ns = node.split("~")[2]
            pod, _, ns = pod_ns.rpartition(".")
            return (pod or None), (ns or None)
        return None, None


@dataclass
class Target:
    """Where the client connects: a host name or IP, and a port (``--to``)."""

    host: str | None = None
    port: int | None = None
    path: str = "/"
    http: bool | None = None  # None: decide from the evidence (HTTP unless a log says TCP)


@dataclass
class Evidence:
    client: PodEvidence = field(default_factory=lambda: PodEvidence("client"))
    server: PodEvidence = field(default_factory=lambda: PodEvidence("server"))
    target: Target = field(default_factory=Target)
    istio_version: str | None = None  # `--istio-version`, e.g. "1.9"
