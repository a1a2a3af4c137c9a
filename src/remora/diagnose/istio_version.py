"""Which Istio version the evidence comes from, and why we think so.

What the app sees depends on it: before 1.10 the inbound cluster of a declared port
dialled the app at 127.0.0.1 (from 127.0.0.1); from 1.10 on the sidecar forwards to the
pod IP and binds 127.0.0.6 (Istio 1.10 upgrade notes, "Inbound Forwarding Configuration";
PILOT_ENABLE_INBOUND_PASSTHROUGH=false restores the old way). Read, in this order: the
`--istio-version` option, `istioctl version` output or image tags in the evidence, then
shapes only old versions produce.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from remora.diagnose.evidence import Evidence, PodEvidence
from remora.diagnose.evidence_text import istio_version


@dataclass(frozen=True)
class VersionInfo:
    version: tuple[int, int] | None  # (1, 9); None when only a range is known
    before_1_10: bool | None  # None: the evidence does not tell
    why: str

    def label(self) -> str:
        if self.version:
            return f"{self.version[0]}.{self.version[1]}"
        return "before 1.10" if self.before_1_10 else "unknown"


def parse_option(text: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def _old_shapes(pod: PodEvidence) -> str | None:
    """A shape only Istio before 1.10 produced, named; None if there is none."""
    if pod.shell_script:
        return "the rules come from istio-iptables.sh (the shell script of Istio 1.4 and before)"
    rs = pod.iptables
    if rs is not None:
        nat = rs.tables.get("nat")
        chain = nat.chains.get("ISTIO_IN_REDIRECT") if nat else None
        if chain and any(r.target.name == "REDIRECT" and "15001" in r.source
                         for r in chain.rules):
            return ("inbound is redirected to 15001 (ISTIO_IN_REDIRECT): the layout before the "
                    "15006 virtualInbound listener (Istio 1.2 and before)")
    if pod.declared.get("INBOUND_CAPTURE_PORT") == "15001":
        return "istio-init's INBOUND_CAPTURE_PORT=15001 (Istio 1.2 and before)"
    cfg = pod.config
    if cfg is not None:
        if any(lst.get("name") == "virtual" and lst.get("use_original_dst")
               for lst in cfg.listeners):
            return ("the 15001 `virtual` listener with use_original_dst handles inbound "
                    "(Istio 1.2 and before)")
        named = next((n for n in cfg.clusters if re.fullmatch(r"inbound\|\d+\|[^|]+\|[^|]+", n)),
                     None)
        if named:
            return (f"inbound cluster {named} carries the port name and host (Istio 1.7 and "
                    "before; 1.8 names it inbound|PORT||)")
    for e in pod.access_log:
        c = e.upstream_cluster or ""
        if re.fullmatch(r"inbound\|\d+\|[^|]+\|[^|]+", c):
            return (f"access log line {e.line}: inbound cluster {c} carries the port name and "
                    "host (Istio 1.7 and before)")
    return None


def detect(ev: Evidence) -> VersionInfo:
    if ev.istio_version:
        v = parse_option(ev.istio_version)
        if v:
            return VersionInfo(v, v < (1, 10), f"given: --istio-version {ev.istio_version}")
    for pod in (ev.server, ev.client):
        for text in pod.version_text:
            found = istio_version(text)
            if found:
                return VersionInfo(found, found < (1, 10),
                                   f"{pod.role} evidence: `istioctl version` output says "
                                   f"{found[0]}.{found[1]}")
    for pod in (ev.server, ev.client):
        why = _old_shapes(pod)
        if why:
            return VersionInfo(None, True, f"{pod.role} evidence: {why}")
    return VersionInfo(None, None, "no version in the evidence (pass --istio-version X.Y)")
