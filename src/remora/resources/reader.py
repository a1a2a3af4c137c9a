"""Field-by-field reading of one manifest object, with paths for warnings and errors.

Every message reader takes its fields through ``Node``: a field read is known; a field
named in ``ignore`` is known but has no effect in the lab (``resources``, ``strategy``);
whatever is left is reported once as a warning naming its path. Bad values raise a
``RemoraError`` naming the object (kind/namespace/name), the field path and what is wrong.
"""

from __future__ import annotations

import re
from typing import Any

from remora.errors import RemoraError

# Kubernetes' DNS-1123 label (names of Namespaces, containers, ports) and subdomain
# (names of Deployments, Pods): k8s.io/apimachinery/pkg/util/validation.
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Label keys: optional DNS prefix + "/" + name of [A-Za-z0-9._-], 63 characters at most.
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class ObjectError(RemoraError):
    """An invalid manifest object: ``obj`` is kind/namespace/name, ``path`` the field."""

    def __init__(self, obj: str, path: str, what: str, fix: str) -> None:
        super().__init__(f"{obj}: {path}: {what}" if path else f"{obj}: {what}", fix)
        self.obj = obj
        self.path = path
        self.what = what


class Context:
    """Who is being read (for messages) and the warnings collected so far."""

    def __init__(self, obj: str) -> None:
        self.obj = obj
        self.warnings: list[str] = []

    def error(self, path: str, what: str, fix: str) -> ObjectError:
        # FIX is required: every manifest error says what to do about it (errors.py)
        return ObjectError(self.obj, path, what, fix)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "object"}.get(type(value), type(value).__name__)


class Node:
    """One mapping in the manifest, at ``path`` (``spec.template.spec.containers[0]``)."""

    def __init__(self, ctx: Context, value: Any, path: str, ignore: tuple[str, ...] = ()) -> None:
        if not isinstance(value, dict):
            raise ctx.error(path, f"expected an object, got {_type_name(value)}",
                            f"write {path or 'it'} as a YAML mapping (key: value lines)")
        self.ctx = ctx
        self.value: dict[str, Any] = value
        self.path = path
        self._seen: set[str] = set(ignore)

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str) -> Any:
        self._seen.add(key)
        return self.value.get(key)

    def has(self, key: str) -> bool:
        return self.value.get(key) is not None

    def node(self, key: str, ignore: tuple[str, ...] = (), required: bool = False) -> Node | None:
        value = self.raw(key)
        if value is None:
            if required:
                raise self.ctx.error(self.sub(key), "required field is missing",
                                     f"add {self.sub(key)}")
            return None
        return Node(self.ctx, value, self.sub(key), ignore)

    def string(self, key: str, default: str = "", required: bool = False) -> str:
        value = self.raw(key)
        if value is None or value == "":
            if required:
                raise self.ctx.error(self.sub(key), "required field is missing",
                                     f"add {self.sub(key)} (a non-empty string)")
            return default
        if not isinstance(value, str):
            raise self.ctx.error(self.sub(key), f"expected a string, got {_type_name(value)} "
                                                f"{value!r}", "quote the value in YAML")
        return value

    def integer(self, key: str, default: int, minimum: int | None = None,
                maximum: int | None = None) -> int:
        value = self.raw(key)
        if value is None:
            return default
        return self.check_int(value, self.sub(key), minimum, maximum)

    def check_int(self, value: Any, path: str, minimum: int | None = None,
                  maximum: int | None = None, what: str = "a number") -> int:
        """VALUE as an integer in [MINIMUM, MAXIMUM]; WHAT names it in the fix ("a port")."""
        if minimum is not None and maximum is not None:
            fix = f"use {what} between {minimum} and {maximum}"
        elif minimum is not None:
            fix = f"use {what} of at least {minimum}"
        else:
            fix = f"use {what}" + (f" of at most {maximum}" if maximum is not None else "")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.ctx.error(path, f"expected an integer, got {_type_name(value)} {value!r}",
                                 f"{fix}, unquoted")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self.ctx.error(path, f"{value} is out of range {minimum}-{maximum}", fix)
        return value

    def port(self, key: str, required: bool = True) -> int:
        value = self.raw(key)
        if value is None:
            if required:
                raise self.ctx.error(self.sub(key), "required field is missing",
                                     "give a port number 1-65535")
            return 0
        return self.check_int(value, self.sub(key), 1, 65535, what="a port")

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.raw(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.ctx.error(self.sub(key), f"expected a list of strings, got "
                                                f"{_type_name(value)}",
                                 f'write it as a YAML list: {key}: ["a", "b"]')
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.ctx.error(f"{self.sub(key)}[{i}]", f"expected a string, got "
                                     f"{_type_name(item)} {item!r}", "quote the value in YAML")
        return tuple(value)

    def items(self, key: str) -> list[tuple[str, Any]]:
        """A list field: (path of item, item)."""
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.ctx.error(self.sub(key), f"expected a list, got {_type_name(value)}",
                                 f"write {key} as a YAML list (lines starting with '- ')")
        return [(f"{self.sub(key)}[{i}]", item) for i, item in enumerate(value)]

    def string_map(self, key: str, labels: bool = False) -> dict[str, str]:
        value = self.raw(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.ctx.error(self.sub(key), f"expected a map of strings, got "
                                                f"{_type_name(value)}",
                                 f'write {key} as a YAML mapping: {key}: {{name: "value"}}')
        out: dict[str, str] = {}
        for k, v in value.items():
            path = f"{self.sub(key)}.{k}"
            if not isinstance(v, str):
                raise self.ctx.error(path, f"expected a string, got {_type_name(v)} {v!r}",
                                     f'quote the value in YAML: {k}: "{v}"')
            if labels:
                check_label(self.ctx, path, str(k), v)
            out[str(k)] = v
        return out

    def done(self) -> None:
        for key in self.value:
            if key not in self._seen:
                self.ctx.warnings.append(f"{self.ctx.obj}: unknown field {self.sub(key)} "
                                         f"(ignored)")


def check_label(ctx: Context, path: str, key: str, value: str) -> None:
    prefix, _, name = key.rpartition("/")
    if (prefix and not DNS1123_SUBDOMAIN.match(prefix)) or len(name) > 63 \
            or not LABEL_NAME.match(name):
        raise ctx.error(path, f"invalid label key {key!r}",
                        "use an optional DNS prefix and '/', then 1-63 characters of "
                        "alphanumerics and -_. that start and end alphanumeric")
    if len(value) > 63 or not LABEL_VALUE.match(value):
        raise ctx.error(path, f"invalid label value {value!r} (63 characters at most, "
                              "alphanumerics and -_. inside)",
                        "use at most 63 alphanumerics and -_. that start and end alphanumeric, "
                        "or an empty string")


def check_name(ctx: Context, path: str, name: str, label: bool) -> None:
    pattern = DNS1123_LABEL if label else DNS1123_SUBDOMAIN
    limit = 63 if label else 253
    if len(name) > limit or not pattern.match(name):
        kind = "DNS-1123 label" if label else "DNS-1123 subdomain"
        raise ctx.error(path, f"invalid name {name!r}: must be a {kind} (lower-case "
                              f"alphanumerics and '-', {limit} characters at most)",
                        f"rename it to lower-case alphanumerics and '-', e.g. "
                        f"{_suggest(name, label)!r}")


def _suggest(name: str, label: bool) -> str:
    """NAME made into a valid DNS-1123 name (for the fix text of an invalid one)."""
    allowed = "-" if label else "-."
    out = "".join(c if (c.isalnum() and c.isascii()) or c in allowed else "-"
                  for c in name.lower())
    return out.strip("-.")[:63 if label else 253].strip("-.") or "name"
