"""`remora describe`'s Events section, a deployment's head and a pod's start time, as
kubectl describe prints them (describe.go DescribeEvents, DescribeDeployment; the live
comparison of the Events with kubectl's is in tests/netns/test_kubeapi_workflows.py)."""

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


def test_describe_deployment_head_reads_as_kubectls() -> None:
    # kubectl describe deployment's head (describe.go DescribeDeployment): creation time in
    # RFC 1123Z (the node's objects keep seconds), annotations as `key: value`,
    # MinReadySeconds, and RollingUpdateStrategy with the values the rollout uses
    created = NOW - 60
    dep = {"metadata": {"name": "web", "namespace": "demo-to", "creationTimestamp": created,
                        "labels": {"app": "web"}, "annotations": {"team": "a", "z": "b"}},
           "spec": {"replicas": 2, "minReadySeconds": 5,
                    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%"}},
                    "template": {"metadata": {"annotations": {
                        "sidecar.istio.io/interceptionMode": "TPROXY"}}}},
           "status": {}}
    lines = describe.deployment(dep, [], NOW).splitlines()
    assert lines[2:5] == ["CreationTimestamp:      Sat, 05 Dec 2026 11:59:00 +0000",
                          "Labels:                 app=web",
                          "Annotations:            team: a"]
    assert lines[5] == " " * 24 + "z: b"
    assert "MinReadySeconds:        5" in lines
    # maxUnavailable left out: the lab's default 0 (node/controller.py), not the apiserver's
    assert "RollingUpdateStrategy:  0 max unavailable, 50% max surge" in lines
    assert "  Annotations:  sidecar.istio.io/interceptionMode: TPROXY" in lines
    dep["spec"]["strategy"] = {"type": "Recreate"}
    text = describe.deployment(dep, [], NOW)
    assert "StrategyType:           Recreate\n" in text and "RollingUpdateStrategy" not in text


def test_describe_deployment_shows_the_controllers_revision_annotation() -> None:
    # kubectl describe prints deployment.kubernetes.io/revision among the annotations
    # (the controller writes it on the Deployment; the lab's API serves it): it was
    # "Annotations: <none>" for the seed's server, beside kubectl's "revision: 2"
    from remora.node import controller

    dep = {"metadata": {"name": "web", "namespace": "demo-to", "creationTimestamp": NOW,
                        "annotations": {"team": "a"}},
           "spec": {"replicas": 1, "template": {"metadata": {"labels": {"app": "web"}}}},
           "status": {}}
    old = {"metadata": {"labels": {"app": "web"}, "annotations": {"x": "1"}}}
    dep["remora"] = {"revisions": [
        {"hash": "0ld", "revision": 1, "template": old},
        {"hash": controller.template_hash(dep), "revision": 2,
         "template": dep["spec"]["template"]}]}
    lines = describe.deployment(dep, [], NOW).splitlines()
    assert lines[4:6] == ["Annotations:            deployment.kubernetes.io/revision: 2",
                          " " * 24 + "team: a"]
    del dep["remora"]  # no numbered template yet: only the object's own
    assert "Annotations:            team: a" in describe.deployment(dep, [], NOW).splitlines()


def test_describe_pod_start_time_in_rfc1123z() -> None:
    pod = {"metadata": {"name": "p", "namespace": "demo-to",
                        "creationTimestamp": "2026-12-05T11:58:00Z"}, "spec": {}, "status": {}}
    assert "Start Time:       Sat, 05 Dec 2026 11:58:00 +0000\n" in describe.pod(pod, NOW)
