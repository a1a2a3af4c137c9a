"""`remora get` output as kubectl prints it: columns, AGE, -o wide|yaml|json (pure).

Columns are kubectl's (pkg/printers/internalversion/printers.go); the pod `-o wide`
columns are the seed's `NAME READY STATUS RESTARTS AGE IP NODE`. Tables are laid out
like kubectl's tabwriter: columns padded to the widest cell plus three spaces.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from remora.errors import UsageError
from remora.resources.rfc3339 import format_time, parse_time

KINDS = {
    "pods": "Pod", "pod": "Pod", "po": "Pod",
    "services": "Service", "service": "Service", "svc": "Service",
    "deployments": "Deployment", "deployment": "Deployment", "deploy": "Deployment",
    "namespaces": "Namespace", "namespace": "Namespace", "ns": "Namespace",
    # Istio's CRDs (manifests/charts/base/files/crd-all.gen.yaml: plural, singular, short)
    "peerauthentications": "PeerAuthentication", "peerauthentication": "PeerAuthentication",
    "pa": "PeerAuthentication",
    "authorizationpolicies": "AuthorizationPolicy",
    "authorizationpolicy": "AuthorizationPolicy", "ap": "AuthorizationPolicy",
}


def kind_of(word: str) -> str:
    word = word.lower().split(".", 1)[0]
    if word not in KINDS:
        raise UsageError(f"unknown resource type {word!r}",
                         "use pods (po), services (svc), deployments (deploy), "
                         "namespaces (ns), peerauthentications (pa) or "
                         "authorizationpolicies (ap)")
    return KINDS[word]


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration: 45s, 7m32s, 4h37m, 3d, ..."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def created(obj: dict[str, Any]) -> float | None:
    if "remora" in obj and obj["remora"].get("created") is not None:
        return float(obj["remora"]["created"])
    ts = obj.get("metadata", {}).get("creationTimestamp")
    if isinstance(ts, (int, float)):
        return float(ts)
    if isinstance(ts, str):
        return parse_time(ts)
    return None


def age(obj: dict[str, Any], now: float) -> str:
    t = created(obj)
    return "<unknown>" if t is None else human_duration(now - t)


def tabwrite(rows: list[list[str]], padding: int = 3) -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(widths[i] + padding) if i < len(r) - 1 else c
                 for i, c in enumerate(r)]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _ports(svc: dict[str, Any]) -> str:
    ports = svc.get("spec", {}).get("ports") or []
    return ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def ready_column(p: dict[str, Any]) -> str:
    """READY as kubectl counts it: ready app containers / app containers in the spec
    (the node counts only containers it has started, so 0/0 while init runs)."""
    ready = sum(1 for c in p.get("status", {}).get("containerStatuses") or [] if c.get("ready"))
    return f"{ready}/{len(p.get('spec', {}).get('containers') or [])}"




def restarts_column(p: dict[str, Any], now: float) -> str:
    """RESTARTS as kubectl prints it: the count, and `N (AGE ago)` since the latest
    lastState.terminated.finishedAt of any container (printers.go printPod)."""
    count = int(p.get("remora", {}).get("restarts", 0))
    status = p.get("status", {})
    finished = [t for c in (status.get("initContainerStatuses") or [])
                + (status.get("containerStatuses") or [])
                if (t := parse_time(((c.get("lastState") or {}).get("terminated") or {})
                                    .get("finishedAt"))) is not None]
    if count and finished:
        return f"{count} ({human_duration(now - max(finished))} ago)"
    return str(count)


def _pod_row(p: dict[str, Any], now: float, wide: bool) -> list[str]:
    r = p.get("remora", {})
    row = [p["metadata"]["name"], ready_column(p), str(r.get("status", "")),
           restarts_column(p, now), age(p, now)]
    if wide:
        row += [p.get("status", {}).get("podIP") or "<none>",
                p.get("spec", {}).get("nodeName") or "<none>"]
    return row


def _deploy_row(d: dict[str, Any], now: float, wide: bool) -> list[str]:
    st = d.get("status", {})
    want = d.get("spec", {}).get("replicas")
    want = 1 if want is None else int(want)
    row = [d["metadata"]["name"], f"{st.get('readyReplicas', 0)}/{want}",
           str(st.get("updatedReplicas", 0)), str(st.get("availableReplicas", 0)), age(d, now)]
    if wide:
        containers = d.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
        selector = d.get("spec", {}).get("selector", {}).get("matchLabels") or {}
        row += [",".join(c["name"] for c in containers),
                ",".join(str(c.get("image", "")) for c in containers),
                ",".join(f"{k}={v}" for k, v in selector.items())]
    return row


def _svc_row(s: dict[str, Any], now: float, wide: bool) -> list[str]:
    spec = s.get("spec", {})
    row = [s["metadata"]["name"], spec.get("type", "ClusterIP"),
           spec.get("clusterIP") or "None", "<none>", _ports(s), age(s, now)]
    if wide:
        row.append(",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items())
                   or "<none>")
    return row


def _ns_row(n: dict[str, Any], now: float, wide: bool) -> list[str]:
    return [n["metadata"]["name"], "Active", age(n, now)]


def _pa_row(o: dict[str, Any], now: float, wide: bool) -> list[str]:
    mode = ((o.get("spec") or {}).get("mtls") or {}).get("mode") or ""
    return [o["metadata"]["name"], str(mode), age(o, now)]


def _ap_row(o: dict[str, Any], now: float, wide: bool) -> list[str]:
    return [o["metadata"]["name"], str((o.get("spec") or {}).get("action") or ""),
            age(o, now)]


HEADERS = {
    "Pod": (["NAME", "READY", "STATUS", "RESTARTS", "AGE"], ["IP", "NODE"], _pod_row),
    "Deployment": (["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
                   ["CONTAINERS", "IMAGES", "SELECTOR"], _deploy_row),
    "Service": (["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
                ["SELECTOR"], _svc_row),
    "Namespace": (["NAME", "STATUS", "AGE"], [], _ns_row),
    # the CRDs' additionalPrinterColumns: Mode / Action, then Age
    "PeerAuthentication": (["NAME", "MODE", "AGE"], [], _pa_row),
    "AuthorizationPolicy": (["NAME", "ACTION", "AGE"], [], _ap_row),
}


# kubectl's NAME column when several kinds are listed at once (`get deploy,pods`)
RESOURCE = {"Pod": "pod", "Deployment": "deployment.apps", "Service": "service",
            "Namespace": "namespace",
            "PeerAuthentication": "peerauthentication.security.istio.io",
            "AuthorizationPolicy": "authorizationpolicy.security.istio.io"}


def labels_column(obj: dict[str, Any]) -> str:
    """--show-labels: apimachinery's labels.FormatLabels (sorted k=v, `<none>`)."""
    labels = obj.get("metadata", {}).get("labels") or {}
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels)) or "<none>"


def names(kind: str, items: list[dict[str, Any]]) -> str:
    """-o name: `RESOURCE/NAME`, one a line (pod/x, deployment.apps/y, service/z)."""
    return "".join(f"{RESOURCE[kind]}/{o['metadata']['name']}\n" for o in items)


def table(kind: str, items: list[dict[str, Any]], now: float, wide: bool = False,
          all_namespaces: bool = False, kind_prefix: bool = False,
          show_labels: bool = False) -> str:
    head, extra, row = HEADERS[kind]
    rows = [[*head, *(extra if wide else []), *(["LABELS"] if show_labels else [])]]
    for obj in items:
        r = row(obj, now, wide)
        if show_labels:
            r.append(labels_column(obj))
        if kind_prefix:
            r[0] = f"{RESOURCE[kind]}/{r[0]}"
        if all_namespaces and kind != "Namespace":
            r = [obj["metadata"].get("namespace", "default"), *r]
        rows.append(r)
    if all_namespaces and kind != "Namespace":
        rows[0] = ["NAMESPACE", *rows[0]]
    return tabwrite(rows)


def strip_internal(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the API shows it: without the node's own `remora` block, and its
    creationTimestamp as RFC 3339 (metav1.Time; the store keeps seconds), as pods and
    `kubectl get -o yaml` print it."""
    out = {k: v for k, v in obj.items() if k != "remora"}
    created = (out.get("metadata") or {}).get("creationTimestamp")
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        out["metadata"] = {**out["metadata"], "creationTimestamp": format_time(
            float(created))}
    return out


def structured(items: list[dict[str, Any]], fmt: str, single: bool) -> str:
    """-o json|yaml: one object as itself, several as a v1 List (as kubectl prints)."""
    clean = [strip_internal(o) for o in items]
    body: Any = clean[0] if single and len(clean) == 1 else {
        "apiVersion": "v1", "kind": "List", "items": clean, "metadata": {"resourceVersion": ""}}
    if fmt == "json":
        return json.dumps(body, indent=4) + "\n"
    return str(yaml.safe_dump(body, sort_keys=False))
