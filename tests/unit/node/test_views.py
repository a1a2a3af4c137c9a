"""The pod as `get -o json` shows it: kubectl's READY/STATUS during init, and
Kubernetes' containerStatuses built from the store's rows."""

from __future__ import annotations

import re
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


def test_container_statuses_carry_ids_states_and_pids_like_kubernetes() -> None:
    rows = [init_done(), running("demo", 50), running("istio-proxy", 51, ready=0)]
    pod = views.pod_object(pod_row("Running"), rows, [])
    statuses = pod["status"]["containerStatuses"]
    assert [s["name"] for s in statuses] == ["demo", "istio-proxy"]
    ids = [s["containerID"] for s in statuses]
    assert all(re.fullmatch(r"remora://[0-9a-f]{64}", i) for i in ids) and ids[0] != ids[1]
    demo = statuses[0]
    assert demo["image"] == "vasth/simple-server"
    assert (demo["ready"], demo["started"], demo["restartCount"]) == (True, True, 0)
    assert demo["state"] == {"running": {"startedAt": "1970-01-01T00:00:02Z"}}
    assert demo["remora"] == {"pid": 50}  # the PID `nsenter --target PID -n` wants
    assert statuses[1]["ready"] is False
    init = pod["status"]["initContainerStatuses"][0]
    assert init["state"]["terminated"]["reason"] == "Completed"
    assert init["state"]["terminated"]["exitCode"] == 0
    assert init["containerID"].startswith("remora://")
    # kubelet: a completed init container is Ready (kubectl describe: `Ready: True`)
    assert init["ready"] is True
    assert pod["status"]["podIP"] == "10.20.0.77"
    assert pod["status"]["podIPs"] == [{"ip": "10.20.0.77"}]
    # the ID is stable for one run (the same row read again, e.g. after adoption) ...
    again = views.pod_object(pod_row("Running"), rows, [])["status"]["containerStatuses"]
    assert again[0]["containerID"] == ids[0]
    # ... and new when the container is restarted
    restarted = views.pod_object(pod_row("Running"), [
        init_done(), running("demo", 60, restarts=1), running("istio-proxy", 51)], [])
    assert restarted["status"]["containerStatuses"][0]["containerID"] != ids[0]
    assert restarted["status"]["containerStatuses"][0]["restartCount"] == 1


def test_waiting_containers_read_like_kubelet() -> None:
    crashing = ContainerRow(pod_uid=UID, name="demo", pid=50, start_ticks=1, restarts=3,
                            state="Waiting", reason="CrashLoopBackOff", exit_code=2, started=2.0)
    pod = views.pod_object(pod_row("Running"), [init_done(), crashing], [])
    demo, proxy = pod["status"]["containerStatuses"]
    assert demo["state"] == {"waiting": {"reason": "CrashLoopBackOff"}}
    assert demo["lastState"]["terminated"]["exitCode"] == 2
    assert demo["lastState"]["terminated"]["reason"] == "Error"
    assert demo["remora"] == {"pid": 0}
    # not created yet, in a pod with an init container: kubelet's PodInitializing
    assert proxy["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert "containerID" not in proxy


def test_describe_shows_the_container_id() -> None:
    from remora.lab import describe

    pod = views.pod_object(pod_row("Running"), [init_done(), running("demo", 50)], [])
    text = describe.pod(pod, now=10.0)
    cid = pod["status"]["containerStatuses"][0]["containerID"]
    assert f"  demo:\n    Container ID:   {cid}\n    Image:          vasth/simple-server" in text


def test_a_restarted_container_keeps_the_old_run_as_last_state() -> None:
    """After kill -9 and a restart: lastState.terminated is the old run (exit 137 = 128 +
    SIGKILL, its own container ID, its start and finish), state is the new run, and
    kubectl's RESTARTS and describe read it like kubectl."""
    from remora.lab import describe, tables

    first = running("demo", 50)
    old_id = views.container_id(first)
    again = running("demo", 60, restarts=1)
    again.started = 100.0
    again.last_state = {"pid": 50, "start_ticks": 1050, "restarts": 0, "exit_code": 137,
                        "reason": "Error", "started": 2.0, "finished": 99.0}
    pod = views.pod_object(pod_row("Running"), [init_done(), again,
                                                running("istio-proxy", 51)], [])
    demo = pod["status"]["containerStatuses"][0]
    assert demo["restartCount"] == 1 and demo["containerID"] != old_id
    assert demo["lastState"] == {"terminated": {
        "exitCode": 137, "reason": "Error", "startedAt": "1970-01-01T00:00:02Z",
        "finishedAt": "1970-01-01T00:01:39Z", "containerID": old_id}}
    assert tables.restarts_column(pod, now=129.0) == "1 (30s ago)"
    text = describe.pod(pod, now=130.0)
    assert ("    State:          Running\n"
            "      Started:      Thu, 01 Jan 1970 00:01:40 +0000\n"
            "    Last State:     Terminated\n"
            "      Reason:       Error\n"
            "      Exit Code:    137\n"
            "      Started:      Thu, 01 Jan 1970 00:00:02 +0000\n"
            "      Finished:     Thu, 01 Jan 1970 00:01:39 +0000\n"
            "    Ready:          True\n"
            "    Restart Count:  1\n") in text


def test_restarts_without_a_last_state_and_init_restarts_count() -> None:
    from remora.lab import tables

    init = init_done()
    init.restarts = 2  # kubectl adds init containers' restarts to the pod's
    pod = views.pod_object(pod_row("Running"), [init, running("demo", 50),
                                                running("istio-proxy", 51)], [])
    assert pod["remora"]["restarts"] == 2
    assert tables.restarts_column(pod, now=10.0) == "2"


def test_a_pod_not_started_yet_reads_pending() -> None:
    waiting = pod_row("Pending")
    waiting.ip = ""  # no network yet: waiting for its turn to start
    assert views.pod_object(waiting, [], [])["remora"]["status"] == "Pending"
