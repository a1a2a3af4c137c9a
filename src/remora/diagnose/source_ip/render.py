"""Render a source-ip ``Report`` as text (for people) or as JSON (for scripts).

Both are pure functions of the report; nothing here decides anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from remora.diagnose.envoy.sim import SidecarTrace
from remora.diagnose.facts import hostport
from remora.diagnose.iptables.walk import RuleStep, WalkResult
from remora.diagnose.source_ip.explain import Report, Step

STATUS = {"ok": "ok", "failed": "FAILED", "unknown": "unknown", "not captured": "not captured",
          "skipped": "skipped"}


def _rule_lines(w: WalkResult, indent: str) -> list[str]:
    """Matched rules in full; runs of rules that did not match folded into one line."""
    out: list[str] = []
    skipped: list[RuleStep] = []

    def flush() -> None:
        if not skipped:
            return
        first, last = skipped[0], skipped[-1]
        where = first.ref() if len(skipped) == 1 else f"{first.ref()}..#{last.index}"
        why = "; ".join(dict.fromkeys(s.why_not for s in skipped if s.why_not))
        out.append(f"{indent}{where}  no match ({why})")
        skipped.clear()

    decider = w.capture.decided_by
    for s in w.steps:
        if not s.matched:
            skipped.append(s)
            continue
        flush()
        mark = "  <- decides" if decider is not None and s == decider else ""
        count = f"[{s.counters}] " if s.counters else ""
        out.append(f"{indent}{s.ref()}  {count}{s.rule}  => {s.action}{mark}")
    flush()
    return out


def _sidecar_lines(t: SidecarTrace, indent: str) -> list[str]:
    out = []
    if t.listener:
        out.append(f"{indent}listener {t.listener}" + (f"  ({t.handoff})" if t.handoff else ""))
    if t.original_dst_how:
        out.append(f"{indent}original destination: {t.original_dst_how}")
    if t.transport_protocol:
        proto = t.transport_protocol
        if t.server_name:
            proto += f", SNI {t.server_name}"
        if t.application_protocols:
            proto += ", ALPN " + ",".join(t.application_protocols)
        out.append(f"{indent}detected: {proto}")
    if t.chain:
        out.append(f"{indent}filter chain {t.chain}  [{t.chain_match}]")
        if t.chain_reasons:
            out.append(f"{indent}  matched on: " + "; ".join(t.chain_reasons))
    if t.network_filter:
        out.append(f"{indent}network filter {t.network_filter}")
    if t.route_config:
        out.append(f"{indent}route config {t.route_config}, virtual host {t.virtual_host or '-'}"
                   f", route {t.route or '-'}")
    if t.cluster:
        out.append(f"{indent}cluster {t.cluster}" + (f" ({t.cluster_type})" if t.cluster_type
                                                        else ""))
    if t.endpoint:
        tls = t.upstream_tls
        how = "plain text"
        if tls and tls.mode == "TLS":
            how = f"TLS, SNI {tls.sni or '-'}, ALPN {','.join(tls.alpn) or '-'}"
        out.append(f"{indent}endpoint {t.endpoint}, {how}")
    if t.upstream_source:
        out.append(f"{indent}upstream source address {t.upstream_source}: "
                   f"{t.upstream_source_why}")
    if t.failure:
        out.append(f"{indent}FAILED ({t.failure}): {t.failure_detail}")
    out.extend(f"{indent}note: {n}" for n in t.notes)
    return out


def _step_lines(s: Step) -> list[str]:
    out = [f"{s.number}. {s.title}  [{STATUS.get(s.status, s.status)}]", f"   {s.summary}"]
    if s.walk is not None:
        out.extend(_rule_lines(s.walk, "     "))
        out.extend(f"     uncertain: {u}" for u in s.walk.uncertain)
    if s.sidecar is not None:
        out.extend(_sidecar_lines(s.sidecar, "   "))
    if s.follow_up is not None:
        f = s.follow_up
        p = f.packet
        out.append(f"   then the sidecar's own connection {p.src} -> "
                   f"{hostport(str(p.dst), p.dport)} (out {p.out_iface}, uid {p.uid}, "
                   f"gid {p.gid}): {f.capture.summary()}")
        out.extend(_rule_lines(f, "     "))
    out.extend(f"   note: {n}" for n in s.notes)
    return out


def render_text(r: Report) -> str:
    f = r.facts
    to = f["authority"].value if "authority" in f else f"{f['service_ip'].value}:{f['port'].value}"
    lines = [f"client {f['client_ip'].value} -> {to} -> server {f['server_ip'].value}"
             f"  (server interception mode: {r.mode})"]
    for side, sources in r.sources.items():
        lines.extend(f"  {side} evidence: {s}" for s in sources)
    lines.append("")
    for s in r.steps:
        lines.extend(_step_lines(s))
        lines.append("")
    v = r.verdict
    lines.append("5. verdict")
    label = {"established": "evidence", "inferred": "assumed",
             "undecided": "missing"}.get(v.kind, v.kind)
    if v.failure:
        lines.append(f"   no verdict: {v.failure} ({v.kind})")
    elif v.app_sees is None:
        lines.append(f"   cannot tell what the app sees from this evidence ({v.kind})")
    else:
        who = "the client" if v.sees_client else f"not the client {v.client_ip}"
        lines.append(f"   the app sees {v.app_sees} ({who}) ({v.kind})")
        if v.app_sees_why != f"inferred: {v.basis}":
            lines.append(f"   why: {v.app_sees_why}")
    lines.append(f"   {label}: {v.basis}")
    if v.model_note:
        lines.append(f"   the log wins: {v.model_note}")
    if v.istio_version:
        lines.append(f"   Istio version used: {v.istio_version}")
    if v.app_sees is not None and not v.failure:
        lines.append(f"   confirmed: {v.confirmation}" if v.confirmed else
                     f"   check: {v.confirmation}")
        lines.append(f"   X-Forwarded-For: {v.xff}")
    if v.explanation_127:
        lines.append(f"   why {v.app_sees}: " + " ".join(v.explanation_127))
    for n, fix in enumerate(v.fixes):
        lines.append(f"   {'fix' if n == 0 else 'or'}: {fix.title}")
        lines.extend(f"     {c}" for c in fix.commands)
        lines.append("     cost: " + "; ".join(fix.cost))
    if r.missing:
        lines += ["", "not established from the evidence (and how to collect it):"]
        lines.extend(f"  - {m.what}: {m.command}" for m in r.missing)
    if r.assumptions:
        lines += ["", "assumed:"]
        lines.extend(f"  - {a}" for a in r.assumptions)
    return "\n".join(lines) + "\n"


def _walk_json(w: WalkResult | None) -> dict[str, Any] | None:
    if w is None:
        return None
    p = w.packet
    return {
        "packet": {"src": str(p.src), "dst": str(p.dst), "dport": p.dport, "proto": p.proto,
                   "in": p.in_iface, "out": p.out_iface, "uid": p.uid, "gid": p.gid},
        "path": w.path,
        "rules": [{"table": s.table, "chain": s.chain, "index": s.index, "rule": s.rule,
                   "counters": s.counters, "matched": s.matched, "action": s.action,
                   "why_not": s.why_not} for s in w.steps],
        "capture": {"kind": w.capture.kind, "port": w.capture.port, "mark": w.capture.mark,
                    "reason": w.capture.reason,
                    "decided_by": w.capture.decided_by.ref() if w.capture.decided_by else None},
        "missing_tables": list(w.missing_tables),
        "uncertain": list(w.uncertain),
    }


def to_json(r: Report) -> dict[str, Any]:
    return {
        "facts": {k: {"value": f.value, "source": f.source} for k, f in r.facts.items()},
        "mode": r.mode,
        "steps": [{"number": s.number, "title": s.title, "status": s.status,
                   "summary": s.summary, "iptables": _walk_json(s.walk),
                   "sidecar": asdict(s.sidecar) if s.sidecar else None,
                   "follow_up": _walk_json(s.follow_up), "notes": s.notes} for s in r.steps],
        "verdict": asdict(r.verdict),
        "missing": [asdict(m) for m in r.missing],
        "assumptions": r.assumptions,
        "evidence": r.sources,
    }


def render_json(r: Report) -> str:
    return json.dumps(to_json(r), indent=2) + "\n"
