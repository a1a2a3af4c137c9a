"""Writing desired state: apply and delete, all-or-nothing, as the API server would.

Objects arrive as Kubernetes JSON, already validated by the resources layer; here only
what the node runtime relies on is checked (kind, name, namespace), so a bad object never
half-applies a batch. Services get their ClusterIP here, at apply time, so `get svc` shows
it at once and a conflicting spec.clusterIP is refused with the others untouched.
"""

from __future__ import annotations

from typing import Any

from remora.errors import UsageError
from remora.node import ipam
from remora.node.ipam import AddressPlan
from remora.node.store import Store

# Istio's security policies are stored for the control plane (the PodSetup hook reads
# them from ClusterSnapshot.policies); the node itself runs nothing for them.
POLICY_KINDS = ("PeerAuthentication", "AuthorizationPolicy")
KINDS = ("Namespace", "Deployment", "Service", "Pod", *POLICY_KINDS)
NAMESPACED = ("Deployment", "Service", "Pod", *POLICY_KINDS)
# The namespaces a Kubernetes API server always has (it creates them itself).
BUILTIN_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def normalise(obj: dict[str, Any]) -> dict[str, Any]:
    kind = obj.get("kind")
    meta = obj.get("metadata")
    if kind not in KINDS:
        raise UsageError(f"kind {kind!r} cannot run on the node",
                         f"apply only {', '.join(KINDS)} to the node")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise UsageError(f"a {kind} has no metadata.name", "give every object a name")
    out = dict(obj)
    meta = dict(meta)
    if kind in NAMESPACED:
        meta["namespace"] = meta.get("namespace") or "default"
    else:
        meta.pop("namespace", None)
    for volatile in ("generation", "creationTimestamp", "uid", "resourceVersion"):
        meta.pop(volatile, None)
    out["metadata"] = meta
    return out


def _owner(obj: dict[str, Any]) -> str:
    return f"svc:{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def _requested_ips(spec: dict[str, Any]) -> list[str]:
    """spec.clusterIPs, else spec.clusterIP (the API server keeps them in step)."""
    ips = [str(ip) for ip in spec.get("clusterIPs") or [] if ip]
    if not ips and spec.get("clusterIP"):
        ips = [str(spec["clusterIP"])]
    return [ip for ip in ips if ip != "None"]


def apply(store: Store, plan: AddressPlan, objects: list[dict[str, Any]]) -> list[str]:
    """Store OBJECTS; return kubectl-style lines ("service/x created").

    A Service gets a ClusterIP of each of its IP families (ipam.service_families decides
    them from ipFamilies / ipFamilyPolicy and the cluster's families, as the API server
    does), the primary first; a requested clusterIP / clusterIPs is checked first."""
    normal = [normalise(o) for o in objects]
    results = []
    with store.tx():
        used = store.used_ips("svc")
        wanted: dict[str, list[str]] = {}
        families: dict[str, tuple[str, ...]] = {}
        for obj in normal:
            if obj["kind"] != "Service":
                continue
            owner = _owner(obj)
            spec = obj.get("spec") or {}
            families[owner] = ipam.service_families(
                plan, spec, f"Service/{obj['metadata']['namespace']}/{obj['metadata']['name']}")[0]
            requested = _requested_ips(spec)
            for ip in requested:
                ipam.check_cluster_ip(plan, ip, owner, {**used, **{
                    w: o for o, ips in wanted.items() for w in ips}})
            if requested:
                wanted[owner] = requested
        for obj in normal:
            existed = store.get_object(obj["kind"], obj["metadata"].get("namespace", ""),
                                       obj["metadata"]["name"]) is not None
            changed, _ = store.put_object(obj)
            if obj["kind"] == "Service":
                owner = _owner(obj)
                held = [ip for ip, o in store.used_ips("svc").items() if o == owner]
                ips: list[str] = []
                if (obj.get("spec") or {}).get("clusterIP") != "None":
                    for i, family in enumerate(families[owner]):
                        asked = wanted.get(owner, [])
                        mine = [ip for ip in held if ipam.family_of(ip) == family]
                        ip = asked[i] if i < len(asked) else (mine[0] if mine else "")
                        if not ip:
                            ip = ipam.allocate_cluster_ip(
                                plan, obj["metadata"]["namespace"], obj["metadata"]["name"],
                                store.used_ips("svc"), family)
                        ips.append(ip)
                store.release_ips(owner)
                for ip in ips:
                    store.hold_ip("svc", ip, owner)
            verb = "unchanged" if not changed else "configured" if existed else "created"
            results.append(f"{obj['kind'].lower()}/{obj['metadata']['name']} {verb}")
    return results


def delete(store: Store, kind: str, namespace: str, name: str) -> list[str]:
    """Remove desired objects (a Namespace takes everything in it); pods go by the runtime."""
    if kind not in KINDS:
        raise UsageError(f"kind {kind!r} is not known to the node", f"use one of {KINDS}")
    gone = []
    with store.tx():
        if kind == "Namespace":
            for k in NAMESPACED:
                for obj in store.list_objects(k, name):
                    store.delete_object(k, name, obj["metadata"]["name"])
                    if k == "Service":
                        store.release_ips(f"svc:{name}/{obj['metadata']['name']}")
                    gone.append(f"{k.lower()}/{obj['metadata']['name']} deleted")
            namespace = ""
        if store.delete_object(kind, namespace if kind in NAMESPACED else "", name):
            gone.append(f"{kind.lower()}/{name} deleted")
            if kind == "Service":
                store.release_ips(f"svc:{namespace}/{name}")
    return gone
