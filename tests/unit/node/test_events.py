"""The node's event recorder (remora.node.events) over a real store: client-go's
aggregation of repeats, its spam filter, kube-apiserver's TTL, and the lab's cap."""

from __future__ import annotations

from pathlib import Path

from remora.node import events
from remora.node.events import EventRecorder, Involved
from remora.node.store import Store

POD = Involved("Pod", "demo", "web-1", "u-1", field_path="spec.containers{app}")


class Clock:
    def __init__(self, now: float = 2e9) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_repeat_counts_on_the_first_event(tmp_path: Path) -> None:
    clock = Clock()
    rec = EventRecorder(Store(tmp_path / "s.db"), clock)
    rec.record(POD, "Started", "Started container app", component="kubelet", host="n1")
    clock.now += 60
    rec.record(POD, "Started", "Started container app", component="kubelet", host="n1")
    rec.record(POD, "BackOff", "Back-off restarting failed container app", type_="Warning",
               component="kubelet", host="n1")
    got = rec.list()
    assert [(e["reason"], e["count"]) for e in got] == [("Started", 2), ("BackOff", 1)]
    started = got[0]
    assert started["firstTimestamp"] == "2033-05-18T03:33:20Z"
    assert started["lastTimestamp"] == "2033-05-18T03:34:20Z"
    assert started["metadata"]["name"].startswith("web-1.")
    assert started["metadata"]["namespace"] == "demo"
    assert started["involvedObject"] == {"kind": "Pod", "namespace": "demo", "name": "web-1",
                                         "uid": "u-1", "apiVersion": "v1",
                                         "fieldPath": "spec.containers{app}"}
    assert started["source"] == {"component": "kubelet", "host": "n1"}
    # another incarnation of the pod (another uid) is another object: its own event
    rec.record(Involved("Pod", "demo", "web-1", "u-2"), "Started", "Started container app",
               component="kubelet", host="n1")
    assert [e["count"] for e in rec.list()] == [2, 1, 1]


def test_events_outlive_their_object_for_the_ttl_only(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "s.db")
    rec = EventRecorder(store, clock)
    rec.record(POD, "Killing", "Stopping container app", component="kubelet")
    clock.now += events.TTL - 1
    # kept in the store: a new recorder (a restarted daemon) lists it
    assert [e["reason"] for e in EventRecorder(store, clock).list()] == ["Killing"]
    clock.now += 2
    assert rec.list() == []


def test_a_crash_loop_is_bounded(tmp_path: Path) -> None:
    clock = Clock()
    rec = EventRecorder(Store(tmp_path / "s.db"), clock, cap=30)
    # distinct messages (no aggregation): the spam filter stops the object's source at
    # its burst of 25, repeats included, and lets one more through every 5 minutes
    for i in range(100):
        rec.record(POD, "Unhealthy", f"probe failed {i}", type_="Warning",
                   component="kubelet", host="n1")
    assert len(rec.list()) == events.SPAM_BURST
    clock.now += events.SPAM_REFILL
    assert rec.record(POD, "Unhealthy", "probe failed again", component="kubelet",
                      host="n1")
    assert not rec.record(POD, "Unhealthy", "and again", component="kubelet", host="n1")
    # another object has its own bucket; the cap keeps the most recently seen
    for i in range(10):
        rec.record(Involved("Pod", "demo", f"other-{i}", f"o-{i}"), "Started", "s",
                   component="kubelet")
    kept = rec.list()
    assert len(kept) == 30
    assert kept[-1]["involvedObject"]["name"] == "other-9"
