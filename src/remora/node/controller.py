"""The controllers' decisions, as pure functions: Deployment -> pods, Service -> endpoints,
and kubectl's view of a pod (READY, STATUS, RESTARTS).

Deployments roll out the way Kubernetes' default RollingUpdate does with maxUnavailable 0:
pods of the new template (named <deployment>-<pod-template-hash>-<5 chars>, labelled
pod-template-hash) are created first, and old pods are removed only as new ones become
Ready, so the service always has an endpoint.
"""

from __future__ import annotations

import copy
import json
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


def plan_deployment(deployment: dict[str, Any], pods: list[OwnedPod]) -> Plan:
    want = replicas(deployment)
    current = template_hash(deployment)
    live = [p for p in pods if not p.deleting]
    new = sorted((p for p in live if p.template_hash == current), key=lambda p: p.created)
    old = sorted((p for p in live if p.template_hash != current), key=lambda p: p.created)
    delete: list[str] = []
    if len(new) > want:
        # scale down: not-ready first, then the newest
        extra = sorted(new, key=lambda p: (p.ready, -p.created))[: len(new) - want]
        delete += [p.name for p in extra]
        new = [p for p in new if p.name not in delete]
    ready_new = sum(p.ready for p in new)
    keep_old = max(0, want - ready_new)
    doomed_old = sorted(old, key=lambda p: (p.ready, p.created))[: max(0, len(old) - keep_old)]
    delete += [p.name for p in doomed_old]
    return Plan(create=max(0, want - len(new)), delete=tuple(delete))


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
