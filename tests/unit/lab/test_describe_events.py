"""`remora describe`'s Events section and strategy line, as kubectl describe prints them
(describe.go DescribeEvents; the live comparison with kubectl is in
tests/netns/test_kubeapi_workflows.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from remora.lab import describe
from remora.node import naming

NOW = dt.datetime(2026, 12, 5, 12, 0, 0, tzinfo=dt.UTC).timestamp()


def _at(seconds_ago: int) -> str:
    return dt.datetime.fromtimestamp(NOW - seconds_ago, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _event(kind: str, name: str, uid: str, reason: str, message: str, first: int, last: int,
           count: int = 1, type_: str = "Normal", component: str = "kubelet") -> dict[str, Any]:
    return {"involvedObject": {"kind": kind, "namespace": "demo-to", "name": name, "uid": uid},
            "reason": reason, "message": message, "type": type_, "count": count,
            "firstTimestamp": _at(first), "lastTimestamp": _at(last),
            "source": {"component": component, "host": "remora-node-1"}}


def test_a_pods_events_by_last_seen_with_repeats_counted() -> None:
    events = [
        _event("Pod", "web", "u1", "BackOff", "Back-off restarting failed container app",
               100, 5, count=4, type_="Warning"),
        _event("Pod", "web", "u1", "Scheduled", "Successfully assigned demo-to/web to n1",
               130, 130, component="default-scheduler"),
        _event("Pod", "web", "old-uid", "Started", "an earlier pod of the same name", 900, 900),
        _event("Pod", "other", "u2", "Started", "another pod", 10, 10),
    ]
    lines = describe.events(events, "Pod", "demo-to", "web", "u1", NOW)
    assert lines == [
        "Events:",
        "  Type     Reason     Age                From               Message",
        "  ----     ------     ----               ----               -------",
        "  Normal   Scheduled  2m10s              default-scheduler  Successfully assigned "
        "demo-to/web to n1",
        "  Warning  BackOff    5s (x4 over 100s)  kubelet            Back-off restarting "
        "failed container app",
    ]
    assert [line.split()[1] for line in lines[3:]] == ["Scheduled", "BackOff"]
    assert describe.events(events, "Pod", "demo-to", "gone", "u9", NOW) == ["Events:  <none>"]


def test_describe_pod_and_deployment_end_with_their_events() -> None:
    created = "2026-12-05T11:58:00Z"
    dep = {"metadata": {"name": "web", "namespace": "demo-to", "creationTimestamp": created},
           "spec": {"replicas": 2, "strategy": {"type": "Recreate"}, "template": {}},
           "status": {}}
    uid = naming.object_uid("Deployment", "demo-to", "web", created)
    scaled = _event("Deployment", "web", uid, "ScalingReplicaSet",
                    "Scaled up replica set web-abc to 2", 60, 60,
                    component="deployment-controller")
    text = describe.deployment(dep, [], NOW, [scaled])
    assert "StrategyType:           Recreate\n" in text
    assert text.endswith("  Normal  ScalingReplicaSet  60s   deployment-controller  "
                         "Scaled up replica set web-abc to 2\n")
    pod = {"metadata": {"name": "web-abc-1", "namespace": "demo-to", "uid": "p1"},
           "spec": {}, "status": {}}
    assert describe.pod(pod, NOW, []).endswith("Events:  <none>\n")
    assert "Events" not in describe.pod(pod, NOW)  # no events asked for: no section
