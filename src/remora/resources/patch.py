"""`kubectl patch` for the lab: strategic-merge patches of Deployments (and any object).

Kubernetes' strategic merge patch: maps merge key by key, scalars and most lists are
replaced, ``null`` deletes a key, and lists that the API marks with a patch merge key
are merged item by item on that key (containers by name, container ports by
containerPort, env by name, Service ports by port). A ``$patch: delete`` item removes
the matching element; ``$patch: replace`` on a map replaces it whole.
Reference: https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/
and k8s.io/apimachinery/pkg/util/strategicpatch.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml

from remora.errors import RemoraError
from remora.resources.loader import parse_object, yaml_problem
from remora.resources.objects import Object, ref

# Field name -> patch merge key, as `patchMergeKey` tags in k8s.io/api (core/v1, apps/v1).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "ports": "containerPort",  # container ports; Service ports are handled by the caller path
}


def strategic_merge(base: Any, patch: Any, field: str = "", service_spec: bool = False) -> Any:
    """The result of applying ``patch`` to ``base`` (neither is modified)."""
    if isinstance(patch, dict) and isinstance(base, dict):
        if patch.get("$patch") == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if key.startswith("$"):
                continue
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key,
                                           service_spec=service_spec or key == "spec")
            else:
                out[key] = _strip_directives(value)
        return out
    if isinstance(patch, list) and isinstance(base, list):
        key = MERGE_KEYS.get(field)
        if field == "ports" and service_spec and all(isinstance(i, dict) and "port" in i
                                                     for i in base + patch):
            key = "port"
        if key is None or not all(isinstance(i, dict) for i in base + patch):
            return _strip_directives(patch)
        return _merge_list(base, patch, key)
    return _strip_directives(patch)


def _merge_list(base: list[Any], patch: list[Any], key: str) -> list[Any]:
    out = [copy.deepcopy(i) for i in base]
    for item in patch:
        if key not in item:
            raise RemoraError(f"patch: list item {json.dumps(item)} has no merge key {key!r}",
                              f"name the element to patch with {key}")
        index = next((i for i, cur in enumerate(out) if cur.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del out[index]
        elif index is None:
            out.append(_strip_directives(item))
        else:
            out[index] = strategic_merge(out[index], item)
    return out


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items()
                if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy.deepcopy(value)


def parse_patch(text: str) -> dict[str, Any]:
    """The -p argument: JSON, or YAML as kubectl also accepts."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RemoraError(f"patch is not valid JSON or YAML: {yaml_problem(exc)}",
                          "give a JSON object, e.g. '{\"spec\":{\"replicas\":2}}'") from exc
    if not isinstance(value, dict):
        raise RemoraError("patch must be a JSON object",
                          "give a JSON object, e.g. '{\"spec\":{\"replicas\":2}}'")
    return value


def apply_patch(obj: Object, patch: str | dict[str, Any]) -> tuple[Object, list[str]]:
    """``obj`` with the strategic-merge ``patch`` applied, validated like a new manifest.

    Returns the new object and its warnings; raises ``RemoraError`` (nothing changed) when
    the result is invalid or the patch renames the object.
    """
    body = parse_patch(patch) if isinstance(patch, str) else patch
    merged = strategic_merge(obj.to_dict(), body)
    new, warnings = parse_object(merged, f"patch of {ref(obj)}")
    if new is None or ref(new) != ref(obj):
        raise RemoraError(f"patch of {ref(obj)} changes its kind, name or namespace",
                          "patch the fields of the object, not its identity")
    return new, warnings
