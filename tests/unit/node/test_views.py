"""The pod as `get -o json` shows it: kubectl's READY/STATUS during init, and
Kubernetes' containerStatuses built from the store's rows."""

from __future__ import annotations

from typing import Any

from remora.node import views
from remora.node.store import ContainerRow, PodRow

UID = "0f6c1bd4-5bd7-4d0c-9d4e-3c1a4f1f2b77"


def pod_row(phase: str) -> PodRow:
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "simple-server-1", "namespace": "demo-to"},
        "spec": {"initContainers": [{"name": "istio-init", "image": "istio/proxyv2"}],
                 "containers": [{"name": "demo", "image": "vasth/simple-server"},
                                {"name": "istio-proxy", "image": "istio/proxyv2"}]}}
    return PodRow(uid=UID, namespace="demo-to", name="simple-server-1", node=1,
                  netns="remora-pod-x", body=body, ip="10.20.0.77", phase=phase)


def init_done() -> ContainerRow:
    return ContainerRow(pod_uid=UID, name="istio-init", init=1, pid=40, start_ticks=7,
                        state="Terminated", reason="Completed", exit_code=0, started=1.0)


def running(name: str, pid: int, ready: int = 1, restarts: int = 0) -> ContainerRow:
    return ContainerRow(pod_uid=UID, name=name, pid=pid, start_ticks=1000 + pid,
                        restarts=restarts, state="Running", reason="", started=2.0, ready=ready)


def columns(phase: str, rows: list[ContainerRow]) -> tuple[str, str]:
    r = views.pod_object(pod_row(phase), rows, [])["remora"]
    return r["ready"], r["status"]


def test_ready_and_status_through_init_read_like_kubectl() -> None:
    assert columns("Pending", []) == ("0/2", "Init:0/1")
    running_init = ContainerRow(pod_uid=UID, name="istio-init", init=1, pid=40, start_ticks=7,
                                state="Running", reason="", started=1.0)
    assert columns("Init", [running_init]) == ("0/2", "Init:0/1")
    assert columns("Init", [init_done()]) == ("0/2", "PodInitializing")
    assert columns("Running", [init_done(), running("demo", 50),
                               running("istio-proxy", 51, ready=0)]) == ("1/2", "Running")
