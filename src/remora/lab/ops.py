"""What the lab's kubectl-like commands do beyond one daemon call (remora.cli.lab):
all-or-nothing apply, object selection, service endpoints, pod references, following
logs. Thin over the node client; no output formatting here."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from remora.errors import RemoraError, UsageError
from remora.lab import labels, manifests, selectors, tables
from remora.lab.images import ImageMap
from remora.lab.pods import resolve_pod
from remora.node.client import NodeClient, follow


def admission_check_offline(batch: manifests.Batch, images: ImageMap) -> None:
    """The admission check with only the batch's own namespaces (no lab needed)."""
    manifests.admission_check(batch.objects, manifests.namespace_objects(batch.objects, []),
                              images)


def apply_batch(client: NodeClient, batch: manifests.Batch, images: ImageMap) -> list[str]:
    """Admission-check then apply a whole batch; nothing is sent if any object fails."""
    existing = client.get("Namespace")
    manifests.check_namespaces(batch.objects, {n["metadata"]["name"] for n in existing})
    if any(o.get("kind") in ("Deployment", "Pod") for o in batch.objects):
        info = client.ping()
        running = client.get("Deployment") + [
            p for p in client.get("Pod") if not p["metadata"].get("ownerReferences")]
        manifests.check_capacity(batch.objects, running, manifests.Capacity(
            int(info["nodes"]), int(info["podsPerNode"]), int(info["maxNodes"])),
            client.state_dir)
    namespaces = manifests.namespace_objects(batch.objects, existing)
    manifests.admission_check(batch.objects, namespaces, images)
    return client.apply(batch.objects)


def create_namespace(client: NodeClient, name: str) -> str:
    """`kubectl create namespace NAME`: AlreadyExists when it is there."""
    from remora.resources.loader import parse_object

    if name in {n["metadata"]["name"] for n in client.get("Namespace")}:
        raise RemoraError(f'namespaces "{name}" already exists',
                          f"use it; `remora label ns {name} istio-injection=enabled` turns on "
                          "sidecar injection")
    obj = manifests.namespace(name)
    parse_object(obj, f"Namespace/{name}")  # the API server's name rules
    client.apply([obj])
    return f"namespace/{name} created"


def label_namespace(client: NodeClient, name: str, args: list[str], overwrite: bool) -> str:
    """`kubectl label namespace NAME KEY=VALUE|KEY- ... [--overwrite]`."""
    from remora.resources.loader import parse_object

    found = [n for n in client.get("Namespace") if n["metadata"]["name"] == name]
    if not found:
        raise RemoraError(f'namespaces "{name}" not found',
                          f"create it with `remora create ns {name}`")
    meta = found[0]["metadata"]
    result = labels.update(dict(meta.get("labels") or {}), args, overwrite)
    if not result.changed:
        return f"namespace/{name} not labeled"
    obj = manifests.namespace(name, result.labels)
    if meta.get("annotations"):
        obj["metadata"]["annotations"] = dict(meta["annotations"])
    parse_object(obj, f"Namespace/{name}")  # label keys and values as the API checks them
    client.apply([obj])
    return f"namespace/{name} labeled"


def kind_name(kind: str, name: str | None) -> tuple[str, str]:
    if "/" in kind and name is None:
        kind, name = kind.split("/", 1)
    if not name:
        raise UsageError("a resource name is needed", "give KIND NAME or KIND/NAME")
    return tables.kind_of(kind), name


def select(client: NodeClient, kind: str, namespace: str | None, name: str | None,
            selector: str | None) -> list[dict[str, Any]]:
    items = client.get(kind, None if kind == "Namespace" else namespace)
    match = selectors.parse(selector)
    items = [o for o in items if match(o["metadata"].get("labels") or {})]
    if name is not None:
        items = [o for o in items if o["metadata"]["name"] == name]
        if not items:
            where = "" if kind == "Namespace" else f" in namespace {namespace!r}"
            raise RemoraError(f'{kind.lower()} "{name}" not found{where}',
                              f"list them with `remora get {kind.lower()}`" if kind == "Namespace"
                              else f"list them with `remora get {kind.lower()} -n {namespace}` "
                                   "(or -A)")
    return items


def endpoints_of(client: NodeClient, svc: dict[str, Any]) -> list[str]:
    from remora.node.controller import endpoints

    pods = client.get("Pod", svc["metadata"]["namespace"])
    # net.JoinHostPort, as kubectl prints them: an IPv6 endpoint in brackets
    return [f"[{e['ip']}]:{e['port']}" if ":" in e["ip"] else f"{e['ip']}:{e['port']}"
            for e in endpoints(svc, pods)]


# -- logs / exec ----------------------------------------------------------------------------
def pods_for(client: NodeClient, namespace: str, pod: str | None,
              selector: str | None) -> list[str]:
    if pod:
        return [resolve_pod(client, namespace, pod)]
    if not selector:
        raise UsageError("give a pod name or -l SELECTOR",
                         "e.g. remora logs -n demo-to -l web=server")
    match = selectors.parse(selector)
    return [p["metadata"]["name"] for p in client.get("Pod", namespace)
            if match(p["metadata"].get("labels") or {})
            and "deletionTimestamp" not in p["metadata"]]


def follow_logs(paths: list[Path], tail: int | None) -> None:
    def pump(path: Path) -> None:
        first = True
        for chunk in follow(path):
            if first and tail is not None:
                lines = chunk.splitlines(keepends=True)
                chunk = b"".join(lines[len(lines) - tail:]) if tail else b""
            first = False
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()

    threads = [threading.Thread(target=pump, args=(p,), daemon=True) for p in paths]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return
