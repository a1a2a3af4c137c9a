"""Which Istio version the evidence comes from, and why we think so.

What the app sees depends on it: before 1.10 the inbound cluster of a declared port
dialled the app at 127.0.0.1 (from 127.0.0.1); from 1.10 on the sidecar forwards to the
pod IP and binds 127.0.0.6 (Istio 1.10 upgrade notes, "Inbound Forwarding Configuration";
PILOT_ENABLE_INBOUND_PASSTHROUGH=false restores the old way). Read, in this order: the
`--istio-version` option, the sidecar's own (its config dump's ISTIO_VERSION, the
`Version` line pilot-agent logs at start), `istioctl version` output or image tags in the
evidence, then shapes only old versions produce.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from remora.diagnose.pasted import istio_version, istio_versions
from remora.diagnose.source_ip.evidence import Evidence, PodEvidence


@dataclass(frozen=True)
class VersionInfo:
    version: tuple[int, int] | None  # (1, 9); None when only a bound is known
    below: tuple[int, int] | None  # an exclusive upper bound the evidence shows
    why: str
    mixed: bool = False  # `istioctl version` lists several data-plane versions
    at_least: tuple[int, int] | None = None  # an inclusive lower bound the evidence shows

    def older_than(self, v: tuple[int, int]) -> bool | None:
        """True / False when the evidence tells, None when it does not."""
        if self.version:
            return self.version < v
        if self.below and self.below <= v:
            return True
        if self.at_least and self.at_least >= v:
            return False
        return None

    @property
    def before_1_10(self) -> bool | None:
        return self.older_than((1, 10))

    def label(self) -> str:
        if self.version:
            return f"{self.version[0]}.{self.version[1]}"
        if self.below:
            return f"before {self.below[0]}.{self.below[1]}"
        if self.at_least:
            return f"{self.at_least[0]}.{self.at_least[1]} or later"
        return "unknown"


def parse_option(text: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def _old_shapes(pod: PodEvidence) -> tuple[tuple[int, int], str] | None:
    """A shape only old Istio produced: (the version it predates, why); None if none."""
    if pod.shell_script:
        return (1, 5), ("the rules come from istio-iptables.sh (the shell script Istio 1.4 and "
                        "before ran)")
    rs = pod.iptables
    if rs is not None:
        for table in ("nat", "mangle"):
            t = rs.tables.get(table)
            for chain in (t.chains.values() if t else []):
                if chain.name not in ("ISTIO_IN_REDIRECT", "ISTIO_TPROXY"):
                    continue
                if any(r.target.name in ("REDIRECT", "TPROXY") and "15001" in r.source
                       for r in chain.rules):
                    return (1, 3), (f"inbound is sent to 15001 ({chain.name}): the layout "
                                    "before the 15006 virtualInbound listener (Istio 1.2 "
                                    "and before)")
    if pod.declared.get("INBOUND_CAPTURE_PORT") == "15001":
        return (1, 3), "istio-init's INBOUND_CAPTURE_PORT=15001 (Istio 1.2 and before)"
    cfg = pod.config
    if cfg is not None:
        v2 = re.search(r"type\.googleapis\.com/envoy\.(?:config\.filter\.[\w.]+\.v2|"
                       r"api\.v2)\.", json.dumps(cfg.listeners))
        if v2:
            return (1, 8), (f"the listeners carry Envoy v2 types ({v2.group(0)}...): Istio 1.7 "
                            "and before")
        if any(lst.get("name") == "virtual" and lst.get("use_original_dst")
               for lst in cfg.listeners):
            return (1, 3), ("the 15001 `virtual` listener with use_original_dst handles "
                            "inbound (Istio 1.2 and before)")
        named = next((n for n in cfg.clusters if re.fullmatch(r"inbound\|\d+\|[^|]+\|[^|]+", n)),
                     None)
        if named:
            return (1, 8), (f"inbound cluster {named} carries the port name and host (Istio "
                            "1.7 and before; 1.8 names it inbound|PORT||)")
    for e in pod.access_log:
        c = e.upstream_cluster or ""
        if re.fullmatch(r"inbound\|\d+\|[^|]+\|[^|]+", c):
            return (1, 8), (f"access log line {e.line}: inbound cluster {c} carries the port "
                            "name and host (Istio 1.7 and before)")
    return None


def detect(ev: Evidence) -> VersionInfo:
    if ev.istio_version:
        v = parse_option(ev.istio_version)
        if v:
            return VersionInfo(v, None, f"given: --istio-version {ev.istio_version}")
    for pod in (ev.server, ev.client):
        meta = pod.config.node_metadata if pod.config else {}
        found = istio_version(f"Version:\"{meta.get('ISTIO_VERSION', '')}")
        if meta.get("ISTIO_VERSION") and found:
            return VersionInfo(found, None, f"{pod.role} config: the bootstrap's node metadata "
                                            f"ISTIO_VERSION {meta['ISTIO_VERSION']}")
        if pod.agent_version:
            # this pod's own sidecar says which build it is: better than `istioctl version`,
            # which lists the whole mesh's data plane
            return VersionInfo(pod.agent_version[0], None,
                               f"{pod.role} evidence: pilot-agent's start-up line, "
                               f"{pod.agent_version[1]}")
        for text in pod.version_text:
            versions, whose = istio_versions(text)
            if whose == "client" or not versions:
                continue  # istioctl's own version says nothing about the sidecars
            labels = ", ".join(f"{a}.{b}" for a, b in versions)
            if len(versions) == 1:
                return VersionInfo(versions[0], None,
                                   f"{pod.role} evidence: `istioctl version` output says "
                                   f"{labels}" + ("" if whose == "data plane"
                                                  else f" ({whose}; no data plane line)"))
            # several data-plane versions: which one the server pod runs is not said
            why = (f"{pod.role} evidence: `istioctl version` shows a mixed data plane "
                   f"({labels}); which the server pod runs is not in the evidence (its config "
                   "dump's ISTIO_VERSION, or pass --istio-version X.Y)")
            if versions[-1] < (1, 10):
                return VersionInfo(None, (1, 10), why, mixed=True)
            if versions[0] >= (1, 10):
                # every sidecar binds 127.0.0.6, whichever the server runs
                return VersionInfo(None, None, why + "; all are 1.10 or later", mixed=True,
                                   at_least=versions[0])
            return VersionInfo(None, None, why + "; before 1.10 the app saw 127.0.0.1, "
                                                 "from 1.10 127.0.0.6", mixed=True)
    for pod in (ev.server, ev.client):
        old = _old_shapes(pod)
        if old:
            return VersionInfo(None, old[0], f"{pod.role} evidence: {old[1]}")
    return VersionInfo(None, None, "no version in the evidence (pass --istio-version X.Y)")
