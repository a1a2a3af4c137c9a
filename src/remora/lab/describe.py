"""`remora describe`: kubectl describe's layout for pods, deployments, services and
namespaces (pure; pkg/describe/describe.go is the model, trimmed to what the lab has)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from remora.lab.tables import age, human_duration, tabwrite
from remora.node import controller, naming, rollout
from remora.resources.rfc3339 import parse_time


def _kv(d: dict[str, str] | None, indent: int) -> str:
    if not d:
        return "<none>"
    pad = " " * indent
    items = sorted(d.items())
    return ("\n" + pad).join(f"{k}={v}" for k, v in items)


def _annotations(d: dict[str, str] | None, indent: int) -> str:
    """Annotations as kubectl describe prints them: `key: value`, one per line (labels are
    `key=value`)."""
    if not d:
        return "<none>"
    return ("\n" + " " * indent).join(f"{k}: {v}" for k, v in sorted(d.items()))


def _line(label: str, value: Any, width: int = 18) -> str:
    return f"{label + ':':<{width}}{value}"


def rfc1123z(stamp: Any) -> str:
    """Go's time.RFC1123Z, the format kubectl describe prints times in."""
    # the node's own objects keep seconds since the epoch; the API's RFC 3339
    t = (float(stamp) if isinstance(stamp, (int, float)) and not isinstance(stamp, bool)
         else parse_time(stamp))
    if t is None:
        return str(stamp or "")
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")




def _since(stamp: Any, now: float) -> str:
    t = parse_time(stamp)
    return "<unknown>" if t is None else human_duration(now - t)


def events(items: list[dict[str, Any]], kind: str, namespace: str, name: str, uid: str,
           now: float) -> list[str]:
    """kubectl describe's Events section (describe.go DescribeEvents) for one object: the
    node's recorded events whose involvedObject is it (kubectl selects them by kind,
    namespace, name and uid), by last time seen; a repeat's age reads `4s (x3 over 2m)`."""
    mine = [e for e in items if (lambda o: o.get("kind") == kind and o.get("name") == name
                                 and o.get("namespace") == namespace
                                 and o.get("uid") in (uid, None))(e.get("involvedObject")
                                                                   or {})]
    if not mine:
        return ["Events:  <none>"]
    mine.sort(key=lambda e: parse_time(e.get("lastTimestamp")) or 0.0)
    rows = [["Type", "Reason", "Age", "From", "Message"],
            ["----", "------", "----", "----", "-------"]]
    for e in mine:
        count = int(e.get("count") or 1)
        seen = _since(e.get("lastTimestamp"), now)
        if count > 1:
            seen += f" (x{count} over {_since(e.get('firstTimestamp'), now)})"
        source = e.get("source") or {}
        rows.append([str(e.get("type") or ""), str(e.get("reason") or ""), seen,
                     str(source.get("component") or e.get("reportingComponent")
                         or "<unknown>"), " ".join(str(e.get("message") or "").split())])
    return ["Events:", *("  " + line for line in tabwrite(rows, 2).splitlines())]


def _status(label: str, state: dict[str, Any]) -> list[str]:
    """kubectl describe's describeStatus: one container state under LABEL."""
    head = f"    {label + ':':<16}"
    if "running" in state:
        return [f"{head}Running",
                f"      Started:      {rfc1123z(state['running'].get('startedAt'))}"]
    if "terminated" in state:
        t = state["terminated"]
        out = [f"{head}Terminated"]
        if t.get("reason"):
            out.append(f"      Reason:       {t['reason']}")
        out += [f"      Exit Code:    {t.get('exitCode')}",
                f"      Started:      {rfc1123z(t.get('startedAt'))}",
                f"      Finished:     {rfc1123z(t.get('finishedAt'))}"]
        return out
    reason = state.get("waiting", {}).get("reason")
    return [f"{head}Waiting", *([f"      Reason:       {reason}"] if reason else [])]


def _state(status: dict[str, Any] | None) -> list[str]:
    if not status:
        return ["    State:          Waiting", "      Reason:       ContainerCreating"]
    out = _status("State", status.get("state", {}))
    last = status.get("lastState") or {}
    if "terminated" in last:
        out += _status("Last State", last)
    out += [f"    Ready:          {'True' if status.get('ready') else 'False'}",
            f"    Restart Count:  {status.get('restartCount', 0)}"]
    return out


def _containers(title: str, specs: list[dict[str, Any]],
                statuses: list[dict[str, Any]]) -> list[str]:
    if not specs:
        return []
    by_name = {s["name"]: s for s in statuses}
    out = [f"{title}:"]
    for c in specs:
        out.append(f"  {c['name']}:")
        if by_name.get(c["name"], {}).get("containerID"):
            out.append(f"    Container ID:   {by_name[c['name']]['containerID']}")
        out.append(f"    Image:          {c.get('image', '')}")
        if c.get("command"):
            out.append("    Command:")
            out += [f"      {a}" for a in c["command"]]
        if c.get("args"):
            out.append("    Args:")
            out += [f"      {a}" for a in c["args"]]
        ports = c.get("ports") or []
        if ports:
            out.append("    Ports:          " + ", ".join(
                f"{p['containerPort']}/{p.get('protocol', 'TCP')}" for p in ports))
        out += _state(by_name.get(c["name"]))
        probe = c.get("readinessProbe") or {}
        if probe.get("httpGet"):
            g = probe["httpGet"]
            out.append(f"    Readiness:      http-get :{g.get('port')}{g.get('path', '/')}")
        env = c.get("env") or []
        if env:
            out.append("    Environment:")
            for e in env:
                value = e.get("value", "")
                ref = (e.get("valueFrom") or {}).get("fieldRef")
                if ref:
                    value = f"({ref.get('fieldPath')})"
                out.append(f"      {e['name']}:  {value}")
    return out


def _has_ipv6(ips: list[str]) -> bool:
    return len(ips) > 1 or any(":" in ip for ip in ips)


def _pod_ips(status: dict[str, Any]) -> list[str]:
    """kubectl's describePodIPs: `IPs:` and an `  IP:` line per status.podIPs entry. An
    IPv4-only pod's description is left as remora has always printed it (without them)."""
    ips = [str(x.get("ip")) for x in status.get("podIPs") or [] if x.get("ip")]
    if not _has_ipv6(ips):
        return []
    return ["IPs:", *(_line("  IP", ip, 16) for ip in ips)]


def pod(p: dict[str, Any], now: float, recorded: list[dict[str, Any]] | None = None) -> str:
    meta, spec, status = p["metadata"], p.get("spec", {}), p.get("status", {})
    r = p.get("remora", {})
    owner = (meta.get("ownerReferences") or [{}])[0]
    lines = [
        _line("Name", meta["name"]), _line("Namespace", meta.get("namespace", "default")),
        _line("Node", f"{spec.get('nodeName', '')}/{status.get('hostIP', '')}"),
        _line("Start Time", rfc1123z(meta.get("creationTimestamp", ""))),
        _line("Labels", _kv(meta.get("labels"), 18)),
        _line("Annotations", _kv(meta.get("annotations"), 18)),
        _line("Status", r.get("status", status.get("phase", ""))),
        _line("IP", status.get("podIP") or ""),
        *_pod_ips(status),
        _line("Controlled By", f"{owner['kind']}/{owner['name']}" if owner else "<none>"),
        _line("Network NS", r.get("netns", "")),
        _line("Age", age(p, now)),
    ]
    if status.get("message"):
        lines.append(_line("Message", status["message"]))
    lines += _containers("Init Containers", spec.get("initContainers") or [],
                         status.get("initContainerStatuses") or [])
    lines += _containers("Containers", spec.get("containers") or [],
                         status.get("containerStatuses") or [])
    lines += ["Conditions:", "  Type              Status",
              f"  Ready             {'True' if status.get('ready') else 'False'}"]
    if recorded is not None:
        lines += events(recorded, "Pod", meta.get("namespace", "default"), meta["name"],
                        str(meta.get("uid") or ""), now)
    return "\n".join(lines) + "\n"


def _deployment_annotations(d: dict[str, Any]) -> dict[str, str]:
    """The Deployment's annotations with the deployment controller's revision, which
    Kubernetes stores on the object (pkg/controller/deployment/util: RevisionAnnotation)
    and kubectl describe therefore prints: the revision of the template rolled out last,
    as the lab's Kubernetes API serves it (kubeapi/views.py api_object)."""
    out = dict(d["metadata"].get("annotations") or {})
    entries = list((d.get("remora") or {}).get("revisions") or [])
    acting = controller.rolled_out(d, entries) or d
    current = next((e for e in entries if e["hash"] == controller.template_hash(acting)),
                   None)
    if current is not None:
        out["deployment.kubernetes.io/revision"] = str(current["revision"])
    return out


def deployment(d: dict[str, Any], pods: list[dict[str, Any]], now: float,
               recorded: list[dict[str, Any]] | None = None) -> str:
    meta, spec, st = d["metadata"], d.get("spec", {}), d.get("status", {})
    want = spec.get("replicas")
    want = 1 if want is None else want
    tmeta = spec.get("template", {}).get("metadata", {})
    strategy = (spec.get("strategy") or {}).get("type") or "RollingUpdate"
    lines = [
        _line("Name", meta["name"], 24), _line("Namespace", meta.get("namespace"), 24),
        _line("CreationTimestamp", rfc1123z(meta.get("creationTimestamp")), 24),
        _line("Labels", _kv(meta.get("labels"), 24), 24),
        _line("Annotations", _annotations(_deployment_annotations(d), 24), 24),
        _line("Selector", _kv(spec.get("selector", {}).get("matchLabels"), 24), 24),
        _line("Replicas", f"{want} desired | {st.get('updatedReplicas', 0)} updated | "
              f"{st.get('replicas', 0)} total | {st.get('availableReplicas', 0)} available | "
              f"{st.get('unavailableReplicas', 0)} unavailable", 24),
        _line("StrategyType", strategy, 24),
        _line("MinReadySeconds", spec.get("minReadySeconds") or 0, 24),
    ]
    if strategy == "RollingUpdate":
        # kubectl: "%s max unavailable, %s max surge", the values the rollout uses (the
        # lab's defaults for those left out: controller.rolling_update)
        limits = controller.rolling_update(d)
        lines.append(_line("RollingUpdateStrategy", f"{limits['maxUnavailable']} max "
                           f"unavailable, {limits['maxSurge']} max surge", 24))
    lines += [
        _line("Age", age(d, now), 24),
        "Pod Template:",
        f"  Labels:       {_kv(tmeta.get('labels'), 16)}",
        f"  Annotations:  {_annotations(tmeta.get('annotations'), 16)}",
        "  Containers:",
    ]
    for c in spec.get("template", {}).get("spec", {}).get("containers") or []:
        lines += [f"   {c['name']}:", f"    Image:        {c.get('image', '')}"]
    lines.append("Pods:")
    lines += [f"  {p['metadata']['name']}  {p.get('remora', {}).get('status', '')}  "
              f"{p.get('status', {}).get('podIP') or ''}" for p in pods] or ["  <none>"]
    tail, width = _rollout(d, pods)
    lines += tail
    if recorded is not None:
        ns = meta.get("namespace") or "default"
        # the uid the recorder and the Kubernetes API give a Deployment (naming.object_uid)
        found = events(recorded, "Deployment", ns, meta["name"], naming.object_uid(
            "Deployment", ns, meta["name"], meta.get("creationTimestamp")), now)
        # "Events:\t<none>" is a cell of the same tabwriter block as NewReplicaSet's
        lines += [_line("Events", "<none>", width)] if found == ["Events:  <none>"] else found
    return "\n".join(lines) + "\n"


def _rollout(d: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[list[str], int]:
    """kubectl's describeDeployment after the pod template: the Conditions table (Type,
    Status, Reason, in the order the controller last set them), then OldReplicaSets
    (every older ReplicaSet, those at 0 too, as kubectl lists them since
    kubernetes/kubernetes#113083: allOldRSs) and NewReplicaSet, each
    `name (status/spec replicas created)` (printReplicaSetsByLabels), with the sizes and
    in the order the Kubernetes API serves them (remora.node.rollout.replicaset_sizes).
    Also the width of their first column, which the lines share in kubectl's tabwriter
    (padding 2): the table's rows and the two `...ReplicaSet(s):` lines are one block
    of cells."""
    name = d["metadata"]["name"]
    entries = list((d.get("remora") or {}).get("revisions") or [])
    history = [str(e["hash"]) for e in entries]
    # a paused Deployment's ReplicaSets are those of the template rolled out last
    # (controller.rolled_out); its changed template has none, so kubectl's
    # GetNewReplicaSet finds no ReplicaSet equal to it: NewReplicaSet <none>
    acting = controller.rolled_out(d, entries, {
        (p["metadata"].get("labels") or {}).get(controller.TEMPLATE_HASH_LABEL, "")
        for p in pods if not p["metadata"].get("deletionTimestamp")})
    current = controller.template_hash(d)
    sizes = {} if acting is None else rollout.replicaset_sizes(acting, [
        ((p["metadata"].get("labels") or {}).get(controller.TEMPLATE_HASH_LABEL, ""),
         bool(p["metadata"].get("deletionTimestamp"))) for p in pods], history)

    def created(h: str) -> str:
        return f"{name}-{h} ({sizes[h][1]}/{sizes[h][0]} replicas created)"

    old = [created(h) for h in sizes if h != current]
    tail = [["OldReplicaSets:", ", ".join(old) or "<none>"],
            ["NewReplicaSet:", created(current) if current in sizes else "<none>"]]
    conditions = (d.get("status") or {}).get("conditions") or []
    # kubectl writes each condition as "%v \t%v\t%v": the type cell ends in a space
    table = [["  Type", "Status", "Reason"], ["  ----", "------", "------"],
             *([f"  {c.get('type')} ", str(c.get("status")), str(c.get("reason"))]
               for c in conditions)] if conditions else []
    first = max(len(r[0]) for r in table + tail) + 2
    second = max((len(r[1]) for r in table), default=0) + 2
    out = ["Conditions:"] if table else []
    out += [f"{r[0]:<{first}}{r[1]:<{second}}{r[2]}" for r in table]
    out += [f"{r[0]:<{first}}{r[1]}" for r in tail]
    return out, first


def service(s: dict[str, Any], endpoints: list[str], now: float) -> str:
    meta, spec = s["metadata"], s.get("spec", {})
    lines = [_line("Name", meta["name"]), _line("Namespace", meta.get("namespace")),
             _line("Labels", _kv(meta.get("labels"), 18)),
             _line("Selector", _kv(spec.get("selector"), 18)),
             _line("Type", spec.get("type", "ClusterIP"))]
    ips = [str(ip) for ip in spec.get("clusterIPs") or []]
    if _has_ipv6(ips) or "ipFamilies" in spec:
        # kubectl describe service's family lines (an IPv4 lab's output is unchanged)
        lines += [_line("IP Family Policy", spec.get("ipFamilyPolicy", "SingleStack")),
                  _line("IP Families", ",".join(spec.get("ipFamilies") or []) or "<none>")]
    lines.append(_line("IP", spec.get("clusterIP", "")))
    if _has_ipv6(ips) or "ipFamilies" in spec:
        lines.append(_line("IPs", ",".join(ips) or "<none>"))
    for p in spec.get("ports") or []:
        lines += [_line("Port", f"{p.get('name') or '<unset>'}  {p['port']}/"
                                f"{p.get('protocol', 'TCP')}"),
                  _line("TargetPort", f"{p.get('targetPort', p['port'])}/"
                                      f"{p.get('protocol', 'TCP')}")]
    lines.append(_line("Endpoints", ",".join(endpoints) or "<none>"))
    lines.append(_line("Age", age(s, now)))
    return "\n".join(lines) + "\n"


def namespace(n: dict[str, Any], now: float) -> str:
    meta = n["metadata"]
    return "\n".join([_line("Name", meta["name"]), _line("Labels", _kv(meta.get("labels"), 18)),
                      _line("Status", "Active")]) + "\n"


# -- custom resources (Istio's policies): kubectl's DescribeUnstructured ---------------------
_ACRONYMS = ("API", "URL", "UID", "OSB", "GUID")


def smart_label(field: str) -> str:
    """kubectl describe's smartLabelFor: `ipBlocks` -> `Ip Blocks`, `apiVersion` ->
    `API Version`; a name with other characters than letters and '-' stays as is."""
    if not field or any(not (c.isalpha() or c == "-") for c in field):
        return field
    parts, word = [], ""
    for c in field:
        if c.isupper() and word and not word[-1].isupper():
            parts.append(word)
            word = ""
        word += c
    parts.append(word)
    return " ".join(p.upper() if p.upper() in _ACRONYMS else p[:1].upper() + p[1:]
                    for p in parts)


def _content(value: Any, level: int) -> list[str]:
    """printUnstructuredContent: maps by sorted key, lists item by item, scalars
    `Key:  value` aligned within their map."""
    pad = "  " * level
    out: list[str] = []
    if isinstance(value, dict):
        scalars = [k for k in value if not isinstance(value[k], (dict, list))]
        width = max((len(smart_label(k)) for k in scalars), default=0) + 3
        for key in sorted(value):
            v = value[key]
            if isinstance(v, (dict, list)):
                out.append(f"{pad}{smart_label(key)}:")
                out += _content(v, level + 1)
            else:
                out.append(f"{pad}{smart_label(key) + ':':<{width}}{v}")
    elif isinstance(value, list):
        for item in value:
            out += _content(item, level) if isinstance(item, (dict, list)) else [f"{pad}{item}"]
    return out


def custom_resource(obj: dict[str, Any], now: float) -> str:
    meta = obj["metadata"]
    lines = [_line("Name", meta["name"], 14), _line("Namespace", meta.get("namespace", ""), 14),
             _line("Labels", _kv(meta.get("labels"), 14), 14),
             _line("Annotations", _kv(meta.get("annotations"), 14), 14),
             _line("API Version", obj.get("apiVersion", ""), 14),
             _line("Kind", obj.get("kind", ""), 14)]
    for key in sorted(k for k in obj if k not in ("apiVersion", "kind", "metadata", "status")):
        lines.append(f"{smart_label(key)}:")
        lines += _content(obj[key], 1)
    lines.append(_line("Events", "<none>", 9))
    return "\n".join(lines) + "\n"
