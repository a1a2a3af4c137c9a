"""`remora label`: kubectl label's argument rules and results, as a pure function.

kubectl label (staging/src/k8s.io/kubectl/pkg/cmd/label/label.go): each argument is
`key=value` (set) or `key-` (remove); setting a key that already has another value is an
error unless --overwrite (`'KEY' already has a value (OLD), and --overwrite is false`);
removing a key that is not there is no error; one command may not both set and remove a
key; the result line is `KIND/NAME labeled`, or `not labeled` when nothing changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from remora.errors import RemoraError, UsageError


@dataclass(frozen=True)
class LabelUpdate:
    labels: dict[str, str]
    changed: bool


def parse(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """(labels to set, keys to remove) from kubectl's `key=value` / `key-` arguments."""
    if not args:
        raise UsageError("at least one label update is required",
                         "give KEY=VALUE to set a label or KEY- to remove it")
    add: dict[str, str] = {}
    remove: list[str] = []
    for arg in args:
        if "=" in arg:
            key, value = arg.split("=", 1)
            if not key:
                raise UsageError(f"invalid label spec: {arg}", "give KEY=VALUE or KEY-")
            add[key] = value
        elif arg.endswith("-") and len(arg) > 1:
            remove.append(arg[:-1])
        else:
            raise UsageError(f"invalid label spec: {arg}", "give KEY=VALUE or KEY-")
    if set(add) & set(remove):
        raise UsageError("can not both modify and remove a label in the same command",
                         "set or remove each key once")
    return add, remove


def update(current: dict[str, str], args: list[str], overwrite: bool) -> LabelUpdate:
    """The labels after `kubectl label ARGS [--overwrite]` on an object with CURRENT."""
    add, remove = parse(args)
    if not overwrite:
        clashes = [f"'{k}' already has a value ({current[k]}), and --overwrite is false"
                   for k, v in add.items() if k in current and current[k] != v]
        if clashes:
            raise RemoraError("; ".join(clashes), "add --overwrite to replace the value")
    out = {k: v for k, v in current.items() if k not in remove}
    out.update(add)
    return LabelUpdate(out, out != current)
