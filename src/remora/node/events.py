"""Events as Kubernetes records them: core/v1 Event objects written by the lab's
controllers and its kubelet at the moments theirs write them, kept in the node store.

What a cluster does, and the lab with it:

- Each event is its own object, named `<involved object>.<hex nanoseconds>` as client-go's
  recorder names it (tools/record/event.go, makeEvent), with `source`, `involvedObject`
  (kind, namespace, name, uid, apiVersion, fieldPath), `reason`, `message`, `type`,
  `firstTimestamp`, `lastTimestamp` and `count`.
- A repeat of an event (same source, object, type, reason and message: client-go's
  getEventKey in tools/record/events_cache.go) is not a new object: the recorder's
  eventLogger bumps `count` and `lastTimestamp` of the first one (a crash-looping
  container's `Started` goes "x5 over 2m" in `kubectl describe`).
- The recorder's spam filter (EventSourceObjectSpamFilter: a token bucket per source and
  object, burst 25, refilled one token per 5 minutes) drops what an object's source
  records beyond that, repeats included.
- kube-apiserver keeps an event for `--event-ttl` (default 1h) after its last write; the
  lab forgets it then too. As a bound the apiserver does not have, at most MAX_EVENTS are
  kept (the least recently seen go first), so a lab whose Deployments churn for hours
  cannot grow its store without end.

Events live in the node store (SQLite) beside the objects, as kube-apiserver keeps them
in etcd: they outlive the object they are about (a deleted pod's `Killing`) and a
restart of the daemon. The spam filter's buckets are in memory, as they are in each
client's recorder.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from remora.node.store import Store
from remora.resources.rfc3339 import format_time, parse_time

TTL = 3600.0  # kube-apiserver --event-ttl's default
MAX_EVENTS = 2000
SPAM_BURST = 25  # client-go's defaultSpamBurst
SPAM_REFILL = 300.0  # seconds per token: defaultSpamQPS = 1/300
_BUCKETS_KEPT = 4096  # buckets beyond this are dropped once full again


@dataclass(frozen=True)
class Involved:
    """An event's involvedObject (an ObjectReference)."""

    kind: str
    namespace: str
    name: str
    uid: str
    api_version: str = "v1"
    field_path: str = ""

    def reference(self) -> dict[str, str]:
        out = {"kind": self.kind, "namespace": self.namespace, "name": self.name,
               "uid": self.uid, "apiVersion": self.api_version}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out




class EventRecorder:
    """Records events into STORE (thread-safe: the reconciler records, the API lists)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time,
                 ttl: float = TTL, cap: int = MAX_EVENTS) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self.cap = cap
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # spam key -> (tokens, at)

    def record(self, involved: Involved, reason: str, message: str, *,
               type_: str = "Normal", component: str, host: str = "") -> bool:
        """Record one occurrence; False if the spam filter dropped it."""
        now = self.clock()
        source = {"component": component, **({"host": host} if host else {})}
        with self._lock:
            if not self._allow(json.dumps([source, involved.reference()], sort_keys=True),
                               now):
                return False
            key = hashlib.sha256(json.dumps(
                [source, involved.reference(), type_, reason, message],
                sort_keys=True).encode()).hexdigest()
            body = self.store.event_by_key(key)
            if body is not None and _seen(body) >= now - self.ttl:
                body["count"] = int(body.get("count") or 1) + 1
                body["lastTimestamp"] = format_time(now)
            else:
                name = f"{involved.name}.{time.time_ns():x}"
                body = {"apiVersion": "v1", "kind": "Event",
                        "metadata": {"name": name, "namespace": involved.namespace or
                                     "default", "creationTimestamp": format_time(now),
                                     "uid": str(uuid.uuid4())},
                        "involvedObject": involved.reference(), "reason": reason,
                        "message": message, "source": source, "type": type_,
                        "firstTimestamp": format_time(now),
                        "lastTimestamp": format_time(now), "count": 1,
                        "eventTime": None, "reportingComponent": component,
                        "reportingInstance": host}
            self.store.put_event(key, body, now)
            self.store.prune_events(now - self.ttl, self.cap)
            return True

    def list(self) -> list[dict[str, Any]]:
        """The events within their TTL, oldest first."""
        self.store.prune_events(self.clock() - self.ttl, self.cap)
        return self.store.list_events()

    def _allow(self, key: str, now: float) -> bool:
        tokens, at = self._buckets.get(key, (float(SPAM_BURST), now))
        tokens = min(float(SPAM_BURST), tokens + (now - at) / SPAM_REFILL)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > _BUCKETS_KEPT:  # a full bucket is the same as none
            full = (SPAM_BURST - 1) * SPAM_REFILL
            for k in [k for k, (_, t) in self._buckets.items() if now - t >= full]:
                del self._buckets[k]
        return True


def _seen(body: dict[str, Any]) -> float:
    return parse_time(body.get("lastTimestamp") or "") or 0.0
