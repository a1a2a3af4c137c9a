"""Naming a pod as kubectl and istioctl let you: NAME, pod/NAME, deploy/NAME (the
Deployment's first live pod), NAME.NAMESPACE (istioctl's form)."""

from __future__ import annotations

from remora.errors import RemoraError
from remora.lab import tables
from remora.node.client import NodeClient


def split_dotted(ref: str, namespace: str) -> tuple[str, str]:
    """istioctl's POD.NAMESPACE (pod names have no dots; deploy/x.ns keeps its kind)."""
    if "." in ref:
        name, _, ns = ref.partition(".")
        return name, ns
    return ref, namespace


def resolve_pod(client: NodeClient, namespace: str, ref: str) -> str:
    if "/" not in ref:
        return ref
    kind, name = ref.split("/", 1)
    k = tables.kind_of(kind)
    if k == "Pod":
        return name
    if k != "Deployment":
        raise RemoraError(f"{ref!r} does not name pods", "give POD, pod/NAME or deploy/NAME")
    owned = sorted((p for p in client.get("Pod", namespace)
                    if (p["metadata"].get("ownerReferences") or [{}])[0].get("name") == name
                    and "deletionTimestamp" not in p["metadata"]),
                   key=lambda p: p["metadata"]["name"])
    if not owned:
        raise RemoraError(f"deployment {name!r} has no pods in namespace {namespace!r}",
                          f"see `remora get deploy,pods -n {namespace}`")
    return str(owned[0]["metadata"]["name"])
