"""Server-side apply and managedFields, as the apiserver's field manager does them (pure).

The apiserver (k8s.io/apimachinery/pkg/util/managedfields, over
sigs.k8s.io/structured-merge-diff) keeps, per object, which *manager* owns which fields:
`metadata.managedFields`, one entry per (manager, operation, apiVersion, subresource),
its fields as a FieldsV1 trie (`{"f:spec": {"f:replicas": {}}}`; `k:{"name":"x"}` for an
item of a list keyed by its map keys, `v:"x"` for a member of a set, `.` for a node that
is itself owned and has owned children).

- An *apply* (PATCH application/apply-patch+yaml) is first turned into a typed value
  against the kind's schema (typeConverter.ObjectToTyped, structuredmerge.go): a field the
  schema does not declare fails the request, whatever `fieldValidation` says, with
  `failed to create typed patch object (NS/NAME; GVK): PATH: field not declared in
  schema` — a plain error, so the apiserver answers 500 with no reason and kubectl prints
  `Error from server: ...`. (fieldValidation only adds the YAML duplicate-key check,
  patch.go applyPatcher.)
- The applied configuration is merged onto the live object (lists by their map keys,
  sets by value, atomic values replaced); the applier's field set becomes the applied
  configuration's; fields it applied last time and no longer applies are removed unless
  another applier owns them (merge/update.go prune).
- Fields the apply changes or adds that another manager owns are conflicts (409,
  `Apply failed with 1 conflict: conflict with "m" using apps/v1: .spec.replicas`)
  unless forced, when they change hands. For the manager `kubectl`, conflicts over
  fields that the client-side last-applied annotation holds with the live value are
  forgiven (lastappliedmanager.go: the upgrade from client-side apply), and the
  annotation is kept in step with the applied configuration (lastappliedupdater.go).
- Any other write (create, update, patch) is an *Update* by its manager
  (`fieldManager`, else the User-Agent up to its first `/`): it takes the fields it
  adds or changes from everyone and keeps those it had.

Kinds without a schema here (the Istio CRDs) are handled as the deduced type of a CRD
without a structural schema: every map granular, every list atomic, nothing refused.
"""

from __future__ import annotations

import calendar
import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from remora.kubeapi import field_validation, openapi
from remora.kubeapi.messages import ApiError

Path = tuple[str, ...]  # FieldsV1 path elements: "f:spec", 'k:{"name":"x"}', 'v:"a"'
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# stripmeta.go: fields no manager owns (the object's identity and what the server sets)
_STRIPPED = {("f:apiVersion",), ("f:kind",), ("f:metadata",)} | {
    ("f:metadata", "f:" + k) for k in ("name", "namespace", "creationTimestamp", "selfLink",
                                       "uid", "clusterName", "generation", "managedFields",
                                       "resourceVersion")}
# key fields the Go types default (`+default="TCP"` on ContainerPort and ServicePort
# protocol): a list item without them is keyed with the default, as smd does
_KEY_DEFAULTS = {"protocol": "TCP"}


# -- the schema ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    """What smd makes of an OpenAPI schema: a struct (named fields), a map, a list (with
    its relationship), a scalar, or `any` (deduced: no schema)."""

    shape: str  # struct | map | list | scalar | any
    atomic: bool = False
    schema: Any = None
    list_type: str = "atomic"  # map | set | atomic
    keys: tuple[str, ...] = ()


def _resolve(schema: Any) -> Any:
    defs = openapi.definitions()
    while isinstance(schema, dict) and "$ref" in schema:
        schema = defs[str(schema["$ref"])[len(openapi.V2_PREFIX):]]
    return schema


# resource.Quantity takes a string or a number (its OpenAPI v3 oneOf, which the
# apiserver's type converter reads): an untyped scalar, as int-or-string is
_UNTYPED = {"type": "untyped"}


def node(schema: Any) -> Node:
    if isinstance(schema, dict) and str(schema.get("$ref", "")).endswith(
            ".api.resource.Quantity"):
        return Node("scalar", True, _UNTYPED)
    s = _resolve(schema)
    if not isinstance(s, dict) or s.get("x-kubernetes-preserve-unknown-fields"):
        return Node("any")
    if "properties" in s:
        return Node("struct", s.get("x-kubernetes-map-type") == "atomic", s)
    if isinstance(s.get("additionalProperties"), dict):
        return Node("map", s.get("x-kubernetes-map-type") == "atomic", s)
    if s.get("type") == "array":
        kind = s.get("x-kubernetes-list-type")
        keys = tuple(s.get("x-kubernetes-list-map-keys") or ())
        if kind is None:
            # no list-type: smd's schemaconv reads the patch strategy
            strategy = str(s.get("x-kubernetes-patch-strategy", ""))
            merge_key = s.get("x-kubernetes-patch-merge-key")
            if "merge" in strategy.split(","):
                kind, keys = ("map", (merge_key,)) if merge_key else ("set", ())
            else:
                kind = "atomic"
        return Node("list", kind == "atomic", s, kind, keys)
    if s.get("type") == "object":
        return Node("any", True, s)  # RawExtension, FieldsV1: atomic
    return Node("scalar", True, s)


def child(n: Node, key: str) -> Node | None:
    """The schema of field KEY of a struct or map; None when undeclared."""
    if n.shape == "any":
        return Node("any")
    if n.shape == "struct":
        prop = n.schema["properties"].get(key)
        return None if prop is None else node(prop)
    if n.shape == "map":
        return node(n.schema["additionalProperties"])
    return None


def item(n: Node) -> Node:
    return node(n.schema.get("items")) if n.schema else Node("any")


def kind_schema(group: str, version: str, kind: str) -> Node:
    name = field_validation._definition_names().get((group, version, kind))
    return Node("any") if name is None else node({"$ref": openapi.V2_PREFIX + name})


# -- paths ---------------------------------------------------------------------------------
def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def item_element(n: Node, value: Any, index: int) -> tuple[str | None, str]:
    """The path element of a list item (listItemToPathElement), or an error."""
    if n.list_type == "map" and n.keys:
        if not isinstance(value, dict):
            return None, f"element {index}: associative list with keys has an element " \
                "that is not a map"
        key = {}
        for k in n.keys:
            if k in value:
                key[k] = value[k]
            elif k in _KEY_DEFAULTS:
                key[k] = _KEY_DEFAULTS[k]
            else:
                return None, (f"element {index}: associative list with keys has an element "
                              f'that omits key field "{k}" (and doesn\'t have default value)')
        return "k:" + _compact(key), ""
    if n.list_type == "set":
        return "v:" + _compact(value), ""
    return f"i:{index}", ""


def path_string(path: Path) -> str:
    """fieldpath.Path.String(): `.spec.containers[name="x"].image`."""
    out = []
    for pe in path:
        kind, text = pe[0], pe[2:]
        if kind == "f":
            out.append("." + text)
        elif kind == "k":
            key = json.loads(text)
            out.append("[" + ",".join(f"{k}={_compact(v)}" for k, v in sorted(key.items()))
                       + "]")
        elif kind == "v":
            out.append(f"[={text}]")
        else:
            out.append(f"[{text}]")
    return "".join(out)


# -- typed values: validation, field sets, merge -----------------------------------------
def validate(n: Node, value: Any, path: str = "") -> list[str]:
    """ObjectToTyped's errors for VALUE (validate.go, atomic values included): an
    undeclared field (smd's validator stops a map at its first one, in Go's random map
    order; here the first by name), a value of the wrong type, list items without their
    key fields or with the same key."""
    errors: list[str] = []
    if value is None or (n.shape == "any" and (n.atomic or not isinstance(value, dict))):
        return errors  # deduced and RawExtension-like values take anything
    if n.shape in ("struct", "map", "any"):
        if not isinstance(value, dict):
            return [f"{path}: expected map, got &{{{field_validation.go_value(value)}}}"]
        undeclared = sorted(k for k in value if child(n, k) is None)
        if undeclared:
            errors.append(f"{path}.{undeclared[0]}: field not declared in schema")
        for k, v in value.items():
            sub = child(n, k)
            if sub is not None:
                errors += validate(sub, v, f"{path}.{k}")
    elif n.shape == "list":
        if not isinstance(value, list):
            return [f"{path}: expected list, got &{{{field_validation.go_value(value)}}}"]
        sub = item(n)
        seen: set[str] = set()
        for i, v in enumerate(value):
            element, problem = item_element(n, v, i)
            if element is None:
                # visitListItems bails out of the list at an item it cannot key
                errors.append(f"{path}: {problem}")
                break
            if element in seen and not element.startswith("i:"):
                errors.append(f"{path}: duplicate entries for key "
                              f"{path_string((element,))}")
            seen.add(element)
            errors += validate(sub, v, path + path_string((element,)))
    else:
        problem = _scalar_problem(str(n.schema.get("type")), n.schema.get("format"), value)
        if problem:
            errors.append(f"{path}: {problem}")
    return errors


def _scalar_problem(kind: str, fmt: Any, value: Any) -> str:
    """validateScalar's refusal of VALUE for a scalar of KIND (numbers' Go type by %T,
    a string's value by %#v of smd's value, a boolean's by %v)."""
    if kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected numeric (int or float), got {_go_type(value)}"
    elif kind == "string" and fmt != "int-or-string":
        if not isinstance(value, str):
            return f"expected string, got &value.valueUnstructured{{Value:{_go_sharp(value)}}}"
    elif kind == "boolean" and not isinstance(value, bool):
        return f"expected boolean, got &{{{field_validation.go_value(value)}}}"
    elif kind not in ("integer", "number", "boolean") and isinstance(value, (dict, list)):
        # int-or-string and Quantity: untyped scalars
        return f"expected any scalar, got &{{{field_validation.go_value(value)}}}"
    return ""


def _go_type(value: Any) -> str:
    """Go's %T of a decoded JSON value (k8s.io/apimachinery/pkg/util/json keeps whole
    numbers int64)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"


def _go_sharp(value: Any) -> str:
    """Go's %#v of a decoded JSON value inside an interface."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "map[string]interface {}{" + ", ".join(
            f"{json.dumps(k)}:{_go_sharp(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[]interface {}{" + ", ".join(_go_sharp(v) for v in value) + "}"
    return field_validation.go_value(value)


def leaves(n: Node, value: Any, prefix: Path = ()) -> Iterator[Path]:
    """ToFieldSet: the paths an applied configuration sets — its scalars, atomic values,
    empty maps, the items of keyed lists and sets."""
    if isinstance(value, dict) and not n.atomic and n.shape in ("struct", "map", "any"):
        if not value:
            yield prefix
        for k, v in value.items():
            sub = child(n, k)
            if sub is None:
                continue
            path = (*prefix, "f:" + k)
            if n.shape != "struct" and isinstance(v, (dict, list)) and v:
                yield path  # tofieldset.go: a map's entry is a member, children or not
            yield from leaves(sub, v, path)
    elif isinstance(value, list) and not n.atomic and n.shape == "list":
        sub = item(n)
        for i, v in enumerate(value):
            element, _ = item_element(n, v, i)
            if element is None:
                continue
            yield (*prefix, element)
            if n.list_type == "map":
                yield from leaves(sub, v, (*prefix, element))
    elif prefix:
        yield prefix


def _is_leaf(n: Node, value: Any) -> bool:
    return not isinstance(value, (dict, list)) or n.atomic or n.shape in ("scalar",) or (
        isinstance(value, list) and n.shape != "list") or (
        isinstance(value, dict) and n.shape not in ("struct", "map", "any"))


def _walk(n: Node, value: Any, prefix: Path = ()) -> Iterator[tuple[Path, bool, Any]]:
    """Every path of VALUE (inner nodes too, PREFIX's first) with whether it is a leaf
    (a scalar or an atomic value, _is_leaf) and its value: what smd's Compare walks."""
    leaf = _is_leaf(n, value)
    if prefix:
        yield prefix, leaf, value
    if leaf:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            sub = child(n, k)
            if sub is not None:
                yield from _walk(sub, v, (*prefix, "f:" + k))
    else:
        sub = item(n)
        for i, v in enumerate(value):
            element, _ = item_element(n, v, i)
            if element is not None:
                yield from _walk(sub, v, (*prefix, element))


def nodes(n: Node, value: Any, prefix: Path = ()) -> dict[Path, Any]:
    """Every path of VALUE (inner nodes too) with its value. Scalars and atomic values
    are leaves."""
    return {p: v for p, _, v in _walk(n, value, prefix)}


@dataclass
class Comparison:
    added: set[Path] = field(default_factory=set)
    removed: set[Path] = field(default_factory=set)
    modified: set[Path] = field(default_factory=set)


def compare(n: Node, old: Any, new: Any) -> Comparison:
    """typed.Compare: paths only in NEW (added), only in OLD (removed), and the leaves
    whose value changed (modified)."""
    before, after = _node_shapes(n, old), _node_shapes(n, new)
    out = Comparison(set(after) - set(before), set(before) - set(after))
    for p in set(before) & set(after):
        (leaf_old, v_old), (leaf_new, v_new) = before[p], after[p]
        if (leaf_old or leaf_new) and v_old != v_new:
            out.modified.add(p)
    return out


def _node_shapes(n: Node, value: Any) -> dict[Path, tuple[bool, Any]]:
    """Every path of VALUE with (a leaf?, the leaf's value; None for an inner node)."""
    return {p: (leaf, v if leaf else None) for p, leaf, v in _walk(n, value)}


def merge(n: Node, live: Any, config: Any) -> Any:
    """typed.Merge of an applied configuration onto the live value."""
    if config is None or live is None or n.atomic:
        return copy.deepcopy(config)
    if isinstance(live, dict) and isinstance(config, dict) and \
            n.shape in ("struct", "map", "any"):
        out = copy.deepcopy(live)
        for k, v in config.items():
            sub = child(n, k) or Node("any")
            out[k] = merge(sub, live.get(k), v)
        return out
    if isinstance(live, list) and isinstance(config, list) and n.shape == "list" and \
            n.list_type in ("map", "set"):
        return _merge_list(n, live, config)
    return copy.deepcopy(config)


def _merge_list(n: Node, live: list[Any], config: list[Any]) -> list[Any]:
    """merge.go visitListItems: the items of both, interleaved as smd does — the
    configuration's order for the items both hold, the live ones it does not name kept
    where they were among them, new ones where the configuration puts them."""
    sub = item(n)
    lpes = [item_element(n, v, i)[0] for i, v in enumerate(live)]
    rpes = [item_element(n, v, i)[0] for i, v in enumerate(config)]
    seen_l: dict[str | None, Any] = {}
    for pe, v in zip(lpes, live, strict=True):
        seen_l.setdefault(pe, v)
    seen_r: dict[str | None, Any] = {}
    for pe, v in zip(rpes, config, strict=True):
        seen_r.setdefault(pe, v)
    shared = [pe for pe in rpes if pe in seen_l]
    next_shared = shared.pop(0) if shared else None
    merged_r: set[str | None] = set()
    out: list[Any] = []
    li = ri = 0
    while li < len(lpes) or ri < len(rpes):
        if li < len(lpes) and ri < len(rpes):
            pe = lpes[li]
            if pe == rpes[ri]:
                merged_r.add(pe)
                out.append(merge(sub, seen_l[pe], seen_r[pe]))
                li += 1
                ri += 1
                next_shared = shared.pop(0) if shared else None
                continue
            if pe in seen_r and next_shared is not None and next_shared != pe:
                li += 1  # a shared item, but not the one wanted this round
                continue
        if li < len(lpes):
            pe = lpes[li]
            if pe not in seen_r:
                out.append(copy.deepcopy(live[li]))
                li += 1
                continue
            if pe in merged_r:
                li += 1
        if ri < len(rpes):
            pe = rpes[ri]
            merged_r.add(pe)
            out.append(merge(sub, seen_l.get(pe), seen_r[pe]))
            ri += 1
            if next_shared is not None and next_shared == pe:
                next_shared = shared.pop(0) if shared else None
    return out


def remove(n: Node, obj: dict[str, Any], path: Path) -> None:
    """Remove the value at PATH (RemoveItems), and the maps left empty above it."""
    trail: list[tuple[Any, Any]] = []
    cur: Any = obj
    sub = n
    for pe in path:
        if isinstance(cur, dict) and pe.startswith("f:"):
            key: Any = pe[2:]
            if key not in cur:
                return
            trail.append((cur, key))
            sub = child(sub, key) or Node("any")
            cur = cur[key]
        elif isinstance(cur, list):
            index = next((i for i, v in enumerate(cur)
                          if item_element(sub, v, i)[0] == pe), None)
            if index is None:
                return
            trail.append((cur, index))
            cur = cur[index]
            sub = item(sub)
        else:
            return
    parent, key = trail.pop()
    del parent[key]
    # a map or list emptied by the removal goes too (Go's omitempty for the maps,
    # slices and optional structs that held it); the object's top-level fields stay
    while not parent and len(trail) > 1:
        parent, key = trail.pop()
        del parent[key]


# -- FieldsV1 -----------------------------------------------------------------------------
def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    """A set of paths as the FieldsV1 trie: `.` marks a member that has children."""
    root: dict[str, Any] = {}
    for p in sorted(paths):
        cur = root
        for pe in p:
            cur = cur.setdefault(pe, {})
    members = set(paths)

    def mark(trie: dict[str, Any], prefix: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if prefix in members and trie:
            out["."] = {}
        for k in sorted(trie):
            out[k] = mark(trie[k], (*prefix, k))
        return out

    return mark(root, ())


def from_fields_v1(trie: dict[str, Any], prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for k, sub in trie.items():
        if k == ".":
            out.add(prefix)
            continue
        path = (*prefix, k)
        if sub:
            out |= from_fields_v1(sub, path)
        else:
            out.add(path)
    return out


# -- managers -----------------------------------------------------------------------------
@dataclass
class Entry:
    manager: str
    operation: str  # Apply | Update
    api_version: str
    fields: set[Path]
    time: float
    subresource: str = ""

    @property
    def ident(self) -> tuple[str, str, str, str]:
        return (self.manager, self.operation, self.api_version, self.subresource)

    def printed(self) -> str:
        """printManager: `"m"`, `"m" using apps/v1` for an Update (the manager's
        identity carries no time)."""
        out = json.dumps(self.manager)
        if self.subresource:
            out += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            out += f" using {self.api_version}"
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"manager": self.manager, "operation": self.operation,
                               "apiVersion": self.api_version,
                               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                     time.gmtime(self.time)),
                               "fieldsType": "FieldsV1",
                               "fieldsV1": to_fields_v1(self.fields)}
        if self.subresource:
            out["subresource"] = self.subresource
        return out


def encode(entries: list[Entry]) -> list[dict[str, Any]]:
    """sortEncodedManagedFields: by operation (Apply first), time, manager, version."""
    ordered = sorted(entries, key=lambda e: (e.operation, int(e.time), e.manager,
                                             e.api_version, e.subresource))
    return [e.to_json() for e in ordered]


def decode(given: Any) -> list[Entry] | None:
    """metadata.managedFields as a write sends them (decodeLiveOrNew): [] (or one empty
    entry) resets them, entries that do not decode are None (the live ones are kept)."""
    if not isinstance(given, list):
        return None
    if not given or given == [{}]:
        return []
    out = []
    for e in given:
        if not isinstance(e, dict) or e.get("operation") not in ("Apply", "Update") or \
                not isinstance(e.get("fieldsV1", {}), dict):
            return None
        try:
            stamp = calendar.timegm(time.strptime(str(e.get("time")), "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            stamp = 0
        out.append(Entry(str(e.get("manager", "")), str(e["operation"]),
                         str(e.get("apiVersion", "")), from_fields_v1(e.get("fieldsV1", {})),
                         stamp, str(e.get("subresource", ""))))
    return out


def manager_name(field_manager: str, user_agent: str) -> str:
    """managerOrUserAgent: the fieldManager, else the User-Agent up to its first `/`."""
    if field_manager:
        return field_manager
    return user_agent.split("/", 1)[0][:128]


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """What field management looks at: the object without its server-set metadata."""
    out = {k: v for k, v in obj.items() if k not in ("status", "apiVersion", "kind")}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items()
            if k not in ("uid", "resourceVersion", "generation", "creationTimestamp",
                         "managedFields", "selfLink")}
    out["metadata"] = meta
    return out


def update(n: Node, entries: list[Entry], live: dict[str, Any] | None,
           new: dict[str, Any], manager: str, api_version: str, now: float,
           subresource: str = "") -> list[Entry]:
    """An Update by MANAGER (Updater.Update): it owns what it added or changed, the
    others lose it, and everyone loses what it removed."""
    if live is None:
        # a create compares with the empty object the Go type makes: its structs are
        # there already, so only what is under them is added
        cmp = Comparison(added={p for p in nodes(n, _content(new))
                                if not _in_zero_object(n, p)})
    else:
        cmp = compare(n, _content(live), _content(new))
    changed = cmp.added | cmp.modified
    out: list[Entry] = []
    mine = Entry(manager, "Update", api_version, set(), now, subresource)
    for e in entries:
        if e.ident == mine.ident:
            mine = Entry(e.manager, e.operation, e.api_version, set(e.fields), e.time,
                         e.subresource)
            continue
        kept = e.fields - changed - cmp.removed
        if kept:
            out.append(Entry(e.manager, e.operation, e.api_version, kept, e.time,
                             e.subresource))
    fields = ((mine.fields - cmp.removed) | changed) - _STRIPPED
    if changed - _STRIPPED:
        # managedfieldsupdater.go: dated when the operation took fields
        mine.time = now
    mine.fields = fields
    if fields:
        out.append(mine)
    return out


def _in_zero_object(n: Node, path: Path) -> bool:
    """Is PATH in the empty object of the kind as Go serialises it (what a create is
    compared with)? Its nested structs (spec, spec.template.spec) and their required
    fields (no omitempty: PodSpec.containers is there as null) are; map keys, list
    items and optional scalars are not. Optional struct pointers (rollingUpdate) are
    taken as structs: their `.` is missing."""
    cur: Node | None = n
    for i, pe in enumerate(path):
        if cur is None or cur.shape != "struct" or not pe.startswith("f:"):
            return False
        name = pe[2:]
        sub = child(cur, name)
        if sub is None:
            return False
        if sub.shape != "struct" or sub.atomic:
            return i == len(path) - 1 and name in (cur.schema.get("required") or ())
        cur = sub
    return True


@dataclass
class Applied:
    obj: dict[str, Any]
    entries: list[Entry]
    changed: bool


def check_patch(n: Node, patch: Any, gvk: tuple[str, str, str], api_version: str) -> None:
    """What the field manager refuses before merging (structuredmerge.go Apply)."""
    if not isinstance(patch, dict):
        raise ApiError(400, "error decoding YAML: the apply configuration must be a map")
    given = str(patch.get("apiVersion") or "")
    if given != api_version:
        raise ApiError(400, "Incorrect version specified in apply patch. Specified patch "
                       f"version: {given}, expected: {api_version}")
    meta: dict[str, Any] = patch["metadata"] if isinstance(patch.get("metadata"), dict) \
        else {}
    if meta.get("managedFields") is not None:
        raise ApiError(400, "metadata.managedFields must be nil")
    # not status: an apply's status is dropped (a status write is the status
    # subresource's), and the lab's served one has its own `remora` fields, which a
    # fetched object applied back carries
    errors = validate(n, {k: v for k, v in patch.items() if k != "status"})
    if errors:
        group, version, kind = gvk
        where = f"{meta.get('namespace') or ''}/{meta.get('name') or ''}; " \
            f"{group}/{version}, Kind={kind}"
        text = errors[0] if len(errors) == 1 else "errors:\n" + "\n".join(
            "  " + e for e in errors)
        # a plain error (not a StatusError): ErrorToAPIStatus makes it a 500 with no
        # reason, which kubectl prints as "Error from server: ..."
        raise ApiError(500, f"failed to create typed patch object ({where}): {text}",
                       reason=None)


def conflict_error(conflicts: list[tuple[Entry, Path]]) -> ApiError:
    """NewConflictError: 409 Conflict, a FieldManagerConflict cause per field."""
    causes = [{"type": "FieldManagerConflict", "message": f"conflict with {e.printed()}",
               "field": path_string(p)} for e, p in conflicts]
    if len(conflicts) == 1:
        e, p = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {e.printed()}: " \
            f"{path_string(p)}"
    else:
        lines = []
        for printed in sorted({e.printed() for e, _ in conflicts}):
            lines.append(f"conflicts with {printed}:")
            lines += [f"- {path_string(p)}" for e, p in conflicts if e.printed() == printed]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return ApiError(409, message, reason="Conflict", details={"causes": causes})


def _allowed_by_last_applied(n: Node, live: dict[str, Any], api_version: str) -> set[Path]:
    """allowedConflictsFromLastApplied: the last-applied annotation's fields whose
    value the live object still has."""
    text = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not text:
        return set()
    try:
        last = json.loads(text)
    except ValueError:
        return set()
    if not isinstance(last, dict) or last.get("apiVersion") != api_version or \
            validate(n, last):
        return set()
    cmp = compare(n, _content(last), _content(live))
    return set(leaves(n, _content(last))) - cmp.modified - cmp.added - cmp.removed


def apply(n: Node, entries: list[Entry], live: dict[str, Any] | None, patch: dict[str, Any],
          manager: str, api_version: str, force: bool, now: float) -> Applied:
    """Server-side apply of PATCH (already checked) by MANAGER onto LIVE (None: create)."""
    base = _content(live) if live is not None else {}
    config = _content(patch)
    merged = merge(n, base, config)
    new_set = set(leaves(n, config)) - _STRIPPED
    last = next((e for e in entries if e.manager == manager and e.operation == "Apply"
                 and not e.subresource), None)
    others = [e for e in entries if e is not last]
    if last is not None and last.fields:
        owned = new_set.union(*(e.fields for e in others if e.operation == "Apply"))
        gone: list[Path] = []
        # parents first: a list item goes with its fields (its key is read from them)
        for p in sorted(last.fields - owned, key=len):
            if not any(q[:len(p)] == p for q in owned) and \
                    not any(p[:len(g)] == g for g in gone):
                remove(n, merged, p)
                gone.append(p)
    cmp = compare(n, base, merged)
    changed = cmp.added | cmp.modified
    conflicts = [(e, p) for e in others for p in sorted(e.fields & changed)]
    if conflicts and not force:
        allowed = _allowed_by_last_applied(n, live, api_version) \
            if manager == "kubectl" and live is not None else set()
        left = [(e, p) for e, p in conflicts if p not in allowed]
        if left:
            raise conflict_error(left)
    out: list[Entry] = []
    for e in others:
        kept = e.fields - changed - cmp.removed
        if kept:
            out.append(Entry(e.manager, e.operation, e.api_version, kept, e.time,
                             e.subresource))
    if manager == "kubectl" and \
            LAST_APPLIED in ((merged.get("metadata") or {}).get("annotations") or {}):
        # lastappliedupdater.go: kubectl's server-side apply keeps the client-side
        # annotation (when the applied object still has it) in step, so a later
        # client-side apply computes from it
        applied = copy.deepcopy(patch)
        (applied.get("metadata") or {}).get("annotations", {}).pop(LAST_APPLIED, None)
        # runtime.Encode of the unstructured object: Go's sorted keys and a newline
        merged.setdefault("metadata", {}).setdefault("annotations", {})[LAST_APPLIED] = \
            json.dumps(applied, separators=(",", ":"), sort_keys=True) + "\n"
    changed_obj = merged != base
    when = now if changed_obj or last is None or last.fields != new_set else last.time
    if new_set:  # a manager left with no fields is dropped (update.go), applier too
        out.append(Entry(manager, "Apply", api_version, new_set, when))
    return Applied(merged, out, changed_obj)
