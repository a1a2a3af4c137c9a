"""kubectl's `-l` label selectors: `web=server`, `a==b`, `a!=b`, `a`, `!a`,
`env in (a,b)`, `env notin (a)`, joined by commas (all must hold).
https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors
"""

from __future__ import annotations

import re
from collections.abc import Callable

from remora.errors import UsageError

Requirement = Callable[[dict[str, str]], bool]
_SET = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_KEY = re.compile(r"^[\w./-]+$")


def _split(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _requirement(part: str, text: str) -> Requirement:
    fix = "use KEY=VALUE, KEY!=VALUE, KEY, !KEY or 'KEY in (A,B)', comma-separated"
    m = _SET.match(part)
    if m:
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("!=", "==", "="):
        if op in part:
            key, value = (s.strip() for s in part.split(op, 1))
            if not _KEY.match(key):
                raise UsageError(f"label selector {text!r}: {key!r} is not a label key", fix)
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    if part.startswith("!") and _KEY.match(part[1:].strip()):
        key = part[1:].strip()
        return lambda labels: key not in labels
    if _KEY.match(part):
        return lambda labels: part in labels
    raise UsageError(f"label selector {text!r}: cannot read {part!r}", fix)


def parse(text: str | None) -> Requirement:
    if not text:
        return lambda labels: True
    reqs = [_requirement(p, text) for p in _split(text)]
    return lambda labels: all(r(labels) for r in reqs)
