"""What the live form adds to the offline report's text and JSON: the pods it used, the
probe and its answer, and the rule counters the probe moved (pure)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from remora.diagnose.evidence.lab import LiveRun
from remora.diagnose.facts import hostport


def header_lines(run: LiveRun) -> list[str]:
    d = run.dest
    # an IPv6 address with a port in brackets (RFC 3986 / 5952), as the access log prints it
    what = f"{d.kind} {d.namespace}/{d.name} ({hostport(d.host, d.port)})"
    lines = [f"live: from pod {run.client.ref} ({run.client.ip}) to {what}, served by pod "
             f"{run.server.ref} ({run.server.ip})",
             f"  probe: {run.probe.summary()}"]
    if run.probe.local_address:
        lines.append(f"  probe socket: {run.probe.local_address} -> {run.probe.connected_to} "
                     "(uid 0, gid 0, not the proxy's 1337: the pod's rules treat it as the "
                     "app's own traffic)")
    lines.extend(f"  note: {n}" for n in run.notes)
    return lines


def counter_lines(run: LiveRun) -> list[str]:
    lines = ["rule counters that moved during the probe (iptables-save -c before and after; "
             "other traffic at the same moment counts too):"]
    for role, pod in (("client", run.client), ("server", run.server)):
        moved = run.moved.get(role) or []
        if role == "server" and pod.ref == run.client.ref:
            continue
        lines.append(f"  {role} pod {pod.ref}:" + ("" if moved else " none"))
        lines.extend(f"    {m.line()}" for m in moved)
    return lines


def text(run: LiveRun, report_text: str) -> str:
    return "\n".join(header_lines(run)) + "\n\n" + report_text + "\n" + \
        "\n".join(counter_lines(run)) + "\n"


def to_json(run: LiveRun) -> dict[str, Any]:
    return {
        "client_pod": {"name": run.client.name, "namespace": run.client.namespace,
                       "ip": run.client.ip, "sidecar": run.client.has_sidecar},
        "server_pod": {"name": run.server.name, "namespace": run.server.namespace,
                       "ip": run.server.ip, "sidecar": run.server.has_sidecar},
        "destination": {"kind": run.dest.kind, "name": run.dest.name,
                        "namespace": run.dest.namespace, "host": run.dest.host,
                        "port": run.dest.port, "authority": run.dest.authority,
                        "protocol": run.dest.protocol or None},
        "probe": {**asdict(run.probe), "user_agent": run.probe.user_agent},
        "server_access_log": [e.to_dict() for e in run.evidence.server.access_log],
        "client_access_log": [e.to_dict() for e in run.evidence.client.access_log],
        "app_log_line": run.app_line or None,
        "counters_moved": {role: [asdict(m) for m in moved] for role, moved in run.moved.items()},
        "notes": run.notes,
    }
