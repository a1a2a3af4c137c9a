"""The controllers' decisions, as pure functions: Deployment -> pods, Service -> endpoints,
and kubectl's view of a pod (READY, STATUS, RESTARTS).

Deployments roll out the way Kubernetes' RollingUpdate does (pkg/controller/deployment/
rolling.go), with the Deployment's spec.strategy.rollingUpdate maxSurge and maxUnavailable:
pods of the new template (named <deployment>-<pod-template-hash>-<5 chars>, labelled
pod-template-hash) are created while the pods number at most replicas + maxSurge, and old
pods are removed while at least replicas - maxUnavailable stay Ready. The lab's defaults
are maxSurge 1 and maxUnavailable 0 (not the apiserver's 25%/25%), so a service keeps its
endpoints through a rollout.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

from remora.node import naming
from remora.resources import selection

TEMPLATE_HASH_LABEL = "pod-template-hash"


@dataclass(frozen=True)
class OwnedPod:
    name: str
    template_hash: str
    ready: bool
    deleting: bool
    created: float


@dataclass(frozen=True)
class Plan:
    create: int
    delete: tuple[str, ...]


def template_hash(deployment: dict[str, Any]) -> str:
    template = deployment.get("spec", {}).get("template", {})
    return naming.pod_template_hash(json.dumps(template, sort_keys=True))


def replicas(deployment: dict[str, Any]) -> int:
    value = deployment.get("spec", {}).get("replicas")
    return 1 if value is None else int(value)


# the lab's RollingUpdate defaults (served as such by the Kubernetes API's view)
DEFAULT_MAX_SURGE = 1
DEFAULT_MAX_UNAVAILABLE = 0


def rolling_update(deployment: dict[str, Any]) -> dict[str, int | str]:
    """spec.strategy.rollingUpdate's maxSurge and maxUnavailable, the lab's defaults
    for those left out."""
    strategy = deployment.get("spec", {}).get("strategy") or {}
    given = strategy.get("rollingUpdate") or {}
    return {"maxUnavailable": given.get("maxUnavailable", DEFAULT_MAX_UNAVAILABLE),
            "maxSurge": given.get("maxSurge", DEFAULT_MAX_SURGE)}


def _scaled(value: int | str, total: int, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent: an int as is, "N%" of TOTAL rounded."""
    if isinstance(value, int):
        return value
    share = int(value.rstrip("%")) * total / 100
    return math.ceil(share) if round_up else math.floor(share)


def fenceposts(deployment: dict[str, Any]) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as numbers of pods, as deploymentutil.ResolveFenceposts:
    a surge percentage rounds up, an unavailable one down, and if both come to 0 one pod
    may be unavailable (else the rollout could never progress)."""
    want = replicas(deployment)
    limits = rolling_update(deployment)
    surge = _scaled(limits["maxSurge"], want, round_up=True)
    unavailable = _scaled(limits["maxUnavailable"], want, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def paused(deployment: dict[str, Any]) -> bool:
    return bool((deployment.get("spec") or {}).get("paused"))


def min_ready_seconds(deployment: dict[str, Any]) -> int:
    return int((deployment.get("spec") or {}).get("minReadySeconds") or 0)


def available(ready_since: float | None, min_ready: int, now: float) -> bool:
    """podutil.IsPodAvailable: a pod is available once it has been Ready for
    minReadySeconds (at once when that is 0); READY_SINCE is when it became Ready (None:
    it is not)."""
    if ready_since is None:
        return False
    return min_ready == 0 or ready_since + min_ready <= now


def rolled_out(deployment: dict[str, Any], history: list[dict[str, Any]],
               active: set[str] | None = None) -> dict[str, Any] | None:
    """DEPLOYMENT as its controller acts on it, HISTORY its numbered templates
    (remora.node.desired.revisions), ACTIVE the pod-template-hashes that have live pods.
    While spec.paused, a template change is not rolled out: the controller only sync()s
    (sync.go syncDeployment: getAllReplicaSetsAndSyncRevision with createIfNotExisted
    false, then scale), so the pods keep the template of the one active ReplicaSet
    (scale: it is scaled to the replicas), else of the newest one it made (the newest
    revision). A Deployment created paused has no ReplicaSet at all: None (no pods)."""
    if not paused(deployment):
        return deployment
    if not history:
        return None
    by_hash = {e["hash"]: e for e in history}
    only = next(iter(active)) if active is not None and len(active) == 1 else None
    entry = by_hash[only] if only in by_hash else max(history,
                                                      key=lambda e: int(e["revision"]))
    if entry["hash"] == template_hash(deployment):
        return deployment
    out = copy.deepcopy(deployment)
    out.setdefault("spec", {})["template"] = copy.deepcopy(entry["template"])
    return out


def strategy_type(deployment: dict[str, Any]) -> str:
    """spec.strategy.type: "RollingUpdate" (the default) or "Recreate"."""
    strategy = deployment.get("spec", {}).get("strategy") or {}
    return str(strategy.get("type") or "RollingUpdate")


def plan_deployment(deployment: dict[str, Any], pods: list[OwnedPod]) -> Plan:
    """One pass of the rollout over the Deployment's pods (the lab's pods stand for its
    ReplicaSets' replicas; terminating pods count for nothing, as for a ReplicaSet).
    A pod's `ready` is its availability (ready for spec.minReadySeconds): the rolling
    update counts available pods, not Ready ones (rolling.go reconcileOldReplicaSets
    and cleanupUnhealthyReplicas use the ReplicaSets' availableReplicas)."""
    want = replicas(deployment)
    current = template_hash(deployment)
    if paused(deployment) and len({p.template_hash for p in pods if not p.deleting}) > 1:
        # paused half way through a rollout: it holds where it is (no rolloutRolling /
        # rolloutRecreate while paused). sync.go's proportional scaling of several
        # active ReplicaSets is not modelled: the replicas apply once resumed
        return Plan(create=0, delete=())
    if strategy_type(deployment) == "Recreate":
        return _plan_recreate(want, current, pods)
    surge, unavailable = fenceposts(deployment)
    live = [p for p in pods if not p.deleting]
    new = sorted((p for p in live if p.template_hash == current), key=lambda p: p.created)
    old = sorted((p for p in live if p.template_hash != current), key=lambda p: p.created)
    delete: list[str] = []
    if len(new) > want:
        # scale down: not-ready first, then the newest
        extra = sorted(new, key=lambda p: (p.ready, -p.created))[: len(new) - want]
        delete += [p.name for p in extra]
        new = [p for p in new if p.name not in delete]
    # reconcileNewReplicaSet: scale up while the pods number at most replicas + maxSurge
    total = len(new) + len(old)
    create = max(0, min(want + surge - total, want - len(new)))
    # reconcileOldReplicaSets: first old pods that are not Ready, as far as keeping
    # replicas - maxUnavailable available allows (cleanupUnhealthyReplicas), then Ready
    # ones while the Ready pods stay at least that many (scaleDownOldReplicaSetsFor...)
    min_available = want - unavailable
    new_unready = sum(not p.ready for p in new)
    room = total - min_available - new_unready
    unready_old = [p for p in old if not p.ready][: max(0, room)]
    ready_now = sum(p.ready for p in new) + sum(p.ready for p in old)
    ready_old = [p for p in old if p.ready][: max(0, ready_now - min_available)]
    if room > 0:
        delete += [p.name for p in unready_old + ready_old]
    return Plan(create=create, delete=tuple(delete))


def _plan_recreate(want: int, current: str, pods: list[OwnedPod]) -> Plan:
    """Kubernetes' rolloutRecreate (pkg/controller/deployment/recreate.go): the old
    ReplicaSets are scaled to 0, and the new one is scaled up only once none of their
    pods is left, terminating ones included (oldPodsRunning), so old and new pods never
    run side by side and the service has no endpoint in between."""
    live = [p for p in pods if not p.deleting]
    new = sorted((p for p in live if p.template_hash == current), key=lambda p: p.created)
    delete = [p.name for p in live if p.template_hash != current]
    if len(new) > want:
        extra = sorted(new, key=lambda p: (p.ready, -p.created))[: len(new) - want]
        delete += [p.name for p in extra]
        new = [p for p in new if p.name not in delete]
    old_left = any(p.template_hash != current for p in pods)
    return Plan(create=0 if old_left else max(0, want - len(new)), delete=tuple(delete))


def pod_from_template(deployment: dict[str, Any], suffix_seed: str) -> dict[str, Any]:
    meta = deployment["metadata"]
    template = copy.deepcopy(deployment.get("spec", {}).get("template", {}))
    pod_hash = template_hash(deployment)
    tmeta = template.get("metadata") or {}
    name = f"{meta['name']}-{pod_hash}-{naming.pod_suffix(suffix_seed)}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace", "default"),
            "labels": {**(tmeta.get("labels") or {}), TEMPLATE_HASH_LABEL: pod_hash},
            "annotations": dict(tmeta.get("annotations") or {}),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                 "name": meta["name"], "controller": True}],
        },
        "spec": template.get("spec") or {},
    }


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A Service selector (plain map) or a LabelSelector's matchLabels/matchExpressions
    (the rules: remora.resources.selection)."""
    return selection.label_selector(selector).matches(labels)


def target_port(service_port: dict[str, Any], pod: dict[str, Any]) -> int | None:
    return selection.target_port(selection.port_spec_from_dict(service_port),
                                 selection.candidate_from_dict(pod).container_ports)


def endpoints(service: dict[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ready endpoints of SERVICE among PODS (each with status.podIP and status.ready), as
    remora.resources.selection.select_endpoints decides them for the control plane too."""
    return [{"ip": e.ip, "port": e.port, "name": e.port_name, "protocol": e.protocol,
             "servicePort": e.service_port, "pod": e.pod}
            for e in selection.service_endpoints_from_dicts(service, pods)]


def pod_status(containers: list[dict[str, Any]], deleting: bool, phase: str,
               app_count: int | None = None, init_count: int | None = None) -> dict[str, Any]:
    """kubectl's READY/STATUS/RESTARTS from container rows (dicts of ContainerRow).

    APP_COUNT/INIT_COUNT are the pod spec's containers and initContainers: READY counts
    the spec's app containers even before any has started (`0/2` while init containers
    run), and STATUS follows kubectl's printPod: `Init:N/M` while init containers run,
    `PodInitializing` once they finished and before the app containers run (kubelet's
    waiting reason for them), then the app containers' own reasons
    (https://github.com/kubernetes/kubernetes/blob/v1.30.0/pkg/printers/internalversion/printers.go#L860).
    """
    apps = [c for c in containers if not c["init"]]
    inits = [c for c in containers if c["init"]]
    n_apps = len(apps) if app_count is None else app_count
    n_inits = len(inits) if init_count is None else init_count
    ready = sum(1 for c in apps if c["ready"] and c["state"] == "Running")
    restarts = sum(c["restarts"] for c in containers)  # kubectl adds init containers' too
    status = phase
    done_inits = sum(1 for c in inits if c["state"] == "Terminated" and c["exit_code"] == 0)
    if deleting:
        status = "Terminating"
    elif n_inits and done_inits < n_inits:
        failing = [c for c in inits if c["reason"] in ("CrashLoopBackOff", "Error")]
        status = f"Init:{failing[0]['reason']}" if failing else f"Init:{done_inits}/{n_inits}"
    elif phase in ("Pending", "Init") or len(apps) < n_apps:
        status = "PodInitializing" if n_inits else "ContainerCreating"
    elif phase == "Running":
        bad = [c for c in apps if c["state"] != "Running"]
        status = bad[0]["reason"] or "Error" if bad else "Running"
    return {"ready": f"{ready}/{n_apps}", "status": status,
            "restarts": restarts, "allReady": n_apps > 0 and ready == n_apps}
