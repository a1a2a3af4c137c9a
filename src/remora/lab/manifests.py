"""Manifests for the node: read, validate, and check what admission would do, up front.

`remora apply -f` must either apply a whole batch or nothing (kubectl apply's contract,
and issue 4's). The resources layer validates every object; here the lab also runs what
would otherwise fail later inside the daemon, while a pod is being created: Istio's
injection (a bad `sidecar.istio.io/interceptionMode` or `traffic.sidecar.istio.io/*`
annotation) and the image map (an image with no local command). Each problem is one
RemoraError naming the object, the field and the fix, raised before anything is sent.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources as package_files
from pathlib import Path
from typing import Any

from remora.controlplane.adapters import inject_dict
from remora.errors import RemoraError, UsageError
from remora.lab.images import ImageMap
from remora.node import desired
from remora.node.config import DEFAULT_STATE_DIR, lab_command
from remora.resources.loader import (
    documents,
    load_manifests,
    manifest_files,
    object_label,
    parse_object,
    reads_kind,
)
from remora.resources.naming import pod_from_deployment
from remora.resources.objects import Deployment, Object, Pod, ref

SEED_FILES = ("server.yaml", "client.yaml")
# what the lab accepts, for fix hints (remora.resources.loader reads exactly these)
KINDS_READ = "Namespace, Deployment, Service, Pod, PeerAuthentication or AuthorizationPolicy"


@dataclass
class Batch:
    objects: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # objects left out by --validate=strict, each a RemoraError's one line (read())
    refused: list[str] = field(default_factory=list)


# kubectl's --validate (cmdutil.GetValidationDirective): strict (or true) is its default,
# warn, ignore (or false); a value strconv.ParseBool reads counts as true or false
STRICT, WARN, IGNORE = "strict", "warn", "ignore"
_GO_BOOLS = {**dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), STRICT),
             **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), IGNORE)}


def validation(value: str) -> str:
    """--validate VALUE as kubectl reads it: strict, warn or ignore."""
    if value in (STRICT, WARN, IGNORE):
        return value
    if value in _GO_BOOLS:
        return _GO_BOOLS[value]
    # kubectl's own words (exit 1 there, a usage error here)
    raise UsageError(f'invalid - validate option "{value}"; must be one of: strict (or '
                     "true), warn, ignore (or false)", "e.g. --validate=warn")


def _explain_path(kind: str, path: str) -> str:
    """`kubectl explain`'s argument for the fields beside PATH: the kind, lower case, and
    the field path up to PATH's parent, without list indices and map keys."""
    parts = re.sub(r"\[[^\]]*\]", "", path).split(".")[:-1]
    return ".".join([kind.lower(), *parts])


def refusal(source: str, doc: dict[str, Any], paths: list[str]) -> str:
    """The refusal of an object with fields Kubernetes' schema lacks (kubectl apply
    --validate=strict, the apiserver's strict decoding: `Deployment in version "v1"
    cannot be handled as a Deployment: strict decoding error: unknown field "..."`), as
    one line naming the file, the object and the fields."""
    kind = str(doc.get("kind"))
    version = str(doc.get("apiVersion")).rpartition("/")[2]
    unknown = ", ".join(f'unknown field "{p}"' for p in paths)
    return RemoraError(
        f"{source}: {object_label(doc)} not applied: {kind} in version \"{version}\" cannot "
        f"be handled as a {kind}: strict decoding error: {unknown}",
        f"correct or remove the field (`kubectl explain {_explain_path(kind, paths[0])}` "
        "lists the fields there), or pass --validate=warn to apply the object without "
        "the field").one_line()


def seed_text(name: str) -> str:
    """The seed's own manifest, shipped verbatim as package data."""
    return (package_files.files("remora.lab") / "seed" / name).read_text()


def read(paths: list[str], validate: str = IGNORE,
         unknown_fields: Callable[[dict[str, Any]], list[str]] | None = None) -> Batch:
    """Files or directories (every *.yaml/*.yml/*.json), or '-' for stdin.

    VALIDATE (kubectl's --validate) checks each object against Kubernetes' schema
    (UNKNOWN_FIELDS: the paths of an object's fields the schema of its kind lacks) as
    `kubectl apply` has the apiserver do it: STRICT leaves an object with such a field
    out of the batch (Batch.refused says why; the CLI then refuses the whole batch, as its
    apply is all or nothing, where kubectl applies the others, each its own request); WARN
    warns and keeps it without the field, IGNORE says nothing."""
    out = Batch()
    typed: list[Object] = []
    for p in paths:
        sources = [("<stdin>", sys.stdin.read())] if p == "-" else [
            (str(f), f.read_text()) for f in manifest_files(p)]
        for source, text in sources:
            for where, doc in documents(text, source):
                unknown = unknown_fields(doc) if unknown_fields is not None and \
                    reads_kind(doc) else []
                if unknown and validate == STRICT:
                    out.refused.append(refusal(source, doc, unknown))
                    continue
                obj, warnings = parse_object(doc, where)
                if unknown:
                    # the schema's word on a field Kubernetes does not know replaces the
                    # loader's "(ignored)" (a field Kubernetes knows and the lab does not
                    # model keeps it): kubectl's Warning under warn, nothing under ignore
                    warnings = [w for w in warnings if not any(
                        w.endswith(f": unknown field {u} (ignored)") for u in unknown)]
                    if validate == WARN:
                        warnings += [f'{source}: {object_label(doc)}: unknown field "{u}"'
                                     for u in unknown]
                out.warnings += warnings
                if obj is not None:
                    typed.append(obj)
    if not typed and out.refused:
        return out  # every object refused: the caller reports them
    if not typed:
        # e.g. a lone VirtualService: name what was skipped, not only "nothing found"
        unknown = sorted({m.group(1) for w in out.warnings
                          for m in [re.search(r"unknown kind (\S+)", w)] if m})
        what = f": unknown kind {', '.join(unknown)} (skipped)" if unknown else ""
        raise RemoraError(f"no objects found in {', '.join(paths)}{what}",
                          f"give a manifest with {KINDS_READ} objects")
    out.objects = [o.to_dict() for o in typed]
    return out


def from_text(text: str, source: str) -> Batch:
    loaded = load_manifests(text, source)
    return Batch([o.to_dict() for o in loaded.objects], loaded.warnings)


def namespace_objects(batch: list[dict[str, Any]],
                      existing: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Namespaces by name: those already on the node, overridden by those in the batch."""
    known = {n["metadata"]["name"]: n for n in existing}
    known.update({o["metadata"]["name"]: o for o in batch if o.get("kind") == "Namespace"})
    return known


def admission_check(objects: list[dict[str, Any]], namespaces: dict[str, dict[str, Any]],
                    images: ImageMap) -> None:
    """Run injection and the image map on every pod the batch would create."""
    for obj in objects:
        typed, _ = parse_object(obj, f"{obj.get('kind')}/{obj['metadata'].get('name')}")
        pod: Pod
        if isinstance(typed, Deployment):
            pod = pod_from_deployment(typed)
        elif isinstance(typed, Pod):
            pod = typed
        else:
            continue
        where = ref(typed) if typed is not None else "object"
        body = pod.to_dict()
        try:
            admitted = inject_dict(body, namespaces.get(pod.metadata.namespace))
        except RemoraError as exc:
            problem = exc.problem
            sample = f"Pod/{pod.metadata.namespace}/{pod.metadata.name}: "
            if isinstance(typed, Deployment) and problem.startswith(sample):
                # the pod checked is a sample of the template with a made-up name that no
                # pod has: name the field the user wrote instead
                problem = f"spec.template: {problem[len(sample):]}"
            raise RemoraError(f"{where}: {problem}", exc.fix) from None
        for container in (admitted.get("spec") or {}).get("containers") or []:
            if container.get("name") != "istio-proxy":
                images.command(container, where)


# The namespaces a Kubernetes API server always has (remora.node.desired lists them).
BUILTIN_NAMESPACES = desired.BUILTIN_NAMESPACES


def missing_namespaces(objects: list[dict[str, Any]],
                       existing: set[str]) -> dict[str, list[str]]:
    """Namespaces the batch's namespaced objects name that neither exist (EXISTING, the
    built-in ones) nor are created by the batch: namespace -> the objects in it."""
    known = set(BUILTIN_NAMESPACES) | existing | {
        o["metadata"]["name"] for o in objects if o.get("kind") == "Namespace"}
    missing: dict[str, list[str]] = {}
    for obj in objects:
        if obj.get("kind") == "Namespace":
            continue
        ns = obj["metadata"].get("namespace") or "default"
        if ns not in known:
            missing.setdefault(ns, []).append(f"{obj['kind'].lower()}/{obj['metadata']['name']}")
    return missing


def check_namespaces(objects: list[dict[str, Any]], existing: set[str]) -> None:
    """Refuse the whole batch when an object's namespace does not exist, as the API
    server does (`namespaces "NAME" not found`): a namespace made on the fly would lack
    the istio-injection label, and its pods would silently run without sidecars."""
    missing = missing_namespaces(objects, existing)
    if not missing:
        return
    names = sorted(missing)
    quoted = ", ".join(f'"{n}"' for n in names)
    objs = ", ".join(o for n in names for o in missing[n])
    name = names[0] if len(names) == 1 else "NAME"
    raise RemoraError(
        f"namespaces {quoted} not found (needed by {objs}; nothing was applied)",
        f"create {'it' if len(names) == 1 else 'each'} first: `remora create ns {name}`, "
        f"then `remora label ns {name} istio-injection=enabled` for sidecars, or add a "
        "Namespace manifest to the files")


@dataclass(frozen=True)
class Capacity:
    """Room for pods: each node hands out the addresses of its own /24 (remora.node.ipam)."""

    nodes: int
    per_node: int
    max_nodes: int

    @property
    def pods(self) -> int:
        return self.nodes * self.per_node


def _replicas(obj: dict[str, Any]) -> int:
    value = (obj.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def pods_wanted(objects: list[dict[str, Any]],
                existing: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """The pods the lab would run once the batch is applied (every Deployment's replicas
    and every bare Pod, the batch's objects replacing existing ones of the same name),
    and the batch's objects that ask for them, largest first."""
    by_key: dict[tuple[str, str, str], dict[str, Any]] = {}
    for obj in [*existing, *objects]:
        if obj.get("kind") in ("Deployment", "Pod"):
            meta = obj["metadata"]
            by_key[(obj["kind"], meta.get("namespace") or "default", meta["name"])] = obj
    total = sum(_replicas(o) if o["kind"] == "Deployment" else 1 for o in by_key.values())
    asking = sorted((o for o in objects if o.get("kind") == "Deployment"),
                    key=_replicas, reverse=True)
    return total, [f"deployment/{o['metadata']['name']} replicas: {_replicas(o)}"
                   for o in asking if _replicas(o) > 1]


def check_capacity(objects: list[dict[str, Any]], existing: list[dict[str, Any]],
                   room: Capacity, state_dir: Path = DEFAULT_STATE_DIR) -> None:
    """Refuse a batch that needs more pod addresses than the lab's nodes have: those pods
    would stay Pending for ever (and starting hundreds at once would swamp the host)."""
    wanted, asking = pods_wanted(objects, existing)
    if wanted <= room.pods:
        return
    need = -(-wanted // room.per_node)
    fix = (f"start the lab with more nodes: `{lab_command('down', state_dir)}`, then "
           f"`{lab_command(f'up --nodes {need}', state_dir)}` ({room.per_node} pods each)"
           if need <= room.max_nodes else
           f"at most {room.max_nodes * room.per_node} pods fit in {room.max_nodes} nodes")
    raise RemoraError(
        f"the lab has room for {room.pods} pods ({room.nodes} node(s) x {room.per_node} "
        f"addresses of its /24) and this would make {wanted}"
        + (f" ({asking[0]})" if asking else "") + "; nothing was applied",
        f"lower the replicas, or {fix}")


def names_namespaces(objects: list[dict[str, Any]]) -> list[str]:
    return sorted({o["metadata"].get("namespace", "default") for o in objects
                   if o.get("kind") != "Namespace"} |
                  {o["metadata"]["name"] for o in objects if o.get("kind") == "Namespace"})


def deployments(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(namespace, name) of the batch's Deployments, which --wait must see rolled out."""
    return [(o["metadata"].get("namespace", "default"), o["metadata"]["name"])
            for o in objects if o.get("kind") == "Deployment"]


def bare_pods(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(namespace, name) of the batch's Pod objects, which --wait must see Ready."""
    return [(o["metadata"].get("namespace", "default"), o["metadata"]["name"])
            for o in objects if o.get("kind") == "Pod"]


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}
