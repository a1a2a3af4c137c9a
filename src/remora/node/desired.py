"""Writing desired state: apply and delete, all-or-nothing, as the API server would.

Objects arrive as Kubernetes JSON, already validated by the resources layer; here only
what the node runtime relies on is checked (kind, name, namespace), so a bad object never
half-applies a batch. Services get their ClusterIP here, at apply time, so `get svc` shows
it at once and a conflicting spec.clusterIP is refused with the others untouched.
"""

from __future__ import annotations

from typing import Any

from remora.errors import UsageError
from remora.node import controller, ipam
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
            if obj["kind"] == "Deployment":
                record_revision(store, obj)
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


CHANGE_CAUSE = "kubernetes.io/change-cause"


def revisions_key(namespace: str, name: str) -> str:
    return f"revisions/{namespace}/{name}"


def rollout_key(namespace: str, name: str) -> str:
    """Where the node keeps a Deployment's status as its controller last wrote it
    (remora.node.rollout)."""
    return f"rollout/{namespace}/{name}"


def revisions(store: Store, namespace: str, name: str) -> list[dict[str, Any]]:
    """A Deployment's templates, one per pod-template-hash, each with its revision (the
    ReplicaSets a cluster keeps scaled to 0 for `kubectl rollout history|undo`)."""
    return list(store.get_meta(revisions_key(namespace, name)) or [])


def record_revision(store: Store, deployment: dict[str, Any]) -> None:
    """Number DEPLOYMENT's template as the deployment controller numbers its ReplicaSets
    (pkg/controller/deployment/sync.go getNewReplicaSet): a template not seen before is
    revision max+1; one seen before (a rollback, `kubectl rollout undo`) becomes max+1
    again; the current one follows the Deployment's change-cause annotation. Old ones
    beyond spec.revisionHistoryLimit (default 10) are forgotten, oldest first."""
    meta = deployment["metadata"]
    ns, name = meta.get("namespace", ""), meta["name"]
    if (deployment.get("spec") or {}).get("paused"):
        # a paused Deployment's template change makes no ReplicaSet, so no revision
        # (sync.go: a paused Deployment is only sync()ed, createIfNotExisted false); it
        # is numbered when the Deployment is resumed
        return
    history = revisions(store, ns, name)
    template = (deployment.get("spec") or {}).get("template") or {}
    h = controller.template_hash(deployment)
    cause = (meta.get("annotations") or {}).get(CHANGE_CAUSE)
    top = max((e["revision"] for e in history), default=0)
    entry = next((e for e in history if e["hash"] == h), None)
    if entry is None:
        history.append({"hash": h, "revision": top + 1, "template": template,
                        "changeCause": cause})
    else:
        if entry["revision"] != top:
            entry["revision"] = top + 1
        entry["changeCause"] = cause
    limit = (deployment.get("spec") or {}).get("revisionHistoryLimit")
    keep = 10 if limit is None else max(0, int(limit))
    history.sort(key=lambda e: e["revision"])
    current, old = history[-1], history[:-1]
    history = [*old[len(old) - keep:], current] if keep else [current]
    store.set_meta(revisions_key(ns, name), history)


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
                    if k == "Deployment":
                        store.delete_meta(revisions_key(name, obj["metadata"]["name"]))
                        store.delete_meta(rollout_key(name, obj["metadata"]["name"]))
                    if k == "Service":
                        store.release_ips(f"svc:{name}/{obj['metadata']['name']}")
                    gone.append(f"{k.lower()}/{obj['metadata']['name']} deleted")
            namespace = ""
        if store.delete_object(kind, namespace if kind in NAMESPACED else "", name):
            gone.append(f"{kind.lower()}/{name} deleted")
            if kind == "Service":
                store.release_ips(f"svc:{namespace}/{name}")
            if kind == "Deployment":  # a new Deployment of the name starts at revision 1
                store.delete_meta(revisions_key(namespace, name))
                store.delete_meta(rollout_key(namespace, name))
    return gone
