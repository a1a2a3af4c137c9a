"""Facts the live form reads from a lab pod besides rules and config (the I/O edge).

- The sidecar process's uid/gid, from ``/proc/<pid>/status`` of the istio-proxy
  container's process (the node daemon reports each running container's PID in
  ``status.containerStatuses[].remora.pid``, docs/node.md). iptables' owner match tests the
  fsuid/fsgid of the socket's file (net/netfilter/xt_owner.c: ``filp->f_cred->fsuid``),
  the fourth value of the ``Uid:``/``Gid:`` lines. Remora's lab runs the sidecar as Istio
  does: uid 1337 / gid 1337 in REDIRECT mode, uid 0 / gid 1337 in TPROXY mode (where the
  ``--gid-owner 1337`` rules are the ones that recognise it).
- TPROXY's policy routing: ``ip -4 rule show`` and ``ip -4 route show table N`` for the
  tables the fwmark rules look up, run inside the pod's namespace through the node
  daemon's exec argv (remora.diagnose.iptables.policy_routing reads them).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from remora.diagnose.evidence.target import SIDECAR, LabPod
from remora.diagnose.iptables.policy_routing import PolicyRouting, marked_tables, parse_policy_text
from remora.diagnose.source_ip.evidence import PodEvidence
from remora.errors import RemoraError
from remora.netns import resolve
from remora.node.client import NodeClient


@dataclass(frozen=True)
class ProcessIds:
    uid: int  # fsuid
    gid: int  # fsgid
    source: str


def parse_status_ids(text: str) -> tuple[int, int] | None:
    """(fsuid, fsgid) from a /proc/PID/status text (``Uid: real effective saved fs``)."""
    ids: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Uid", "Gid"):
            values = rest.split()
            if len(values) == 4 and all(v.isdigit() for v in values):
                ids[key] = int(values[3])
    if "Uid" in ids and "Gid" in ids:
        return ids["Uid"], ids["Gid"]
    return None


def sidecar_pid(pod: LabPod) -> int:
    """The running istio-proxy container's PID as the node daemon reported it (0: none)."""
    for status in (pod.obj.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == SIDECAR:
            return int((status.get("remora") or {}).get("pid") or 0)
    return 0


def sidecar_ids(pod: LabPod, proc: str = "/proc") -> ProcessIds | None:
    """The sidecar's uid/gid, or None when its process cannot be read (then the core
    assumes Istio's defaults and says so). The PID must still be inside the pod's network
    namespace: a PID reused since the daemon reported it is not the sidecar."""
    pid = sidecar_pid(pod)
    if not pid or not pod.has_sidecar:
        return None
    try:
        if os.stat(f"{proc}/{pid}/ns/net").st_ino != os.stat(resolve(pod.netns)).st_ino:
            return None
        with open(f"{proc}/{pid}/status", encoding="utf-8") as f:
            ids = parse_status_ids(f.read())
    except (OSError, ValueError, RemoraError):
        return None
    if ids is None:
        return None
    return ProcessIds(ids[0], ids[1], f"/proc/{pid}/status of {pod.ref}'s istio-proxy process")


def _ip(node: NodeClient, pod: LabPod, args: list[str], family: int = 4) -> str | None:
    argv = [*node.exec_argv(pod.namespace, pod.name), "ip", f"-{family}", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    # `ip route show table N` of a table that was never filled fails: an empty table
    return done.stdout if done.returncode == 0 else ("" if args[0] == "route" else None)


def policy_routing(node: NodeClient, pod: LabPod, family: int = 4) -> PolicyRouting | None:
    """`ip rule show` and the tables its fwmark rules look up, in POD's namespace, for
    FAMILY (Istio adds the same fwmark rule and local route with `ip -6` for IPv6)."""
    rules = _ip(node, pod, ["rule", "show"], family)
    if rules is None:
        return None
    pr = parse_policy_text(rules, f"ip -{family} rule show in pod {pod.ref}")
    for table in marked_tables(pr):
        routes = _ip(node, pod, ["route", "show", "table", table], family) or ""
        pr.tables[table] = [line.strip() for line in routes.splitlines() if line.strip()]
    return pr


def fill(pe: PodEvidence, node: NodeClient, pod: LabPod, routing: bool,
         family: int = 4) -> None:
    """Add the sidecar's uid/gid (and with ROUTING the policy routing) to POD's evidence."""
    ids = sidecar_ids(pod)
    if ids is not None:
        pe.proxy_uid, pe.proxy_gid, pe.proxy_ids_source = ids.uid, ids.gid, ids.source
        pe.sources.append(f"sidecar process: uid {ids.uid} / gid {ids.gid} ({ids.source})")
    if routing and pod.has_sidecar:
        pr = policy_routing(node, pod, family)
        if pr is not None:
            pe.policy_routing = pr
            tables = "".join(f"; ip -{family} route show table {t}" for t in pr.tables)
            pe.sources.append(f"policy routing: ip -{family} rule show{tables} in pod "
                              f"{pod.ref}")
