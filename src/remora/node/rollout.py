"""A Deployment's status as the deployment controller keeps it (pure): the replica counts
and the `Available` and `Progressing` conditions, carried from one pass to the next as
pkg/controller/deployment keeps them in the object's status (sync.go calculateStatus and
getNewReplicaSet, progress.go syncRolloutStatus, util/deployment_util.go
SetDeploymentCondition, DeploymentComplete, DeploymentProgressing, DeploymentTimedOut).

The node's reconciler calls `sync` on each pass with the status it kept from the last
one; the result is what the Kubernetes API serves as `status.conditions`, so
`kubectl describe deploy`, `get deploy -o yaml` and `rollout status` (which fails on
ProgressDeadlineExceeded) see what they would on a cluster.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable
from typing import Any

from remora.node import controller
from remora.resources.rfc3339 import format_time, parse_time

AVAILABLE, PROGRESSING = "Available", "Progressing"
# the reasons of deploymentutil (util/deployment_util.go)
NEW_RS_CREATED = "NewReplicaSetCreated"
FOUND_NEW_RS = "FoundNewReplicaSet"
RS_UPDATED = "ReplicaSetUpdated"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
TIMED_OUT = "ProgressDeadlineExceeded"
MIN_AVAILABLE = "MinimumReplicasAvailable"
MIN_UNAVAILABLE = "MinimumReplicasUnavailable"
PAUSED = "DeploymentPaused"
RESUMED = "DeploymentResumed"
NO_DEADLINE = 2**31 - 1  # math.MaxInt32: progressDeadlineSeconds that means "none"


def counts(pods: list[tuple[str, bool]], current: str,
           available: int | None = None) -> dict[str, int]:
    """The status counts of a Deployment whose live (not terminating) pods are PODS, each
    (pod-template-hash, ready): every pod stands for a replica of its ReplicaSet.
    AVAILABLE is how many of them have been Ready for spec.minReadySeconds (None: all the
    Ready ones, minReadySeconds 0); unavailableReplicas is replicas - availableReplicas
    (sync.go calculateStatus)."""
    total = len(pods)
    ready = sum(1 for _, r in pods if r)
    avail = ready if available is None else available
    return {"replicas": total, "updatedReplicas": sum(1 for h, _ in pods if h == current),
            "readyReplicas": ready, "availableReplicas": avail,
            "unavailableReplicas": max(0, total - avail)}


def _condition(kind: str, ok: bool | None, reason: str, message: str,
               now: float) -> dict[str, Any]:
    """A condition whose status is True, False, or Unknown (OK None)."""
    stamp = format_time(now)
    status = "Unknown" if ok is None else "True" if ok else "False"
    return {"type": kind, "status": status, "lastUpdateTime": stamp,
            "lastTransitionTime": stamp, "reason": reason, "message": message}


def _get(conditions: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == kind), None)


def _set(conditions: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    """SetDeploymentCondition: nothing changes when the status and reason are the same;
    otherwise the condition goes to the end, keeping lastTransitionTime while its status
    stays."""
    old = _get(conditions, new["type"])
    if old is not None and old["status"] == new["status"] and old["reason"] == new["reason"]:
        return conditions
    if old is not None and old["status"] == new["status"]:
        new = {**new, "lastTransitionTime": old["lastTransitionTime"]}
    return [c for c in conditions if c.get("type") != new["type"]] + [new]


def _has_deadline(deployment: dict[str, Any]) -> bool:
    deadline = (deployment.get("spec") or {}).get("progressDeadlineSeconds", 600)
    return deadline is not None and int(deadline) != NO_DEADLINE


def _max_unavailable(deployment: dict[str, Any]) -> int:
    """deploymentutil.MaxUnavailable: 0 for Recreate or 0 replicas, else the resolved
    fencepost, at most the replicas."""
    want = controller.replicas(deployment)
    if controller.strategy_type(deployment) != "RollingUpdate" or want == 0:
        return 0
    return min(controller.fenceposts(deployment)[1], want)


def resuming(deployment: dict[str, Any], kept: dict[str, Any] | None) -> bool:
    """Whether this is the pass that finds DEPLOYMENT, paused when its status KEPT was
    written, resumed: checkPausedConditions writes Unknown DeploymentResumed with a
    status update of its own before the rollout writes its reasons, so the lab's
    controller rolls nothing out in this one pass and the resumed condition is served
    until the next (a pass later, the rollout proceeds)."""
    if controller.paused(deployment) or not _has_deadline(deployment):
        return False
    cond = _get(list((kept or {}).get("conditions") or []), PROGRESSING)
    return cond is not None and cond["reason"] == PAUSED


def sync(deployment: dict[str, Any], kept: dict[str, Any] | None, now_counts: dict[str, int],
         new_rs_existed: bool, now: float) -> dict[str, Any]:
    """One sync of DEPLOYMENT: KEPT is its status after the last one (None at first), and
    NEW_RS_EXISTED says whether the ReplicaSet of its current template was there before
    this pass (false: the controller creates it now). The status to keep and serve."""
    old = copy.deepcopy(kept or {})
    conditions: list[dict[str, Any]] = list(old.get("conditions") or [])
    want = controller.replicas(deployment)
    name = deployment["metadata"]["name"]
    rs = f"{name}-{controller.template_hash(deployment)}"
    deadline = _has_deadline(deployment)
    # a paused Deployment is only sync()ed, and the pass that sees it resumed only
    # writes that (resuming): no new ReplicaSet and no rollout status in either
    hold = resuming(deployment, kept)
    paused = controller.paused(deployment)
    if deadline:
        # checkPausedConditions (sync.go): pausing and resuming are told by the
        # Progressing condition, Unknown, unless it reports the deadline exceeded
        cond = _get(conditions, PROGRESSING)
        was_paused = cond is not None and cond["reason"] == PAUSED
        if cond is not None and cond["reason"] == TIMED_OUT:
            pass
        elif paused and not was_paused:
            conditions = _set(conditions, _condition(
                PROGRESSING, None, PAUSED, "Deployment is paused", now))
        elif not paused and was_paused:
            conditions = _set(conditions, _condition(
                PROGRESSING, None, RESUMED, "Deployment is resumed", now))
    # getNewReplicaSet: a new ReplicaSet is announced by the Progressing condition; an
    # existing one only when the Deployment has no such condition yet
    if paused or hold:
        pass
    elif deadline and not new_rs_existed:
        conditions = _set(conditions, _condition(
            PROGRESSING, True, NEW_RS_CREATED, f'Created new replica set "{rs}"', now))
    elif deadline and _get(conditions, PROGRESSING) is None:
        conditions = _set(conditions, _condition(
            PROGRESSING, True, FOUND_NEW_RS, f'Found new replica set "{rs}"', now))
    current = _get(conditions, PROGRESSING)  # d.Status's, before calculateStatus
    status: dict[str, Any] = {**now_counts}
    # calculateStatus: Available while at least replicas - maxUnavailable are available
    if now_counts["availableReplicas"] >= want - _max_unavailable(deployment):
        conditions = _set(conditions, _condition(
            AVAILABLE, True, MIN_AVAILABLE, "Deployment has minimum availability.", now))
    else:
        conditions = _set(conditions, _condition(
            AVAILABLE, False, MIN_UNAVAILABLE,
            "Deployment does not have minimum availability.", now))
    # a scaling event (the replicas changed, not the template) is sync(), which keeps
    # the Progressing condition as it is (syncDeploymentStatus)
    scaling = kept is not None and kept.get("desired") != want and \
        kept.get("template") == controller.template_hash(deployment)
    complete = (now_counts["replicas"] == now_counts["updatedReplicas"] and
                current is not None and current["reason"] == NEW_RS_AVAILABLE)
    if not deadline:
        conditions = [c for c in conditions if c.get("type") != PROGRESSING]
    elif not scaling and not complete and not paused and not hold:
        if (now_counts["updatedReplicas"] == want and now_counts["replicas"] == want
                and now_counts["availableReplicas"] == want):  # DeploymentComplete
            conditions = _set(conditions, _condition(
                PROGRESSING, True, NEW_RS_AVAILABLE,
                f'ReplicaSet "{rs}" has successfully progressed.', now))
        elif _progressing(old, now_counts):
            # the Progressing condition is updated on any progress, its reason the same
            # (lastUpdateTime moves; lastTransitionTime stays while it is True)
            fresh = _condition(PROGRESSING, True, RS_UPDATED,
                               f'ReplicaSet "{rs}" is progressing.', now)
            if current is not None and current["status"] == "True":
                fresh["lastTransitionTime"] = current["lastTransitionTime"]
            conditions = [c for c in conditions if c.get("type") != PROGRESSING] + [fresh]
        elif _timed_out(deployment, _get(conditions, PROGRESSING), now):
            conditions = _set(conditions, _condition(
                PROGRESSING, False, TIMED_OUT,
                f'ReplicaSet "{rs}" has timed out progressing.', now))
    status["conditions"] = conditions
    status["desired"] = want
    status["template"] = controller.template_hash(deployment)
    return status


def _progressing(old: dict[str, Any], new: dict[str, int]) -> bool:
    """DeploymentProgressing: more updated, fewer old, more ready or more available
    replicas than the status last kept."""
    def was(key: str) -> int:
        return int(old.get(key) or 0)

    new_old = new["replicas"] - new["updatedReplicas"]
    return (new["updatedReplicas"] > was("updatedReplicas") or
            new_old < was("replicas") - was("updatedReplicas") or
            new["readyReplicas"] > was("readyReplicas") or
            new["availableReplicas"] > was("availableReplicas"))


def _timed_out(deployment: dict[str, Any], cond: dict[str, Any] | None, now: float) -> bool:
    """DeploymentTimedOut: no progress for progressDeadlineSeconds since the Progressing
    condition was last updated."""
    if cond is None or cond["reason"] == NEW_RS_AVAILABLE:
        return False
    if cond["reason"] == TIMED_OUT:
        return True
    since = parse_time(cond.get("lastUpdateTime"))
    deadline = int((deployment.get("spec") or {}).get("progressDeadlineSeconds", 600))
    return since is not None and since + deadline < now


def served(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The conditions of a kept status, as the API serves them."""
    return [dict(c) for c in status.get("conditions") or []]


def replicaset_sizes(deployment: dict[str, Any], pods: list[tuple[str, bool]],
                     history: Iterable[str] = ()) -> dict[str, tuple[int, int]]:
    """The lab's ReplicaSets of DEPLOYMENT whose pods are PODS, each (pod-template-hash,
    terminating), and whose revision HISTORY holds these pod-template-hashes:
    pod-template-hash -> (spec.replicas, status.replicas), the current one first, then
    the others by hash (by name, as the apiserver lists them). The lab creates and
    deletes the pods itself, so a ReplicaSet's size is the number of its pods that are
    not terminating (status.replicas counts the same, FilterActivePods); the current
    one's is the Deployment's replicas once no older pod is left, what the rollout has
    scaled it to until then. An old one with no pod left is at 0, kept while the history
    has it (the Kubernetes API's view: remora.kubeapi.views.replicasets)."""
    current = controller.template_hash(deployment)
    live = Counter(h for h, gone in pods if not gone)
    rolling = any(h != current for h, _ in pods)
    out = {current: (live[current] if rolling else controller.replicas(deployment),
                     live[current])}
    for h in sorted(({h for h, _ in pods} | set(history)) - {current, ""}):
        out[h] = (live[h], live[h])
    return out
