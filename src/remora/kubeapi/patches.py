"""The PATCH bodies the API accepts, by Content-Type (pure):

- application/strategic-merge-patch+json: Kubernetes' strategic merge (merge keys of
  k8s.io/api, remora.resources.patch), what `kubectl patch` and client-side
  `kubectl apply` send for built-in kinds;
- application/merge-patch+json: RFC 7386 JSON merge patch (kubectl's choice for CRDs);
- application/json-patch+json: RFC 6902 JSON patch (`kubectl patch --type json`);
- application/apply-patch+yaml: server-side apply, handled by managed_fields.py (the
  field manager: managedFields, removal of fields no longer applied, conflicts);
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from remora.kubeapi.messages import ApiError
from remora.resources.patch import strategic_merge

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"
TYPES = (STRATEGIC, MERGE, JSON_PATCH, APPLY)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"json patch: path {path!r} does not start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for part in parts[:-1]:
        try:
            cur = cur[int(part)] if isinstance(cur, list) else cur[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiError(422, f"json patch: path {path!r} does not exist") from None
    return cur


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    try:
        return parent[int(parts[-1])] if isinstance(parent, list) else parent[parts[-1]]
    except (KeyError, IndexError, ValueError, TypeError):
        raise ApiError(422, f"json patch: path {path!r} does not exist") from None


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    parent = _parent(doc, parts, path)
    try:
        return parent.pop(int(parts[-1]) if isinstance(parent, list) else parts[-1])
    except (KeyError, IndexError, ValueError):
        raise ApiError(422, f"json patch: cannot remove {path!r}: it does not exist") from None


def _add(doc: Any, path: str, value: Any, replace: bool = False) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last) if last.isdigit() else -1
        if not 0 <= index <= len(parent) - (1 if replace else 0):
            raise ApiError(422, f"json patch: index {last!r} out of range in {path!r}")
        if replace:
            parent[index] = value
        else:
            parent.insert(index, value)
    elif isinstance(parent, dict):
        if replace and last not in parent:
            raise ApiError(422, f"json patch: cannot replace {path!r}: it does not exist")
        parent[last] = value
    else:
        raise ApiError(422, f"json patch: {path!r} is inside a scalar")
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test."""
    if not isinstance(ops, list):
        raise ApiError(400, "json patch: the body must be a JSON array of operations")
    out = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(400, f"json patch: operation {op!r} needs op and path")
        kind, path = op["op"], op["path"]
        if kind == "add":
            out = _add(out, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(out, path)
        elif kind == "replace":
            out = _add(out, path, copy.deepcopy(op.get("value")), replace=True)
        elif kind in ("move", "copy"):
            value = _get(out, op.get("from", ""))
            if kind == "move":
                _remove(out, op["from"])
            out = _add(out, path, copy.deepcopy(value))
        elif kind == "test":
            if _get(out, path) != op.get("value"):
                raise ApiError(422, f"json patch: test of {path!r} failed")
        else:
            raise ApiError(400, f"json patch: unknown operation {kind!r}")
    return out


def apply_patch(content_type: str, current: dict[str, Any], body: bytes) -> dict[str, Any]:
    """CURRENT with the patch BODY of CONTENT_TYPE applied."""
    kind = content_type.split(";")[0].strip().lower()
    try:
        patch = yaml.safe_load(body.decode() or "null")  # JSON is YAML
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the patch body cannot be read: {' '.join(str(exc).split())}") \
            from None
    if kind == JSON_PATCH:
        result = json_patch(current, patch)
    elif kind not in TYPES:
        raise ApiError(415, f"the patch type {kind!r} is not supported: use one of "
                       f"{', '.join(TYPES)}")
    elif not isinstance(patch, dict):
        raise ApiError(400, "the patch must be a JSON object")
    elif kind == MERGE:
        result = merge_patch(current, patch)
    else:
        result = strategic_merge(current, patch)
    if not isinstance(result, dict):
        raise ApiError(422, "the patched object is not a JSON object")
    return result


def duplicate_keys(body: bytes) -> list[str]:
    """The keys a YAML (or JSON) body gives twice in one map, as go-yaml's strict
    decoding reports them (`line 10: key "paused" already set in map`, the line of the
    second one); [] for a body that does not parse (its error is reported elsewhere)."""
    try:
        root = yaml.compose(body.decode() or "null", Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError):
        return []
    out: list[str] = []
    stack = [root] if root is not None else []
    while stack:
        n = stack.pop()
        if isinstance(n, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in n.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        out.append(f"line {key.start_mark.line + 1}: key "
                                   f'"{key.value}" already set in map')
                    seen.add(key.value)
                stack.append(value)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
    return sorted(out, key=lambda s: int(s.split(":")[0].split()[1]))
