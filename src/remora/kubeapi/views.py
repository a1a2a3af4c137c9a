"""The store's objects as the API serves them (pure): metadata the apiserver would add
(uid, creationTimestamp, resourceVersion), defaults it would apply (Deployment replicas
and conditions, Pod conditions, Namespace phase), and the kinds derived from the store
rather than stored: Endpoints, EndpointSlices and ReplicaSets. (Events are not derived:
the node records them, remora.node.events.)

The node's objects carry a top-level `remora` block for the remora CLI's columns; the
API drops it (tables are rendered before it goes). Container statuses keep their
`remora.pid`, as `remora get -o json` shows it.
"""

from __future__ import annotations

import copy
import datetime
from typing import Any

from remora.node import controller, naming, rollout
from remora.resources.rfc3339 import format_time

iso = format_time


def stable_uid(kind: str, namespace: str, name: str, created: Any) -> str:
    """A uid for a stored object: the same on every read, a new one when the object is
    deleted and created again (its creation time differs), as an apiserver's uid."""
    return naming.object_uid(kind, namespace, name, created)


def _timestamp(meta: dict[str, Any]) -> str | None:
    """A store object's creation time (seconds) as the RFC 3339 string every served
    object carries: kubectl's describe parses metav1.Time and fails on a number."""
    created = meta.get("creationTimestamp")
    return iso(float(created)) if isinstance(created, (int, float)) else created


def _meta(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    meta = dict(obj.get("metadata") or {})
    created = meta.get("creationTimestamp")
    meta.setdefault("uid", stable_uid(kind, meta.get("namespace", ""), meta.get("name", ""),
                                      created))
    if isinstance(created, (int, float)):
        meta["creationTimestamp"] = iso(float(created))
    elif created is None:
        meta["creationTimestamp"] = None
    return meta


def api_object(kind: str, group_version: str, obj: dict[str, Any]) -> dict[str, Any]:
    """One store object (from the node's `get`) as the API shows it."""
    revisions = (obj.get("remora") or {}).get("revisions") or []
    out = {k: copy.deepcopy(v) for k, v in obj.items() if k != "remora"}
    out["apiVersion"] = out.get("apiVersion") or group_version
    out["kind"] = kind
    out["metadata"] = _meta(out, kind)
    if kind in _NO_GENERATION:
        # the registry's strategies of these kinds never set metadata.generation (a
        # Pod's is set from Kubernetes 1.33 only; the lab serves 1.32); the store counts
        # spec changes for every kind
        out["metadata"].pop("generation", None)
    if kind == "Namespace":
        out["status"] = {"phase": "Active"}
        # the apiserver labels every namespace with its own name, on create and update
        # (registry/core/namespace/strategy.go PrepareForCreate/PrepareForUpdate), so a
        # NetworkPolicy's namespaceSelector can name one
        out["metadata"]["labels"] = {**(out["metadata"].get("labels") or {}),
                                     NAMESPACE_NAME_LABEL: out["metadata"].get("name")}
    elif kind == "Deployment":
        _deployment(out)
        # a paused Deployment's template change has no ReplicaSet yet: the revision
        # stays the one rolled out last (controller.rolled_out)
        acting = controller.rolled_out(out, revisions) or out
        current = next((e for e in revisions if e["hash"] == controller.template_hash(acting)),
                       None)
        if current is not None:
            # the deployment controller's annotation: the revision of its newest
            # ReplicaSet (pkg/controller/deployment/util: RevisionAnnotation)
            out["metadata"].setdefault("annotations", {})[REVISION] = str(current["revision"])
    elif kind == "Pod":
        _pod(out)
    return out


REVISION = "deployment.kubernetes.io/revision"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
_NO_GENERATION = ("Namespace", "Service", "Pod")
# what the apiserver fills in a Service's spec when a write leaves it out: allocated
# (clusterIP, clusterIPs, ipFamilies, ipFamilyPolicy) or defaulted (core/v1
# SetDefaults_Service); each port's protocol and targetPort are defaulted per port
_SERVICE_SERVER_FIELDS = ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy")
_SERVICE_DEFAULTS = {"type": "ClusterIP", "sessionAffinity": "None",
                     "internalTrafficPolicy": "Cluster"}


def defaulted_spec(kind: str, spec: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """SPEC of a KIND with what the apiserver would default or allocate in it filled in
    (LIVE, the served spec, for what it allocated), for comparing a write with the live
    object as the apiserver compares its defaulted forms. Deployments are served
    defaulted already (api_object)."""
    out = copy.deepcopy(spec)
    if kind != "Service":
        return out
    for key in _SERVICE_SERVER_FIELDS:
        if key not in out and key in live:
            out[key] = copy.deepcopy(live[key])
    if out.get("clusterIP") and "clusterIPs" not in out:
        out["clusterIPs"] = [out["clusterIP"]]
    for key, value in _SERVICE_DEFAULTS.items():
        out.setdefault(key, value)
    for port in out.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    return out
CHANGE_CAUSE = "kubernetes.io/change-cause"


def _deployment(d: dict[str, Any]) -> None:
    spec = d.setdefault("spec", {})
    spec.setdefault("replicas", 1)  # the apiserver's default (apps/v1 SetDefaults_Deployment)
    # the strategy the node's controller follows: Recreate, or RollingUpdate with what
    # was given and the lab's defaults (maxSurge 1, maxUnavailable 0) for what was not
    spec["strategy"] = (
        {"type": "Recreate"} if controller.strategy_type(d) == "Recreate" else
        {"type": "RollingUpdate", "rollingUpdate": controller.rolling_update(d)})
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    # status.conditions are the node's deployment controller's (remora.node.rollout),
    # kept from pass to pass as the real controller keeps them in the object; a
    # Deployment it has not synced yet has none, as on a cluster
    d.setdefault("status", {})


def _pod(p: dict[str, Any]) -> None:
    status = p.setdefault("status", {})
    start = status.get("startTime")
    inits = status.get("initContainerStatuses") or []
    initialized = all((c.get("state") or {}).get("terminated", {}).get("exitCode") == 0
                      for c in inits)
    ready = bool(status.get("ready"))

    def cond(kind: str, ok: bool) -> dict[str, Any]:
        return {"type": kind, "status": "True" if ok else "False", "lastProbeTime": None,
                "lastTransitionTime": start}

    status["conditions"] = [cond("PodScheduled", True), cond("Initialized", initialized),
                            cond("ContainersReady", ready), cond("Ready", ready)]
    status.setdefault("qosClass", "BestEffort")
    owners = p["metadata"].get("ownerReferences") or []
    labels = p["metadata"].get("labels") or {}
    if owners and owners[0].get("kind") == "Deployment" and \
            controller.TEMPLATE_HASH_LABEL in labels:
        # a Deployment's pods belong to its ReplicaSet, as on a cluster
        p["metadata"]["ownerReferences"] = [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": f"{owners[0]['name']}-{labels[controller.TEMPLATE_HASH_LABEL]}",
            "controller": True, "blockOwnerDeletion": True,
            "uid": stable_uid("ReplicaSet", p["metadata"].get("namespace", ""),
                              f"{owners[0]['name']}-{labels[controller.TEMPLATE_HASH_LABEL]}",
                              "")}]


def replicasets(deployments: list[dict[str, Any]], pods: list[dict[str, Any]],
                history: dict[tuple[str, str], list[dict[str, Any]]] | None = None,
                now: float = 0.0) -> list[dict[str, Any]]:
    """One ReplicaSet per Deployment template: the current one (even with no pod), each
    older template that still has pods, and each one in the Deployment's revision
    HISTORY (the node's numbered templates: scaled to 0, as a cluster keeps
    revisionHistoryLimit old ReplicaSets for `kubectl rollout history|undo`), named
    <deployment>-<pod-template-hash>, annotated with their revision. NOW is the time
    their pods' availability is judged at (spec.minReadySeconds)."""
    out = []
    for spec_d in deployments:
        ns, name = spec_d["metadata"]["namespace"], spec_d["metadata"]["name"]
        # while paused, the ReplicaSets are those of the template rolled out last; one
        # created paused has none (controller.rolled_out)
        owned = [p for p in pods if p["metadata"].get("namespace") == ns and
                 (p["metadata"].get("ownerReferences") or [{}])[0].get("name") == name and
                 (p["metadata"].get("ownerReferences") or [{}])[0].get("kind") == "Deployment"]
        d = controller.rolled_out(spec_d, (history or {}).get((ns, name), []), {
            (p["metadata"].get("labels") or {}).get(controller.TEMPLATE_HASH_LABEL, "")
            for p in owned if not p["metadata"].get("deletionTimestamp")})
        if d is None:
            continue
        current = controller.template_hash(d)
        numbered = {e["hash"]: e for e in (history or {}).get((ns, name), [])}
        older = {(p["metadata"].get("labels") or {}).get(controller.TEMPLATE_HASH_LABEL, "")
                 for p in owned} - {current, ""}
        hashes = [current, *sorted(older | set(numbered) - {current})]
        sizes = rollout.replicaset_sizes(d, [
            ((p["metadata"].get("labels") or {}).get(controller.TEMPLATE_HASH_LABEL, ""),
             bool(p["metadata"].get("deletionTimestamp"))) for p in owned])
        for h in hashes:
            mine = [p for p in owned if (p["metadata"].get("labels") or {}).get(
                controller.TEMPLATE_HASH_LABEL) == h and not p["metadata"].get(
                "deletionTimestamp")]
            # an old ReplicaSet is at the size the rollout left it (its live pods), as
            # `kubectl describe deploy` lists it under OldReplicaSets until it is at 0
            want = sizes.get(h, (0, 0))[0]
            template = copy.deepcopy(d.get("spec", {}).get("template") or {})
            if h != current and h in numbered:  # the template as applied, for undo
                template = copy.deepcopy(numbered[h]["template"])
            elif h != current and mine:
                template = {"metadata": {"labels": mine[0]["metadata"].get("labels") or {}},
                            "spec": mine[0].get("spec") or {}}
            labels = {**((template.get("metadata") or {}).get("labels") or {}),
                      controller.TEMPLATE_HASH_LABEL: h}
            template.setdefault("metadata", {})["labels"] = labels
            ready = sum(1 for p in mine if p["status"].get("ready"))
            # available: Ready for the Deployment's minReadySeconds (podutil.IsPodAvailable),
            # from when the node's controller saw it become Ready
            min_ready = controller.min_ready_seconds(spec_d)
            available = ready if not min_ready else sum(
                1 for p in mine if p["status"].get("ready") and controller.available(
                    (p.get("remora") or {}).get("readySince"), min_ready, now))
            selector = copy.deepcopy(d.get("spec", {}).get("selector") or {})
            selector.setdefault("matchLabels", {})[controller.TEMPLATE_HASH_LABEL] = h
            rs_name = f"{name}-{h}"
            out.append({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "namespace": ns, "labels": labels,
                             "uid": stable_uid("ReplicaSet", ns, rs_name, ""),
                             "creationTimestamp": d["metadata"].get("creationTimestamp"),
                             "annotations": _rs_annotations(d, numbered.get(h)),
                             "ownerReferences": [{
                                 "apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                 "uid": d["metadata"].get("uid", ""), "controller": True,
                                 "blockOwnerDeletion": True}]},
                "spec": {"replicas": want, "selector": selector, "template": template},
                "status": {"replicas": len(mine), "readyReplicas": ready,
                           "availableReplicas": available,
                           "fullyLabeledReplicas": len(mine),
                           "observedGeneration": 1}})
    return out


def _rs_annotations(d: dict[str, Any], entry: dict[str, Any] | None) -> dict[str, str]:
    out = {"deployment.kubernetes.io/desired-replicas": str(controller.replicas(d))}
    if entry is not None:
        out[REVISION] = str(entry["revision"])
        if entry.get("changeCause"):
            out[CHANGE_CAUSE] = str(entry["changeCause"])  # rollout history's CHANGE-CAUSE
    return out


def _all_endpoints(service: dict[str, Any], pods: list[dict[str, Any]]
                   ) -> tuple[list[dict[str, Any]], set[str]]:
    """SERVICE's endpoints among PODS, ready or not (terminating pods left out, as the
    endpoints controller does without publishNotReadyAddresses), and the IPs of the
    ready ones (the controllers' own choice: controller.endpoints)."""
    ready = {e["ip"] for e in controller.endpoints(service, pods)}
    anyway = [{**p, "status": {**(p.get("status") or {}), "ready": True}} for p in pods]
    return controller.endpoints(service, anyway), ready


def endpoints(services: list[dict[str, Any]], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """core/v1 Endpoints of each Service: its Ready pods in addresses, the others in
    notReadyAddresses (pkg/controller/endpoint: a pod whose readiness probe fails moves
    there; kube-proxy and the sidecars' EDS use only the ready ones)."""
    out = []
    for s in services:
        meta = s["metadata"]
        eps, ready = _all_endpoints(s, pods)
        subsets = []
        if eps:
            addresses: dict[str, dict[str, Any]] = {}
            ports: dict[tuple[str, int], dict[str, Any]] = {}
            for e in eps:
                addresses[e["ip"]] = {"ip": e["ip"], "targetRef": {
                    "kind": "Pod", "namespace": meta["namespace"], "name": e["pod"]}}
                port = {"port": e["port"], "protocol": e["protocol"]}
                if e["name"]:
                    port["name"] = e["name"]
                ports[(e["name"], e["port"])] = port
            subset: dict[str, Any] = {}
            up = [addresses[k] for k in sorted(addresses) if k in ready]
            down = [addresses[k] for k in sorted(addresses) if k not in ready]
            if up:
                subset["addresses"] = up
            if down:
                subset["notReadyAddresses"] = down
            subset["ports"] = list(ports.values())
            subsets.append(subset)
        out.append({"apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                                 "labels": dict(meta.get("labels") or {}),
                                 "uid": stable_uid("Endpoints", meta["namespace"],
                                                   meta["name"], meta.get("creationTimestamp")),
                                 "creationTimestamp": _timestamp(meta)},
                    "subsets": subsets})
    return out


def endpointslices(services: list[dict[str, Any]],
                   pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """discovery.k8s.io/v1 EndpointSlices: one per Service, named <service>-remora, with
    the `kubernetes.io/service-name` label clients select them by; a pod that is not
    ready is listed with ready and serving false (the EndpointSlice controller's
    conditions for a pod that is not terminating)."""
    out = []
    for s in services:
        meta = s["metadata"]
        eps, ready = _all_endpoints(s, pods)
        by_ip: dict[str, str] = {e["ip"]: e["pod"] for e in eps}
        ports = {(e["name"], e["port"], e["protocol"]) for e in eps}
        name = f"{meta['name']}-remora"
        out.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": meta["namespace"],
                         "labels": {"kubernetes.io/service-name": meta["name"],
                                    "endpointslice.kubernetes.io/managed-by": "remora"},
                         "uid": stable_uid("EndpointSlice", meta["namespace"], name,
                                           meta.get("creationTimestamp")),
                         "creationTimestamp": _timestamp(meta)},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ip in ready,
                                                            "serving": ip in ready,
                                                            "terminating": False},
                           "targetRef": {"kind": "Pod", "namespace": meta["namespace"],
                                         "name": by_ip[ip]}} for ip in sorted(by_ip)],
            "ports": [{"name": n, "port": p, "protocol": proto}
                      for n, p, proto in sorted(ports)]})
    return out


def nodes(items: list[dict[str, Any]], created: Any, host: dict[str, str],
          version: str) -> list[dict[str, Any]]:
    """core/v1 Nodes of the lab's nodes (the daemon's `nodes`): Ready while the daemon
    answers (it is their kubelet), their pod subnets as podCIDRs, the fabric address as
    InternalIP, and the host's OS and kernel in nodeInfo (the nodes are network
    namespaces of this host)."""
    out = []
    resources = {k: host[k] for k in ("cpu", "memory") if host.get(k)}
    for n in items:
        name = str(n["name"])
        cidrs = [str(n[k]) for k in ("subnet", "subnet6") if n.get(k)]
        addresses = [{"type": "InternalIP", "address": str(n[k])}
                     for k in ("nodeIP", "nodeIP6") if n.get(k)]
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "kubelet is posting ready status",
                 "lastHeartbeatTime": created, "lastTransitionTime": created}
        out.append({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": stable_uid("Node", "", name, created),
                         "creationTimestamp": created,
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": host.get("arch", ""),
                                    "beta.kubernetes.io/os": "linux"}},
            "spec": {"podCIDR": cidrs[0] if cidrs else "", "podCIDRs": cidrs},
            "status": {
                # the host's, shared by every node (describe node's percentages need them)
                "capacity": resources, "allocatable": resources,
                "conditions": [ready],
                "addresses": [*addresses, {"type": "Hostname", "address": name}],
                "nodeInfo": {"kubeletVersion": version, "kubeProxyVersion": version,
                             "osImage": host.get("os", ""),
                             "kernelVersion": host.get("kernel", ""),
                             "containerRuntimeVersion": host.get("runtime", ""),
                             "operatingSystem": "linux",
                             "architecture": host.get("arch", ""),
                             "machineID": "", "systemUUID": "", "bootID": ""}}})
    return out


def leases(nodes: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """The node heartbeats kubelet renews in kube-node-lease (one Lease per node, named
    as the node, `describe node` reads it): renewed now, as the daemon, the nodes'
    kubelet, is answering."""
    renew = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")  # metav1.MicroTime
    out = []
    for n in nodes:
        name = n["metadata"]["name"]
        out.append({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease",
                         "uid": stable_uid("Lease", "kube-node-lease", name,
                                           n["metadata"].get("creationTimestamp")),
                         "creationTimestamp": n["metadata"].get("creationTimestamp"),
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node",
                                              "name": name, "uid": n["metadata"]["uid"]}]},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                     "renewTime": renew}})
    return out


def field_value(obj: dict[str, Any], path: str) -> str:
    """The value of a field selector's field (metadata.name, status.phase, ...)."""
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)
