"""Read-side views of the store: pods and services as Kubernetes-shaped objects, the
cluster snapshot a control plane consumes, the DNS zone and kube-proxy's service ports.
"""

from __future__ import annotations

import hashlib
from typing import Any

from remora.errors import UsageError
from remora.node import controller, desired, ipam, topology
from remora.node.dns import Zone
from remora.node.hooks import ClusterSnapshot
from remora.node.ipam import AddressPlan
from remora.node.kubeproxy import ServicePort
from remora.node.store import ContainerRow, PodRow, Store
from remora.resources.rfc3339 import format_time


def containers_of(pod: dict[str, Any]) -> list[tuple[dict[str, Any], bool]]:
    spec = pod.get("spec", {})
    return [(c, True) for c in spec.get("initContainers") or []] + [
        (c, False) for c in spec.get("containers") or []]




def container_id(row: ContainerRow) -> str:
    """The container's ID, as `docker://<64 hex>` is in Kubernetes: one per run of the
    container (the same while it runs and after the daemon adopts it again, a new one on
    every restart, since the PID, start time and restart count change)."""
    return _run_id(row.pod_uid, row.name, row.restarts, row.pid, row.start_ticks)


def _run_id(pod_uid: str, name: str, restarts: int, pid: int, start_ticks: int) -> str:
    run = f"{pod_uid}/{name}/{restarts}/{pid}/{start_ticks}"
    return "remora://" + hashlib.sha256(run.encode()).hexdigest()


def _terminated(exit_code: int | None, reason: str, started: float, finished: float,
                cid: str) -> dict[str, Any]:
    out: dict[str, Any] = {"exitCode": exit_code, "reason": reason,
                           "startedAt": format_time(started) if started else ""}
    if finished:
        out["finishedAt"] = format_time(finished)
    if cid:
        out["containerID"] = cid
    return out


def last_state(row: ContainerRow) -> dict[str, Any]:
    """kubelet's lastState: the run that ended, with that run's own container ID — the
    row itself while it waits to restart (CrashLoopBackOff), else the run before it."""
    if row.state == "Waiting" and row.exit_code is not None:
        cid = container_id(row) if row.pid > 0 else ""
        return {"terminated": _terminated(row.exit_code, "Completed" if row.exit_code == 0
                                          else "Error", row.started, row.finished, cid)}
    last = row.last_state
    if not last:
        return {}
    cid = _run_id(row.pod_uid, row.name, int(last.get("restarts") or 0),
                  int(last.get("pid") or 0), int(last.get("start_ticks") or 0)) \
        if last.get("pid") else ""
    return {"terminated": _terminated(last.get("exit_code"), str(last.get("reason") or ""),
                                      float(last.get("started") or 0),
                                      float(last.get("finished") or 0), cid)}


def _container_status(row: ContainerRow | None, container: dict[str, Any],
                      waiting: str = "ContainerCreating", init: bool = False) -> dict[str, Any]:
    """core/v1 ContainerStatus from the store's row, plus a `remora` block with the PID
    (the `docker inspect -f {{.State.Pid}}` of the seed, for `nsenter --target PID -n`).

    WAITING is kubelet's reason for a container not created yet: PodInitializing for the
    app containers of a pod whose init containers have not finished.
    """
    name, image = container["name"], container.get("image", "")
    status: dict[str, Any] = {"name": name, "image": image, "imageID": ""}
    if row is None:
        status.update(ready=False, started=False, restartCount=0,
                      state={"waiting": {"reason": waiting}})
        return status
    cid = container_id(row) if row.pid > 0 else ""
    started = format_time(row.started) if row.started else ""
    if row.state == "Running":
        state: dict[str, Any] = {"running": {"startedAt": started}}
    elif row.state == "Terminated":
        state = {"terminated": _terminated(row.exit_code, row.reason, row.started,
                                           row.finished, cid)}
    else:
        state = {"waiting": {"reason": row.reason}}
    ready = bool(row.ready) and row.state == "Running"
    if init:
        # kubelet reports an init container that completed (exit 0) as ready: `kubectl
        # describe pod` shows `Ready: True` under Init Containers (kubernetes.io, "Debug
        # Init Containers"), and Ready while it runs is not meaningful for it
        ready = row.state == "Terminated" and row.exit_code == 0
    # started: running and past its startupProbe (kubelet's prober_manager UpdatePodStatus)
    status.update(ready=ready, started=row.state == "Running" and bool(row.startup_done),
                  restartCount=row.restarts,
                  state=state)
    if cid:
        status["containerID"] = cid
    previous = last_state(row)
    if previous:
        status["lastState"] = previous
    status["remora"] = {"pid": row.pid if row.state == "Running" else 0}
    return status


def pod_object(row: PodRow, containers: list[ContainerRow],
               nodes: list[topology.NodeNet]) -> dict[str, Any]:
    """The pod as `kubectl get pod -o json` would show it, plus a `remora` block."""
    by_name = {c.name: c for c in containers}
    pod = dict(row.body)
    meta = dict(pod.get("metadata", {}))
    meta.update(uid=row.uid, namespace=row.namespace, creationTimestamp=format_time(row.created))
    if row.deleting:
        meta["deletionTimestamp"] = format_time(row.created)
    pod["metadata"] = meta
    node = nodes[row.node - 1] if 0 < row.node <= len(nodes) else None
    spec = dict(pod.get("spec", {}))
    spec["nodeName"] = node.netns if node else f"node-{row.node}"
    pod["spec"] = spec
    rows = [c.__dict__ for c in containers]
    summary = controller.pod_status(rows, bool(row.deleting), row.phase,
                                    app_count=len(spec.get("containers") or []),
                                    init_count=len(spec.get("initContainers") or []))
    if row.phase == "Pending" and not row.deleting and (row.message or not row.ip):
        # not started yet (no network: waiting for a start slot, or failing before it):
        # kubectl prints the phase of a pod without container statuses
        summary["status"] = "Pending"
    elif row.message and not row.deleting and not summary["allReady"]:
        # a container could not be started from its spec (kubelet's reason for it)
        summary["status"] = "CreateContainerConfigError"
    inits = spec.get("initContainers") or []
    waiting = "PodInitializing" if inits else "ContainerCreating"
    host_ip = str(node.subnet.node_ip) if node else ""  # the node's own address (its eth0)
    pod["status"] = {
        "phase": "Running" if row.phase in ("Running",) else "Pending",
        "podIP": row.ip, "hostIP": host_ip,
        # every address, the primary first (dual stack: one per family)
        "podIPs": [{"ip": ip} for ip in row.addresses],
        "hostIPs": [{"ip": host_ip}] if host_ip else [],
        "startTime": format_time(row.created),
        "ready": summary["allReady"] and not row.deleting,
        "message": row.message,
        "initContainerStatuses": [_container_status(by_name.get(c["name"]), c, waiting,
                                                    init=True) for c in inits],
        "containerStatuses": [_container_status(by_name.get(c["name"]), c, waiting)
                              for c in spec.get("containers") or []],
    }
    pod["remora"] = {"netns": row.netns, "node": row.node, "ready": summary["ready"],
                     "status": summary["status"], "restarts": summary["restarts"],
                     "created": row.created}
    return pod


def pod_objects(store: Store, nodes: list[topology.NodeNet],
                namespace: str | None = None) -> list[dict[str, Any]]:
    containers: dict[str, list[ContainerRow]] = {}
    for c in store.containers():
        containers.setdefault(c.pod_uid, []).append(c)
    return [pod_object(r, containers.get(r.uid, []), nodes) for r in store.list_pods(namespace)]


def ready_by_uid(store: Store) -> dict[str, bool]:
    containers: dict[str, list[ContainerRow]] = {}
    for c in store.containers():
        containers.setdefault(c.pod_uid, []).append(c)
    out = {}
    for row in store.list_pods():
        apps = [c for c in containers.get(row.uid, []) if not c.init]
        n = len(row.body.get("spec", {}).get("containers") or [])
        out[row.uid] = (len(apps) == n and n > 0 and
                        all(c.ready and c.state == "Running" for c in apps))
    return out


def services(store: Store, plan: AddressPlan) -> list[dict[str, Any]]:
    """Service objects with spec.clusterIP(s) as allocated, the primary family first; in a
    lab with IPv6, with ipFamilies and ipFamilyPolicy as the API server defaulted them."""
    held: dict[str, list[str]] = {}
    for ip, owner in store.used_ips("svc").items():
        held.setdefault(owner, []).append(ip)
    out = []
    for svc in store.list_objects("Service"):
        meta = svc["metadata"]
        owner = f"svc:{meta.get('namespace', 'default')}/{meta['name']}"
        spec = dict(svc.get("spec") or {})
        try:
            families, policy = ipam.service_families(plan, spec, owner)
        except UsageError:  # checked at apply; a store from another plan keeps its order
            families, policy = plan.families, "SingleStack"
        ips = sorted(held.get(owner, []), key=lambda ip: (
            families.index(ipam.family_of(ip)) if ipam.family_of(ip) in families else 9, ip))
        if ips:
            spec["clusterIP"] = ips[0]
            spec["clusterIPs"] = ips
        if plan.ipv6:
            spec["ipFamilies"] = list(families)
            spec["ipFamilyPolicy"] = policy
        spec.setdefault("type", "ClusterIP")
        out.append({**svc, "spec": spec})
    return out


def snapshot(store: Store, svcs: list[dict[str, Any]],
             pods: list[dict[str, Any]]) -> ClusterSnapshot:
    eps = {(s["metadata"].get("namespace", "default"), s["metadata"]["name"]):
           controller.endpoints(s, pods) for s in svcs}
    policies = [o for kind in desired.POLICY_KINDS for o in store.list_objects(kind)]
    return ClusterSnapshot(namespaces=store.list_objects("Namespace"), services=svcs,
                           pods=pods, endpoints=eps, policies=policies)


def service_ports(svcs: list[dict[str, Any]],
                  endpoints: dict[tuple[str, str], list[dict[str, Any]]],
                  pods: list[dict[str, Any]] | None = None) -> list[ServicePort]:
    """One ServicePort per cluster IP and port. A dual-stack service's other family gets
    its endpoints' addresses of that family (from PODS' status.podIPs), as kube-proxy's
    per-family EndpointSlices give them."""
    addresses: dict[tuple[str, str], list[str]] = {}
    for p in pods or []:
        addresses[(p["metadata"]["namespace"], p["metadata"]["name"])] = [
            str(x.get("ip")) for x in p["status"].get("podIPs") or [] if x.get("ip")]
    out = []
    for s in svcs:
        ip = s["spec"].get("clusterIP")
        if not ip or ip == "None":
            continue
        key = (s["metadata"].get("namespace", "default"), s["metadata"]["name"])
        for cluster_ip in s["spec"].get("clusterIPs") or [ip]:
            family = ipam.family_of(cluster_ip)
            for sp in s["spec"].get("ports") or []:
                eps = []
                for e in endpoints.get(key, []):
                    if e["servicePort"] != sp.get("port"):
                        continue
                    same = [a for a in addresses.get((key[0], e["pod"]), [e["ip"]])
                            if ipam.family_of(a) == family]
                    if ipam.family_of(e["ip"]) == family:
                        eps.append((e["ip"], int(e["port"])))
                    elif same:
                        eps.append((same[0], int(e["port"])))
                out.append(ServicePort(key[0], key[1], sp.get("name", ""),
                                       sp.get("protocol", "TCP"), cluster_ip, int(sp["port"]),
                                       tuple(eps)))
    return out


def zone(domain: str, svcs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> Zone:
    """Services' A (IPv4 cluster IP) and AAAA (IPv6) records, and the pods' addresses."""
    z = Zone(domain=domain)
    for s in svcs:
        ip = s["spec"].get("clusterIP")
        if not ip or ip == "None":
            continue
        key = (s["metadata"].get("namespace", "default"), s["metadata"]["name"])
        for cluster_ip in s["spec"].get("clusterIPs") or [ip]:
            if ipam.family_of(cluster_ip) == ipam.IPV6:
                z.services6[key] = cluster_ip
            else:
                z.services[key] = cluster_ip
    for p in pods:
        for address in p["status"].get("podIPs") or (
                [{"ip": p["status"]["podIP"]}] if p["status"].get("podIP") else []):
            z.pods[address["ip"]] = p["metadata"]["namespace"]
    return z
