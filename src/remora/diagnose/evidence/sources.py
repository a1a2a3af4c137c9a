"""The one evidence interface, with its three sources.

A ``Source`` collects; what it returns is ``Collected``: the ``Evidence`` the pure
analysis takes (remora.diagnose.source_ip), the report for it with what only that source
knows (a probe's confirmation, which pods have a sidecar), and what the source adds to the
output (the live header and counters, the steps it could not collect). The CLI picks a
source from its flags and never looks inside:
- ``FileSource``: files a user collected (``--istio-dump``, ``--config-dump``, ...);
- ``LabSource``: the running remora lab (``--from POD --to DEST``), with a probe request;
- ``KubeSource``: any cluster through the Kubernetes API and the user's kubeconfig
  (``--kube --from POD --to DEST``), the lab included (``remora kubeconfig``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from remora.diagnose.source_ip.evidence import Evidence
from remora.diagnose.source_ip.explain import Report, explain_source_ip

if TYPE_CHECKING:  # imported when used: the lab's pulls in the node runtime
    from remora.diagnose.evidence.kube import KubeRun
    from remora.diagnose.evidence.lab import LiveRun


class Collected(Protocol):
    @property
    def evidence(self) -> Evidence: ...

    def explain(self) -> Report: ...
    def header_lines(self) -> list[str]: ...
    def text(self, report_text: str) -> str: ...
    def json_extra(self) -> tuple[str, dict[str, Any]] | None: ...


class Source(Protocol):
    def collect(self) -> Collected: ...


@dataclass
class FromFiles:
    evidence: Evidence

    def explain(self) -> Report:
        return explain_source_ip(self.evidence)

    def header_lines(self) -> list[str]:
        return []

    def text(self, report_text: str) -> str:
        return report_text

    def json_extra(self) -> tuple[str, dict[str, Any]] | None:
        return None


@dataclass
class FileSource:
    """Files, each ``[SIDE=]PATH`` (SIDE client or server, default server)."""

    dump_dir: Path | None = None
    config_dumps: list[str] = field(default_factory=list)
    iptables: list[str] = field(default_factory=list)
    access_logs: list[str] = field(default_factory=list)
    ip_rules: list[str] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)
    gids: list[str] = field(default_factory=list)

    def collect(self) -> FromFiles:
        from remora.diagnose.evidence import files

        ev = Evidence()
        if self.dump_dir:
            files.load_dump_dir(self.dump_dir, ev)
        for values, add in ((self.config_dumps, files.add_config),
                            (self.iptables, files.add_iptables),
                            (self.access_logs, files.add_access_log),
                            (self.ip_rules, files.add_ip_rules)):
            for value in values:
                side, path = files.split_side(value)
                add(ev.client if side == "client" else ev.server, path)
        for ids, which in ((self.uids, "uid"), (self.gids, "gid")):
            for value in ids:
                side, number = files.split_side_text(value)
                files.set_proxy_id(ev.client if side == "client" else ev.server, which,
                                   number)
        return FromFiles(ev)


@dataclass
class FromLab:
    run: LiveRun

    @property
    def evidence(self) -> Evidence:
        return self.run.evidence

    def explain(self) -> Report:
        from remora.diagnose.evidence import lab

        return lab.explain(self.run)

    def header_lines(self) -> list[str]:
        from remora.diagnose.evidence import lab_render

        return lab_render.header_lines(self.run)

    def text(self, report_text: str) -> str:
        from remora.diagnose.evidence import lab_render

        return lab_render.text(self.run, report_text)

    def json_extra(self) -> tuple[str, dict[str, Any]] | None:
        from remora.diagnose.evidence import lab_render

        return "live", lab_render.to_json(self.run)


@dataclass
class LabSource:
    state_dir: Path
    from_pod: str
    namespace: str
    to: str
    path: str = "/"
    family: int | None = None  # --family: reach a named service or pod over IPv4 or IPv6

    def collect(self) -> FromLab:
        from remora.diagnose.evidence import lab

        return FromLab(lab.collect(self.state_dir, self.from_pod, self.namespace, self.to,
                                   self.path, family=self.family))


@dataclass
class FromCluster:
    run: KubeRun

    @property
    def evidence(self) -> Evidence:
        return self.run.evidence

    def explain(self) -> Report:
        from remora.diagnose.evidence.review import review

        return review(explain_source_ip(self.run.evidence), self.run.client, self.run.server,
                      self.run.app_line, "a recent connection")

    def header_lines(self) -> list[str]:
        from remora.diagnose.evidence import kube

        return kube.header_lines(self.run)

    def text(self, report_text: str) -> str:
        return "\n".join(self.header_lines()) + "\n\n" + report_text

    def json_extra(self) -> tuple[str, dict[str, Any]] | None:
        from remora.diagnose.evidence import kube

        return "kube", kube.to_json(self.run)


@dataclass
class KubeSource:
    from_pod: str
    namespace: str
    to: str
    path: str = "/"
    kubeconfig: str | None = None
    context: str | None = None

    def collect(self) -> FromCluster:
        from remora.diagnose.evidence import kube
        from remora.diagnose.evidence.kube_client import KubeCluster

        cluster = KubeCluster(self.kubeconfig, self.context)
        return FromCluster(kube.collect(cluster, self.from_pod, self.namespace, self.to,
                                        self.path, cluster.server, self.context or ""))
