"""Rollout messages (kubectl rollout status) and crash detection while waiting."""

from __future__ import annotations

from typing import Any

from remora.lab.progress import crashing, rollout_message


def dep(want: int | None, **status: int) -> dict[str, Any]:
    spec = {} if want is None else {"replicas": want}
    return {"metadata": {"name": "simple-server"}, "spec": spec, "status": status}


def test_rollout_messages_follow_kubectl() -> None:
    assert rollout_message(dep(None, updatedReplicas=0, replicas=1)) == (
        False, 'Waiting for deployment "simple-server" rollout to finish: 0 out of 1 new '
               "replicas have been updated...")
    assert rollout_message(dep(1, updatedReplicas=1, replicas=2, availableReplicas=1))[1] \
        .endswith("1 old replicas are pending termination...")
    assert rollout_message(dep(2, updatedReplicas=2, replicas=2, availableReplicas=1))[1] \
        .endswith("1 of 2 updated replicas are available...")
    assert rollout_message(dep(1, updatedReplicas=1, replicas=1, availableReplicas=1)) == (
        True, 'deployment "simple-server" successfully rolled out')


def pod(*statuses: dict[str, Any], init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns"},
            "status": {"containerStatuses": list(statuses), "initContainerStatuses": init or []}}


def test_crashing_finds_a_container_that_keeps_failing() -> None:
    assert crashing([pod({"name": "demo", "restartCount": 2, "ready": False})]) == (
        "ns", "p", "demo")
    assert crashing([pod({"name": "demo", "restartCount": 1, "ready": False})]) is None
    assert crashing([pod({"name": "demo", "restartCount": 5, "ready": True})]) is None
    done = {"name": "istio-init", "restartCount": 2, "ready": False,
            "state": {"terminated": {"exitCode": 0}}}
    assert crashing([pod(init=[done])]) is None
    failing = {**done, "state": {"terminated": {"exitCode": 1}}}
    assert crashing([pod(init=[failing])]) == ("ns", "p", "istio-init")
