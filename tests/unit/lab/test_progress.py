"""Rollout messages (kubectl rollout status) and crash detection while waiting."""

from __future__ import annotations

from typing import Any

from remora.lab.progress import crashing, progress_deadline_exceeded, rollout_message


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


def test_a_rollout_past_its_progress_deadline_is_reported() -> None:
    # kubectl rollout status looks at the Progressing condition first
    stuck = dep(1, updatedReplicas=1, replicas=2, availableReplicas=1)
    assert not progress_deadline_exceeded(stuck)
    stuck["status"]["conditions"] = [
        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]
    assert progress_deadline_exceeded(stuck)


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


class FakeClient:
    """The node daemon's answers, one state per get("Pod") call (the last one repeats)."""

    def __init__(self, pods: list[list[dict[str, Any]]],
                 deployments: list[dict[str, Any]] | None = None) -> None:
        self.pods, self.deployments = pods, deployments or []

    def get(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        if kind == "Deployment":
            return self.deployments
        return self.pods.pop(0) if len(self.pods) > 1 else self.pods[0]

    def logs(self, *args: Any, **kwargs: Any) -> dict[str, str]:
        return {"text": "boom: error"}


def bare(name: str, ready: bool, restarts: int = 0) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns"},
            "status": {"ready": ready, "containerStatuses": [
                {"name": "c", "ready": ready, "restartCount": restarts}]}}


def test_wait_looks_only_at_the_batch_and_needs_a_stable_ready(monkeypatch: Any) -> None:
    from remora.lab import progress
    monkeypatch.setattr(progress, "STABLE_FOR", 0.3)
    # a pod of someone else's crashing in the same namespace: not this batch's business
    other = {**bare("other", False, restarts=5),
             "metadata": {"name": "other", "namespace": "ns",
                          "ownerReferences": [{"kind": "Deployment", "name": "theirs"}]}}
    theirs = {"metadata": {"name": "theirs", "namespace": "ns"}, "spec": {"replicas": 1},
              "status": {"updatedReplicas": 0, "replicas": 1}}
    client = FakeClient([[bare("mine", True), other]], [theirs])
    pods = progress.wait(client, ["ns"], 5, expect=[("ns", "mine")],  # type: ignore[arg-type]
                         deployments=[])
    assert [p["metadata"]["name"] for p in pods] == ["mine"]
    # Ready for a moment, then a container restarts: not "all pods Ready"
    flap = [[bare("mine", True)], [bare("mine", False, 1)], [bare("mine", True, 1)],
            [bare("mine", False, 2)]]
    client = FakeClient(flap)
    try:
        progress.wait(client, ["ns"], 5, expect=[("ns", "mine")],  # type: ignore[arg-type]
                      deployments=[])
    except Exception as exc:
        assert "keeps failing" in str(exc)
    else:
        raise AssertionError("a flapping pod was called Ready")
