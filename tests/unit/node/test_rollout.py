"""A Deployment's status.conditions as the deployment controller keeps them
(remora.node.rollout: sync.go, progress.go, deployment_util.go), pass by pass; the live
comparison of `kubectl describe deploy` with `remora describe deploy` is in
tests/netns/test_kubeapi_workflows.py."""

from __future__ import annotations

from typing import Any

from remora.lab import describe
from remora.node import controller, rollout
from remora.resources.rfc3339 import format_time

T0 = 1_800_000_000.0


def _deployment(replicas: int = 1, image: str = "a", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "demo-to"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": image}]}},
                     **spec}}


def _table(status: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["type"], c["status"], c["reason"]) for c in status["conditions"]]


def test_a_new_deployment_goes_created_updated_available() -> None:
    d = _deployment()
    rs = f"web-{controller.template_hash(d)}"
    h = controller.template_hash(d)
    # the first pass creates the ReplicaSet: no pod yet
    first = rollout.sync(d, None, rollout.counts([], h), False, T0)
    assert _table(first) == [("Progressing", "True", "NewReplicaSetCreated"),
                             ("Available", "False", "MinimumReplicasUnavailable")]
    assert first["conditions"][0]["message"] == f'Created new replica set "{rs}"'
    # its pod exists, not ready: progress (more updated replicas), reason ReplicaSetUpdated
    second = rollout.sync(d, first, rollout.counts([(h, False)], h), True, T0 + 1)
    assert _table(second) == [("Available", "False", "MinimumReplicasUnavailable"),
                              ("Progressing", "True", "ReplicaSetUpdated")]
    progressing = second["conditions"][1]
    assert progressing["message"] == f'ReplicaSet "{rs}" is progressing.'
    assert progressing["lastUpdateTime"] == format_time(T0 + 1)
    assert progressing["lastTransitionTime"] == format_time(T0)  # True all along
    # ready: Available, then the rollout is complete; the order kubectl prints
    third = rollout.sync(d, second, rollout.counts([(h, True)], h), True, T0 + 5)
    assert _table(third) == [("Available", "True", "MinimumReplicasAvailable"),
                             ("Progressing", "True", "NewReplicaSetAvailable")]
    assert third["conditions"][0]["lastTransitionTime"] == format_time(T0 + 5)
    assert third["conditions"][1]["message"] == f'ReplicaSet "{rs}" has successfully progressed.'
    assert third["conditions"][1]["lastTransitionTime"] == format_time(T0)
    # nothing changes on a quiet pass: the times stay
    assert rollout.sync(d, third, rollout.counts([(h, True)], h), True, T0 + 60) == third


def test_a_stuck_rollout_times_out_and_a_scale_keeps_progressing() -> None:
    d = _deployment(progressDeadlineSeconds=10)
    old_hash = controller.template_hash(d)
    done = rollout.sync(d, None, rollout.counts([(old_hash, True)], old_hash), True, T0)
    # a Deployment the controller kept no status for, its ReplicaSet there already:
    # FoundNewReplicaSet, then at once complete
    assert _table(done) == [("Available", "True", "MinimumReplicasAvailable"),
                            ("Progressing", "True", "NewReplicaSetAvailable")]
    # a new template whose pod never gets ready (old one kept: maxUnavailable 0)
    new = _deployment(image="b", progressDeadlineSeconds=10)
    h = controller.template_hash(new)
    pods = [(old_hash, True), (h, False)]
    rolling = rollout.sync(new, done, rollout.counts([(old_hash, True)], h), False, T0 + 1)
    assert ("Progressing", "True", "NewReplicaSetCreated") in _table(rolling)
    rolling = rollout.sync(new, rolling, rollout.counts(pods, h), True, T0 + 2)
    assert _table(rolling) == [("Available", "True", "MinimumReplicasAvailable"),
                               ("Progressing", "True", "ReplicaSetUpdated")]
    assert rollout.sync(new, rolling, rollout.counts(pods, h), True, T0 + 11) == rolling
    stuck = rollout.sync(new, rolling, rollout.counts(pods, h), True, T0 + 13)
    assert _table(stuck)[-1] == ("Progressing", "False", "ProgressDeadlineExceeded")
    assert stuck["conditions"][-1]["message"] == \
        f'ReplicaSet "web-{h}" has timed out progressing.'
    # scaling a complete Deployment is a scaling event: Progressing stays as it was
    d3 = _deployment(replicas=3)
    h3 = controller.template_hash(d3)
    scaled = rollout.sync(d3, done, rollout.counts([(h3, True)], h3), True, T0 + 20)
    assert _table(scaled) == [("Progressing", "True", "NewReplicaSetAvailable"),
                              ("Available", "False", "MinimumReplicasUnavailable")]
    assert scaled["conditions"][0] == done["conditions"][1]


def test_without_a_progress_deadline_there_is_no_progressing_condition() -> None:
    d = _deployment(progressDeadlineSeconds=2**31 - 1)
    h = controller.template_hash(d)
    status = rollout.sync(d, None, rollout.counts([(h, True)], h), False, T0)
    assert _table(status) == [("Available", "True", "MinimumReplicasAvailable")]


def test_describe_deployment_prints_conditions_and_replica_sets_as_kubectl() -> None:
    old = _deployment()
    new = _deployment(image="b")
    oh, nh = controller.template_hash(old), controller.template_hash(new)
    new["status"] = {"conditions": [
        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
        {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]}

    def pod(h: str, gone: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": f"web-{h}-x", "labels": {"pod-template-hash": h}}
        if gone:
            meta["deletionTimestamp"] = "2027-01-15T08:00:00Z"
        return {"metadata": meta, "status": {}}

    text = describe.deployment(new, [pod(oh), pod(nh), pod(nh, gone=True)], T0)
    tail = text[text.index("Conditions:"):].splitlines()
    # kubectl's tabwriter block: the table's first column and the two ReplicaSet lines
    assert tail == [
        "Conditions:",
        "  Type           Status  Reason",
        "  ----           ------  ------",
        "  Available      True    MinimumReplicasAvailable",
        "  Progressing    True    ReplicaSetUpdated",
        f"OldReplicaSets:  web-{oh} (1/1 replicas created)",
        f"NewReplicaSet:   web-{nh} (1/1 replicas created)",
    ]
    # once the old pods are gone, the old ReplicaSet is at 0, listed while the revision
    # history keeps it (kubectl lists every old one: kubernetes/kubernetes#113083)
    new["status"] = {}
    text = describe.deployment(new, [pod(nh)], T0)
    assert text.splitlines()[-2:] == ["OldReplicaSets:  <none>",
                                      f"NewReplicaSet:   web-{nh} (1/1 replicas created)"]
    new["remora"] = {"revisions": [{"hash": oh, "revision": 1}, {"hash": nh, "revision": 2}]}
    text = describe.deployment(new, [pod(nh)], T0)
    assert text.splitlines()[-2:] == [f"OldReplicaSets:  web-{oh} (0/0 replicas created)",
                                      f"NewReplicaSet:   web-{nh} (1/1 replicas created)"]


def test_pausing_holds_the_template_and_resuming_rolls_it_out() -> None:
    """sync.go checkPausedConditions and the paused sync() path: Unknown DeploymentPaused
    while paused (no new ReplicaSet, no rollout status), Unknown DeploymentResumed once
    resumed, then the rollout's own reasons take over."""
    d = _deployment(replicas=2)
    old = controller.template_hash(d)
    history = [{"hash": old, "revision": 1, "template": d["spec"]["template"]}]
    done = rollout.sync(d, None, rollout.counts([(old, True)] * 2, old), True, T0)
    assert _table(done)[-1] == ("Progressing", "True", "NewReplicaSetAvailable")
    # paused, then the image changed: the controller acts on the old template
    changed = _deployment(replicas=2, image="b", paused=True)
    new = controller.template_hash(changed)
    acting = controller.rolled_out(changed, history)
    assert acting is not None and controller.template_hash(acting) == old
    assert acting["spec"]["replicas"] == 2 and acting["spec"]["paused"] is True
    paused = rollout.sync(acting, done, rollout.counts([(old, True)] * 2, new), True, T0 + 1)
    assert _table(paused) == [("Available", "True", "MinimumReplicasAvailable"),
                              ("Progressing", "Unknown", "DeploymentPaused")]
    assert paused["conditions"][1]["message"] == "Deployment is paused"
    assert paused["updatedReplicas"] == 0  # no ReplicaSet of the new template
    # nothing progresses or times out while paused, however long
    assert rollout.sync(acting, paused, rollout.counts([(old, True)] * 2, new), True,
                        T0 + 10_000) == paused
    # scaling applies to the old template's ReplicaSet: three pods of it
    scaled = controller.rolled_out(_deployment(replicas=3, image="b", paused=True), history)
    assert scaled is not None
    pods = [controller.OwnedPod(f"p{i}", old, True, False, float(i)) for i in range(2)]
    assert controller.plan_deployment(scaled, pods) == controller.Plan(create=1, delete=())
    # resumed: the pass that sees it writes Unknown DeploymentResumed only (the runtime
    # holds the rollout for that pass: rollout.resuming), however the pods stand
    resumed_d = _deployment(replicas=2, image="b")
    assert controller.rolled_out(resumed_d, history) is resumed_d
    assert rollout.resuming(resumed_d, paused) and not rollout.resuming(changed, paused)
    resumed = rollout.sync(resumed_d, paused, rollout.counts([(old, True)] * 2, new), False,
                           T0 + 20)
    assert _table(resumed)[-1] == ("Progressing", "Unknown", "DeploymentResumed")
    assert resumed["conditions"][-1]["message"] == "Deployment is resumed"
    # the paused -> resumed change keeps the transition time (Unknown both)
    assert resumed["conditions"][-1]["lastTransitionTime"] == format_time(T0 + 1)
    assert not rollout.resuming(resumed_d, resumed)
    # the next pass rolls out: the ReplicaSet of the new template is created
    rolled = rollout.sync(resumed_d, resumed, rollout.counts([(old, True)] * 2, new), False,
                          T0 + 21)
    assert _table(rolled)[-1] == ("Progressing", "True", "NewReplicaSetCreated")
    assert rolled["conditions"][-1]["message"] == f'Created new replica set "web-{new}"'
    assert rolled["conditions"][-1]["lastTransitionTime"] == format_time(T0 + 21)
    # nothing changed since: no progress, the resumed condition stays
    stuck = rollout.sync(resumed_d, resumed, rollout.counts([(old, True)] * 2, new), True,
                         T0 + 21)
    assert _table(stuck)[-1] == ("Progressing", "Unknown", "DeploymentResumed")


def test_a_paused_deployment_that_timed_out_keeps_saying_so() -> None:
    d = _deployment(progressDeadlineSeconds=10)
    h = controller.template_hash(d)
    first = rollout.sync(d, None, rollout.counts([(h, False)], h), False, T0)
    timed_out = rollout.sync(d, first, rollout.counts([(h, False)], h), True, T0 + 30)
    assert _table(timed_out)[-1] == ("Progressing", "False", "ProgressDeadlineExceeded")
    p = _deployment(progressDeadlineSeconds=10, paused=True)
    assert _table(rollout.sync(p, timed_out, rollout.counts([(h, False)], h), True,
                               T0 + 40))[-1] == ("Progressing", "False",
                                                 "ProgressDeadlineExceeded")


def test_a_deployment_created_paused_has_no_replica_set() -> None:
    assert controller.rolled_out(_deployment(paused=True), []) is None


def test_min_ready_seconds_counts_availability_not_readiness() -> None:
    """podutil.IsPodAvailable: Ready for minReadySeconds; calculateStatus counts
    availableReplicas so, and the Available condition and DeploymentComplete follow."""
    assert controller.available(T0, 0, T0) is True
    assert controller.available(None, 0, T0) is False
    assert controller.available(T0, 5, T0 + 4.9) is False
    assert controller.available(T0, 5, T0 + 5) is True
    d = _deployment(replicas=1, minReadySeconds=5)
    h = controller.template_hash(d)
    first = rollout.sync(d, None, rollout.counts([(h, True)], h, 0), False, T0)
    assert (first["readyReplicas"], first["availableReplicas"],
            first["unavailableReplicas"]) == (1, 0, 1)
    # Ready, not yet available: not Available and not complete (progressing only)
    assert _table(first) == [("Available", "False", "MinimumReplicasUnavailable"),
                             ("Progressing", "True", "ReplicaSetUpdated")]
    later = rollout.sync(d, first, rollout.counts([(h, True)], h, 1), True, T0 + 5)
    assert _table(later) == [("Available", "True", "MinimumReplicasAvailable"),
                             ("Progressing", "True", "NewReplicaSetAvailable")]


def test_the_rolling_update_waits_for_availability() -> None:
    """The old pod stays until the new one is available (maxUnavailable 0): the runtime
    gives plan_deployment a pod's availability, so a Ready pod inside minReadySeconds
    holds the old one."""
    d = _deployment(replicas=1, image="b", minReadySeconds=5)
    new = controller.template_hash(d)
    old = controller.OwnedPod("old", "oldhash", True, False, 0.0)
    waiting = controller.OwnedPod("new", new, controller.available(T0, 5, T0 + 2), False, 1.0)
    assert controller.plan_deployment(d, [old, waiting]) == controller.Plan(0, ())
    there = controller.OwnedPod("new", new, controller.available(T0, 5, T0 + 5), False, 1.0)
    assert controller.plan_deployment(d, [old, there]) == controller.Plan(0, ("old",))


def test_paused_half_way_the_rollout_holds_and_a_single_active_set_is_scaled() -> None:
    """Paused with the old and the new template's pods both live, nothing is created or
    deleted (no rolloutRolling while paused); with one active ReplicaSet, that one is
    scaled (sync.go scale), whichever revision it is."""
    one, two = _deployment(image="a"), _deployment(image="b", replicas=2, paused=True)
    h1, h2 = controller.template_hash(one), controller.template_hash(two)
    history = [{"hash": h1, "revision": 1, "template": one["spec"]["template"]},
               {"hash": h2, "revision": 2, "template": two["spec"]["template"]}]
    both = [controller.OwnedPod("a", h1, True, False, 0.0),
            controller.OwnedPod("b", h2, False, False, 1.0)]
    acting = controller.rolled_out(two, history, {h1, h2})
    assert acting is two
    assert controller.plan_deployment(two, both) == controller.Plan(0, ())
    unpaused = _deployment(image="b", replicas=2)
    assert controller.plan_deployment(unpaused, both) != controller.Plan(0, ())
    # only the old template's pod is live (paused before the new one was made)
    only_old = controller.rolled_out(two, history, {h1})
    assert only_old is not None and controller.template_hash(only_old) == h1
    assert controller.plan_deployment(only_old, both[:1]) == controller.Plan(1, ())
