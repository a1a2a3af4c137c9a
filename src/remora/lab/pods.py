"""Naming a pod as kubectl and istioctl let you: NAME, pod/NAME, deploy/NAME (the
Deployment's first live pod), NAME.NAMESPACE (istioctl's form)."""

from __future__ import annotations

from typing import Any

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
        deployments = client.get("Deployment")
        raise missing_deployment(name, namespace, deployments)
    return str(owned[0]["metadata"]["name"])


def missing_deployment(name: str, namespace: str,
                       deployments: list[dict[str, Any]]) -> RemoraError:
    """No live pod of deploy/NAME in NAMESPACE: say whether the Deployment is not there
    (kubectl: `deployments.apps "NAME" not found`) and, when it is in other namespaces,
    name them: a forgotten -n is the usual cause, and "has no pods" sent people looking
    for a crash."""
    here = [d for d in deployments if d["metadata"].get("namespace") == namespace
            and d["metadata"]["name"] == name]
    if here:
        return RemoraError(f"deployment {name!r} has no pods in namespace {namespace!r}",
                           f"see `remora get deploy,pods -n {namespace}`")
    elsewhere = sorted({str(d["metadata"].get("namespace")) for d in deployments
                        if d["metadata"]["name"] == name})
    if elsewhere:
        return RemoraError(f'deployments.apps "{name}" not found in namespace {namespace!r} '
                           f"(it is in {', '.join(elsewhere)})",
                           f"did you mean -n {elsewhere[0]}?")
    return RemoraError(f'deployments.apps "{name}" not found in namespace {namespace!r}',
                       "list them with `remora get deploy -A`")
