"""Server-side printing: meta.k8s.io/v1 Table for `kubectl get`, which asks for it with
`Accept: application/json;as=Table;v=v1;g=meta.k8s.io` and prints the cells as given
(columns with priority > 0 only with `-o wide`; NAMESPACE is added by kubectl for -A).

The cells are those of `remora get` (remora.lab.tables, kubectl's own columns), so both
print the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from remora.lab import tables

Row = Callable[[dict[str, Any], float], list[str]]


def _ep_row(o: dict[str, Any], now: float) -> list[str]:
    eps = [f"{a['ip']}:{p['port']}" for s in o.get("subsets") or []
           for a in s.get("addresses") or [] for p in s.get("ports") or []]
    shown = ",".join(eps[:3]) + (f" + {len(eps) - 3} more..." if len(eps) > 3 else "")
    return [o["metadata"]["name"], shown or "<none>", tables.age(o, now)]


def _rs_row(o: dict[str, Any], now: float) -> list[str]:
    st, spec = o.get("status") or {}, o.get("spec") or {}
    containers = (spec.get("template") or {}).get("spec", {}).get("containers") or []
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    return [o["metadata"]["name"], str(spec.get("replicas", 0)), str(st.get("replicas", 0)),
            str(st.get("readyReplicas", 0)), tables.age(o, now),
            ",".join(c["name"] for c in containers),
            ",".join(str(c.get("image", "")) for c in containers),
            ",".join(f"{k}={v}" for k, v in selector.items())]


def _slice_row(o: dict[str, Any], now: float) -> list[str]:
    ports = ",".join(str(p["port"]) for p in o.get("ports") or []) or "<unset>"
    addrs = [a for e in o.get("endpoints") or [] for a in e.get("addresses") or []]
    return [o["metadata"]["name"], o.get("addressType", "IPv4"), ports,
            ",".join(addrs) or "<unset>", tables.age(o, now)]


def _crd_row(o: dict[str, Any], now: float) -> list[str]:
    return [o["metadata"]["name"], str(o["metadata"].get("creationTimestamp") or "")]


def _event_row(o: dict[str, Any], now: float) -> list[str]:
    involved = o.get("involvedObject") or {}
    source = o.get("source") or {}

    def seen(ts: Any) -> str:
        return tables.age({"metadata": {"creationTimestamp": ts}}, now) if ts else "<unknown>"

    return [seen(o.get("lastTimestamp")), str(o.get("type", "")), str(o.get("reason", "")),
            f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
            str(involved.get("fieldPath", "")),
            ", ".join(v for v in (source.get("component"), source.get("host")) if v),
            str(o.get("message", "")), seen(o.get("firstTimestamp")), str(o.get("count", 1)),
            o["metadata"]["name"]]


# the apiserver's event columns (pkg/printers/internalversion/printers.go), in its order:
# the wide ones (priority 1) sit between the others
EVENT_COLUMNS = [("Last Seen", 0), ("Type", 0), ("Reason", 0), ("Object", 0),
                 ("Subobject", 1), ("Source", 1), ("Message", 0), ("First Seen", 1),
                 ("Count", 1), ("Name", 1)]

def _node_row(o: dict[str, Any], now: float) -> list[str]:
    status = o.get("status") or {}
    ready: dict[str, Any] = next((c for c in status.get("conditions") or []
                                  if c.get("type") == "Ready"), {})
    roles = sorted(k.split("/", 1)[1] for k in o["metadata"].get("labels") or {}
                   if k.startswith("node-role.kubernetes.io/"))
    internal = [a["address"] for a in status.get("addresses") or []
                if a.get("type") == "InternalIP"]
    info = status.get("nodeInfo") or {}
    return [o["metadata"]["name"], "Ready" if ready.get("status") == "True" else "NotReady",
            ",".join(roles) or "<none>", tables.age(o, now), info.get("kubeletVersion", ""),
            internal[0] if internal else "<none>", "<none>", info.get("osImage", ""),
            info.get("kernelVersion", ""), info.get("containerRuntimeVersion", "")]


DERIVED: dict[str, tuple[list[str], list[str], Row]] = {
    "CustomResourceDefinition": (["Name", "Created At"], [], _crd_row),
    "Endpoints": (["Name", "Endpoints", "Age"], [], _ep_row),
    "ReplicaSet": (["Name", "Desired", "Current", "Ready", "Age"],
                   ["Containers", "Images", "Selector"], _rs_row),
    "EndpointSlice": (["Name", "AddressType", "Ports", "Endpoints", "Age"], [], _slice_row),
    "Event": ([name for name, _ in EVENT_COLUMNS], [], _event_row),
    "Lease": (["Name", "Holder", "Age"], [], lambda o, now: [
        o["metadata"]["name"], str((o.get("spec") or {}).get("holderIdentity", "")),
        tables.age(o, now)]),
    "Node": (["Name", "Status", "Roles", "Age", "Version"],
             ["Internal-IP", "External-IP", "OS-Image", "Kernel-Version", "Container-Runtime"],
             _node_row),
}

# the apiserver's table for a kind without printer columns (apimachinery's
# DefaultTableConvertor: name, creation time), here the kinds listed empty
# (resources.UNSTORED)
_DEFAULT: tuple[list[str], list[str], Row] = (
    ["Name", "Created At"], [], lambda o, now: [
        o["metadata"]["name"], str(o["metadata"].get("creationTimestamp") or "")])


def _title(header: str) -> str:
    return "-".join(w.capitalize() for w in header.split("-")) if header.isupper() else header


def columns(kind: str) -> list[dict[str, Any]]:
    if kind == "Event":
        return [{"name": name, "type": "string", "format": "name" if name == "Name" else "",
                 "description": "", "priority": priority} for name, priority in EVENT_COLUMNS]
    if kind in tables.HEADERS:
        head, extra, _ = tables.HEADERS[kind]
    else:
        head, extra, _ = DERIVED.get(kind, _DEFAULT)
    out = []
    for i, name in enumerate([*head, *extra]):
        out.append({"name": _title(name), "type": "string",
                    "format": "name" if i == 0 else "", "description": "",
                    "priority": 0 if i < len(head) else 1})
    return out


def cells(kind: str, obj: dict[str, Any], now: float) -> list[str]:
    if kind in tables.HEADERS:
        return tables.HEADERS[kind][2](obj, now, True)
    return DERIVED.get(kind, _DEFAULT)[2](obj, now)


def partial(obj: dict[str, Any]) -> dict[str, Any]:
    """The row's object: PartialObjectMetadata, kubectl's default includeObject."""
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"]}


def table(kind: str, rows: list[tuple[dict[str, Any], dict[str, Any]]], now: float,
          resource_version: str, with_columns: bool = True,
          include: str = "Metadata") -> dict[str, Any]:
    """ROWS: (the node's object, for the cells; the served object, for metadata).

    INCLUDE is the request's includeObject (meta/v1 TableOptions): each row's object as
    PartialObjectMetadata (Metadata, the default), the whole served object (Object:
    what kubectl asks for with --sort-by, which sorts on the objects' fields), or none."""
    def row(raw: dict[str, Any], served: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"cells": cells(kind, raw, now)}
        if include == "Object":
            out["object"] = served
        elif include != "None":
            out["object"] = partial(served)
        return out

    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": columns(kind) if with_columns else [],
            "rows": [row(raw, served) for raw, served in rows]}


def wants_table(accept: str) -> bool:
    return "as=Table" in accept
