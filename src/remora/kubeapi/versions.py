"""resourceVersions for objects the store keeps without one, and the watch events between
two reads (pure, but for one lock).

An object's resourceVersion changes exactly when its served content changes: each read
stamps every object with the version at which its content was first seen, from one
counter for all kinds (started from the clock, so versions keep growing across daemon
restarts). A full read of a kind also records the objects that vanished (tombstones), so a
watch started from a list's version can replay what happened since, as the apiserver's
watch cache does.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

Key = tuple[str, str, str]  # kind, namespace, name
MAX_TOMBSTONES = 2000  # deletions a late watch can still be told about


def key_of(kind: str, obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return kind, str(meta.get("namespace") or ""), str(meta["name"])


def _digest(obj: dict[str, Any]) -> str:
    body = {k: v for k, v in obj.items() if k != "metadata"}
    meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return hashlib.sha256(json.dumps([meta, body], sort_keys=True, default=str)
                          .encode()).hexdigest()


class Versions:
    def __init__(self, start: int | None = None) -> None:
        self._lock = threading.Lock()
        self._counter = start if start is not None else int(time.time() * 1000)
        self._seen: dict[Key, tuple[str, int]] = {}
        self._gone: dict[Key, tuple[int, dict[str, Any]]] = {}
        self._last: dict[Key, dict[str, Any]] = {}

    @property
    def current(self) -> int:
        return self._counter

    def stamp(self, kind: str, objects: list[dict[str, Any]], complete: bool = False) -> int:
        """Set metadata.resourceVersion on OBJECTS (in place); with COMPLETE (every object
        of KIND), record those that are gone. Returns the version of this read."""
        with self._lock:
            keys = set()
            for obj in objects:
                key = key_of(kind, obj)
                keys.add(key)
                digest = _digest(obj)
                seen = self._seen.get(key)
                if seen is None or seen[0] != digest:
                    self._counter += 1
                    seen = (digest, self._counter)
                    self._seen[key] = seen
                    self._gone.pop(key, None)
                obj["metadata"]["resourceVersion"] = str(seen[1])
                self._last[key] = obj
            if complete:
                for key in [k for k in self._seen if k[0] == kind and k not in keys]:
                    del self._seen[key]
                    self._counter += 1
                    last = dict(self._last.pop(key, {"metadata": {"name": key[2]}}))
                    last["metadata"] = {**last["metadata"], "resourceVersion":
                                        str(self._counter)}
                    self._gone[key] = (self._counter, last)
                if len(self._gone) > MAX_TOMBSTONES:  # forget the oldest deletions
                    for old in sorted(self._gone, key=lambda k: self._gone[k][0])[
                            :len(self._gone) - MAX_TOMBSTONES]:
                        del self._gone[old]
            return self._counter

    def deleted_since(self, kind: str, version: int) -> list[dict[str, Any]]:
        with self._lock:
            return [obj for key, (rv, obj) in self._gone.items()
                    if key[0] == kind and rv > version]


def parse_version(text: str) -> int | None:
    """A resourceVersion from a request: None for "" and "0" (start from now, with the
    current objects as ADDED events, as the apiserver does)."""
    if not text or text == "0":
        return None
    try:
        return int(text)
    except ValueError:
        return None


Pair = tuple[dict[str, Any], dict[str, Any]]  # (the node's object, the served object)


def events(before: dict[Key, Pair], after: dict[Key, Pair]) -> list[tuple[str, Pair]]:
    """Watch events from one filtered view of a kind to the next (by served version)."""
    out: list[tuple[str, Pair]] = []
    for key, pair in after.items():
        old = before.get(key)
        if old is None:
            out.append(("ADDED", pair))
        elif old[1]["metadata"].get("resourceVersion") != \
                pair[1]["metadata"].get("resourceVersion"):
            out.append(("MODIFIED", pair))
    out += [("DELETED", pair) for key, pair in before.items() if key not in after]
    return out
