"""The reconciling node runtime: desired objects in, namespaces and processes out.

One reconciler thread owns every change to the kernel and to processes; the API thread
only writes desired objects into the store and wakes it. Each pass:

  1. controllers: Deployments -> pods (rolling), bare Pods -> pods, gone owners -> delete
  2. pods: network (namespace, veth, IP, /etc/netns files) -> PodSetup.prepare -> init
     containers one by one -> app containers; deleting pods are stopped, then removed
  3. the supervisor reaps, restarts with backoff, probes readiness
  4. services: ClusterIPs, endpoints from Ready pods; on change kube-proxy rules in every
     node and the DNS zone; PodSetup.cluster_changed (the sidecars' config), at most once
     a second while the cluster keeps changing (remora.node.pushes)

On start the runtime adopts pods a previous daemon left running (see process.matches).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from remora.errors import RemoraError
from remora.node import (
    controller,
    etcfiles,
    ipam,
    kubeproxy,
    naming,
    netlink,
    ownership,
    process,
    resolver,
    rollout,
    topology,
    views,
)
from remora.node.config import NodeConfig
from remora.node.desired import revisions as desired_revisions
from remora.node.desired import rollout_key
from remora.node.dns import Zone
from remora.node.events import EventRecorder, Involved
from remora.node.hooks import ClusterSnapshot, PodContext, PodSetup
from remora.node.pushes import PushThrottle
from remora.node.store import PodRow, Store
from remora.node.supervisor import PodRef, Supervisor

log = logging.getLogger("remora.node")
RETRY_AFTER = 2.0
FULL_EVERY = 2.0  # seconds between full passes when nothing happens
# Pods starting at once (Pending -> Ready): a few per core keeps a 2-core host usable
# while a large Deployment comes up; REMORA_MAX_STARTING in the daemon's environment
# overrides it.
MAX_STARTING = max(4, 3 * (os.cpu_count() or 1))
STARTING_FOR = 30.0  # seconds after which a pod that is not Ready stops counting
# A deleted pod that the sidecars' config lists as an endpoint is stopped only once the
# sidecars no longer send to it: the push that drops its endpoints made (the push
# throttle may hold it up to a second, remora.node.pushes) and read. Until then it serves.
# In Kubernetes the endpoint goes at once while the old pod stays reachable, its
# istio-proxy draining for terminationDrainDuration (5 s) before it exits (and users give
# the app a preStop sleep so that it keeps answering meanwhile). Stopped at once, the
# lab's pod left a window: a client sidecar that still had the address sent its SYNs to a
# pod whose network was gone, 3 s until the node's ARP gave up (host unreachable), then
# its retry (the demo's rollout took 15-16 s instead of 12 in about half of the runs); a
# TPROXY pod whose sidecar had exited drops them too (no socket for the TPROXY target).
SIDECAR_READ = 0.3  # remora's sidecar polls its xDS files every 0.25 s (proxy/server/runtime.py)
PUSH_WAIT = 3.0  # the longest a stopped pod waits for that push (one that keeps failing)


class Runtime:
    def __init__(self, config: NodeConfig, setup: PodSetup | None = None) -> None:
        naming.check_prefix(config.prefix)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.plan = config.plan()
        if config.nodes > self.plan.max_nodes or config.nodes < 1:
            raise RemoraError(f"{config.nodes} nodes do not fit the address plan",
                              f"use 1 to {self.plan.max_nodes} nodes")
        self.setup = setup or PodSetup()
        self.setup.ip_families = self.plan.families
        self.store = Store(config.db_path)
        self.events = EventRecorder(self.store)
        self.supervisor = Supervisor(self.store, config.log_root, self._container_event)
        # each Deployment's ReplicaSets' sizes as its controller last set them
        # ((namespace, deployment, pod-template-hash) -> replicas), for ScalingReplicaSet
        self._rs_sizes: dict[tuple[str, str, str], int] = {}
        self.nodes = topology.node_nets(config.prefix, self.plan, config.nodes)
        self.zone = Zone(domain=config.domain)
        self.wake = threading.Event()
        self._retry: dict[str, float] = {}
        self._signature = ""  # the cluster state kube-proxy's rules and DNS were made from
        self._pushes = PushThrottle()  # the sidecars' config (remora.node.pushes)
        # pod uid -> when its deletion began, and whether the sidecars' config then listed
        # it as an endpoint
        self._stopping: dict[str, tuple[float, bool]] = {}
        # every endpoint address of the sidecars' config as last pushed
        self._pushed_endpoints: frozenset[str] = frozenset()
        self._signalled: set[str] = set()  # deleting pods whose containers were told to stop
        self._admission_errors: set[str] = set()
        self._starting: dict[str, float] = {}  # pod uid -> when it left Pending
        # pod uid -> when it became Ready (wall clock), for spec.minReadySeconds: the
        # Ready condition's lastTransitionTime that podutil.IsPodAvailable reads
        self._ready_since: dict[str, float] = {}
        self._awaiting_available = False  # a pod is Ready, not yet available
        self._looked = False  # ready_since has looked once
        self.snapshot = ClusterSnapshot()
        self._busy = True
        self._last_full = 0.0

    # -- start ------------------------------------------------------------------------------
    def start(self) -> None:
        """Create (or complete) the nodes and adopt pods a previous daemon left running."""
        saved = self.store.get_meta("config")
        if saved is not None and saved.get("prefix") != self.config.prefix:
            raise RemoraError(
                f"state dir {self.config.state_dir} belongs to a lab with prefix "
                f"{saved.get('prefix')!r}", "use another --state-dir, or `remora down` first")
        # namespaces with our prefix that this store does not own belong to another lab
        # (another state dir): sharing them would mix the two labs (remora.node.ownership)
        lab_id = self.store.get_meta("lab_id") or str(uuid.uuid4())
        ownership.check(self.config.prefix, self.config.state_dir, lab_id, saved is None,
                        {p.netns for p in self.store.list_pods()})
        self.store.set_meta("config", self.config.to_json())
        self.store.set_meta("lab_id", lab_id)
        if self.store.get_meta("created") is None:  # the built-in namespaces' creation
            self.store.set_meta("created", time.time())
        topology.ensure_nodes(self.config.prefix, self.plan, self.config.nodes)
        for node in self.nodes:
            ownership.mark(node.netns, lab_id, self.config.state_dir)
        ownership.mark(naming.fabric_name(self.config.prefix), lab_id, self.config.state_dir)
        for row in self.store.list_pods():
            self._adopt(row)
            if row.owner_kind == "Deployment" and not row.deleting:
                # the sizes the previous daemon left: adopting them is no scaling
                key = (row.namespace, row.owner_name, row.template_hash)
                self._rs_sizes[key] = self._rs_sizes.get(key, 0) + 1
        for d in self.store.list_objects("Deployment"):
            # and the ReplicaSets it had scaled to 0 (kept for rollout history|undo):
            # scaling one up again is "to N from 0", as the deployment controller, which
            # reads the ReplicaSets' sizes from the apiserver, says after its own restart
            ns, name = d["metadata"].get("namespace", "default"), d["metadata"]["name"]
            for thash in self._replicasets_seen(d):
                self._rs_sizes.setdefault((ns, name, thash), 0)
        # the adopted pods' rules, DNS and sidecar configs are made again on the first pass
        self._signature = ""
        self._pushes = PushThrottle()

    def _adopt(self, row: PodRow) -> None:
        if row.phase == "Pending":
            return
        # A deleting pod is adopted too, so that its processes are stopped before its
        # namespace goes.
        if not netlink.exists(row.netns):
            log.info("pod %s/%s lost its namespace; re-creating it", row.namespace, row.name)
            for c in self.store.containers(row.uid):
                process.kill(c.pid, c.start_ticks)
            self.store.update_pod(row.uid, phase="Pending")
            return
        ctx = self.context(row)
        ref = self.pod_ref(row)
        specs = {c["name"]: (c, init) for c, init in views.containers_of(row.body)}
        for crow in self.store.containers(row.uid):
            if crow.name not in specs:
                continue
            container, init = specs[crow.name]
            try:
                spec = self.setup.process(ctx, container, init)
            except RemoraError as exc:
                self.store.update_pod(row.uid, message=exc.one_line())
                continue
            adopted = self.supervisor.adopt(ref, crow.name, spec, crow)
            log.info("pod %s/%s container %s: %s", row.namespace, row.name, crow.name,
                     "adopted" if adopted else "gone, restarting")

    # -- helpers ----------------------------------------------------------------------------
    def node_net(self, index: int) -> topology.NodeNet:
        return self.nodes[index - 1]

    def pod_dir(self, row: PodRow) -> Path:
        return self.config.pods_root / f"{row.namespace}_{row.name}_{row.uid}"

    def context(self, row: PodRow) -> PodContext:
        return PodContext(row.namespace, row.name, row.uid, row.netns, row.ip, row.node,
                          self.node_net(row.node).netns, row.body, self.pod_dir(row),
                          self.config.state_dir, self.snapshot, tuple(row.addresses))

    def pod_ref(self, row: PodRow) -> PodRef:
        policy = row.body.get("spec", {}).get("restartPolicy") or "Always"
        return PodRef(row.namespace, row.name, row.uid, row.netns, policy)

    # -- one pass ---------------------------------------------------------------------------
    def reconcile_once(self, full: bool = True) -> None:
        """One pass. With FULL false (a quiet tick) only the supervisor runs, unless a
        container changed, a pod is between states, or the last full pass is FULL_EVERY old.
        """
        changed = self.supervisor.tick()
        now = time.monotonic()
        if not (full or changed or self._busy or now - self._last_full >= FULL_EVERY):
            return
        self._last_full = now
        self._controllers()
        rows = self.store.list_pods()
        self._busy = self._awaiting_available or any(
            r.phase != "Running" or r.deleting or r.uid in self._retry for r in rows)
        if any(r.phase == "Pending" and not r.deleting for r in rows):
            # prepare() gets the cluster as it is now, services applied with the pod included
            services = views.services(self.store, self.plan)
            self.snapshot = views.snapshot(self.store, services,
                                           views.pod_objects(self.store, self.nodes))
        budget = self._start_budget(rows)
        held = False
        for row in rows:
            if row.phase == "Pending" and not row.deleting and \
                    time.monotonic() >= self._retry.get(row.uid, 0.0):
                if budget <= 0:
                    held = True  # waits its turn; _busy keeps the passes coming
                    continue
                budget -= 1
            try:
                self._pod(row)
            except RemoraError as exc:
                self._retry[row.uid] = time.monotonic() + RETRY_AFTER
                self.store.update_pod(row.uid, message=exc.one_line())
            except Exception as exc:  # a bug in a hook must not starve the other pods
                self._retry[row.uid] = time.monotonic() + RETRY_AFTER
                self.store.update_pod(row.uid, message=f"{type(exc).__name__}: {exc}")
                log.exception("pod %s/%s", row.namespace, row.name)
        if self.supervisor.tick():
            self._busy = True  # a container just started or changed: look again next tick
        self._services()
        if held and self._start_budget(self.store.list_pods()) > 0:
            # pods of this wave are Ready already (a plain container is as soon as it
            # runs): the next wave starts now, not a tick later (50 plain pods took 3.4 s
            # in waves of 6 against 1.4 s before the waves)
            self.wake.set()

    def _start_budget(self, rows: list[PodRow]) -> int:
        """How many Pending pods may start in this pass: at most MAX_STARTING pods are
        between Pending and Ready at once, so a Deployment of hundreds starts in waves and
        the host stays responsive (each meshed pod starts three processes). A pod that
        started more than STARTING_FOR ago no longer counts (a crash-looping pod must not
        hold the others back for ever)."""
        now = time.monotonic()
        ready = views.ready_by_uid(self.store)
        live = {r.uid for r in rows}
        self._starting = {uid: t for uid, t in self._starting.items()
                          if uid in live and not ready.get(uid) and now - t < STARTING_FOR}
        limit = int(os.environ.get("REMORA_MAX_STARTING") or MAX_STARTING)
        return max(1, limit) - len(self._starting)

    def ready_times(self) -> dict[str, float]:
        """ready_since as the controller's last pass left it (for readers on other
        threads: the API's view)."""
        return dict(self._ready_since)

    def ready_since(self) -> dict[str, float]:
        """Pod uid -> when it became Ready, for the pods Ready now. A pod already Ready
        when this runtime first looks (the daemon restarted) counts from its app
        containers' last start, the closest the store knows."""
        ready = views.ready_by_uid(self.store)
        now = time.time()
        started: dict[str, float] = {}
        for c in self.store.containers():
            if not c.init and ready.get(c.pod_uid) and c.pod_uid not in self._ready_since:
                started[c.pod_uid] = max(started.get(c.pod_uid, 0.0), c.started or now)
        first, self._looked = not self._looked, True
        self._ready_since = {uid: self._ready_since.get(uid) or (
            min(started.get(uid, now), now) if first else now)
            for uid, ok in ready.items() if ok}
        return dict(self._ready_since)

    def _controllers(self) -> None:
        pods = self.store.list_pods()
        ready = views.ready_by_uid(self.store)
        since = self.ready_since()
        now = time.time()
        awaiting = False
        deployments = {(d["metadata"].get("namespace", "default"), d["metadata"]["name"]): d
                       for d in self.store.list_objects("Deployment")}
        for (ns, name), spec_deployment in deployments.items():
            owned = [p for p in pods if p.owner_kind == "Deployment" and p.namespace == ns
                     and p.owner_name == name]
            # what the controller acts on: a paused Deployment's pods keep the template
            # rolled out last (controller.rolled_out); one created paused has none
            acting = controller.rolled_out(
                spec_deployment, desired_revisions(self.store, ns, name),
                {p.template_hash for p in owned if not p.deleting})
            deployment = acting or spec_deployment
            min_ready = controller.min_ready_seconds(spec_deployment)
            available = {p.uid: controller.available(since.get(p.uid), min_ready, now)
                         for p in owned}
            awaiting = awaiting or any(ready.get(u) and not a for u, a in available.items())
            plan = controller.plan_deployment(deployment, [
                controller.OwnedPod(p.name, p.template_hash, available[p.uid],
                                    bool(p.deleting), p.created) for p in owned])
            if acting is None or rollout.resuming(spec_deployment,
                                                  self._kept_status(spec_deployment)):
                # created paused: no ReplicaSet; just resumed: the resumed condition is
                # written before the rollout proceeds (rollout.resuming), next pass
                plan = controller.Plan(create=0, delete=())
            current = controller.template_hash(deployment)
            try:
                self._rollout_status(deployment, owned, ready, current, available,
                                     controller.template_hash(spec_deployment))
            except Exception:  # the status is worth less than the pods of this pass
                log.exception("status of deployment %s/%s", ns, name)
            self._scaling_events(deployment, owned, plan, current)
            for _ in range(plan.create):
                pod = controller.pod_from_template(deployment, uuid.uuid4().hex)
                self._create_pod(pod, "Deployment", name, current)
            for doomed in plan.delete:
                if self.mark_deleting(ns, doomed):
                    thash = next((p.template_hash for p in owned if p.name == doomed), "")
                    self._record(self._replicaset(ns, name, thash), "SuccessfulDelete",
                                 f"Deleted pod: {doomed}", component="replicaset-controller")
        for sized in [k for k in self._rs_sizes if k[:2] not in deployments]:
            del self._rs_sizes[sized]  # a Deployment deleted: its ReplicaSets went with it
        bare = {(p["metadata"].get("namespace", "default"), p["metadata"]["name"]): p
                for p in self.store.list_objects("Pod")}
        for key, pod in bare.items():
            if self.store.get_pod(*key) is None:
                self._create_pod(pod, "", "", "")
        for p in pods:
            gone = (p.owner_kind == "Deployment" and (p.namespace, p.owner_name)
                    not in deployments) or (not p.owner_kind and (p.namespace, p.name)
                                            not in bare)
            if gone and not p.deleting:
                self.mark_deleting(p.namespace, p.name)
        self._awaiting_available = awaiting  # the passes keep coming until it is

    def _create_pod(self, pod: dict[str, Any], owner_kind: str, owner: str, thash: str) -> None:
        ns = pod["metadata"].get("namespace", "default")
        pod = json.loads(json.dumps(pod))
        pod["metadata"]["namespace"] = ns
        uid = str(uuid.uuid4())
        pod["metadata"]["uid"] = uid
        # a Deployment's pods are its ReplicaSet's to create (controller_utils.go
        # CreatePods records SuccessfulCreate / FailedCreate on the ReplicaSet)
        rs = self._replicaset(ns, owner, thash) if owner_kind == "Deployment" else None
        try:
            admitted = self.setup.admit(pod, self.store.get_object("Namespace", "", ns))
        except Exception as exc:
            text = exc.one_line() if isinstance(exc, RemoraError) else repr(exc)
            key = f"{ns}/{pod['metadata']['name'].rsplit('-', 1)[0]}: {text}"
            if key not in self._admission_errors:  # once, not on every pass
                self._admission_errors.add(key)
                log.error("admission of pod %s failed", key)
            if rs is not None:  # counted on every pass, as the ReplicaSet's retries are
                self._record(rs, "FailedCreate", f"Error creating: {text}",
                             type_="Warning", component="replicaset-controller")
            return
        node = self._pick_node(admitted)
        name = admitted["metadata"]["name"]
        self.store.insert_pod(PodRow(
            uid=uid, namespace=ns, name=name, node=node,
            netns=naming.pod_netns(self.config.prefix, uid), body=admitted,
            owner_kind=owner_kind, owner_name=owner, template_hash=thash))
        if rs is not None:
            self._record(rs, "SuccessfulCreate", f"Created pod: {name}",
                         component="replicaset-controller")
        # the scheduler's binding (schedule_one.go: "Successfully assigned %v/%v to %v")
        self._record(Involved("Pod", ns, name, uid), "Scheduled",
                     f"Successfully assigned {ns}/{name} to {self.node_net(node).netns}",
                     component="default-scheduler")

    # -- events -----------------------------------------------------------------------------
    def _record(self, involved: Involved, reason: str, message: str, *,
                type_: str = "Normal", component: str, host: str = "") -> None:
        try:
            self.events.record(involved, reason, message, type_=type_, component=component,
                               host=host)
        except Exception:  # an event is worth less than the pass that records it
            log.exception("recording event %s of %s/%s", reason, involved.namespace,
                          involved.name)

    @staticmethod
    def _replicaset(namespace: str, deployment: str, thash: str) -> Involved:
        # the ReplicaSet the Kubernetes API serves for this template, with its uid
        # (remora.kubeapi.views.replicasets)
        name = f"{deployment}-{thash}"
        return Involved("ReplicaSet", namespace, name,
                        naming.object_uid("ReplicaSet", namespace, name, ""), "apps/v1")

    def _replicasets_seen(self, deployment: dict[str, Any]) -> set[str]:
        """The pod-template-hashes of the ReplicaSets DEPLOYMENT's controller has made:
        those its kept status names (remora.node.rollout), else (a lab that kept none)
        its revision history but the current template, which may be new."""
        meta = deployment["metadata"]
        ns, name = meta.get("namespace", "default"), meta["name"]
        state = self.store.get_meta(rollout_key(ns, name))
        uid = naming.object_uid("Deployment", ns, name, meta.get("creationTimestamp"))
        if isinstance(state, dict) and state.get("uid") == uid and "replicaSets" in state:
            return set(state["replicaSets"])
        history = {e["hash"] for e in desired_revisions(self.store, ns, name)}
        return history - {controller.template_hash(deployment)}

    def _kept_status(self, deployment: dict[str, Any]) -> dict[str, Any] | None:
        """DEPLOYMENT's status as the controller kept it last (None: none, or it was
        kept for an earlier Deployment of the name)."""
        meta = deployment["metadata"]
        ns, name = meta.get("namespace", "default"), meta["name"]
        state = self.store.get_meta(rollout_key(ns, name))
        uid = naming.object_uid("Deployment", ns, name, meta.get("creationTimestamp"))
        if isinstance(state, dict) and state.get("uid") == uid:
            status = state.get("status")
            return status if isinstance(status, dict) else None
        return None

    def _rollout_status(self, deployment: dict[str, Any], owned: list[PodRow],
                        ready: dict[str, bool], current: str, available: dict[str, bool],
                        updated: str) -> None:
        """The deployment controller's status.conditions (remora.node.rollout), kept in
        the store as the controller keeps them in the object (they outlive a restart of
        the daemon), for the Deployment as it is now: its uid tells a Deployment deleted
        and made again from the one the status was kept for. AVAILABLE tells which pods
        have been Ready for minReadySeconds; UPDATED is the pod-template-hash of the
        spec's template (updatedReplicas: 0 while a paused Deployment's change waits)."""
        meta = deployment["metadata"]
        ns, name = meta.get("namespace", "default"), meta["name"]
        key = rollout_key(ns, name)
        uid = naming.object_uid("Deployment", ns, name, meta.get("creationTimestamp"))
        state = self.store.get_meta(key)
        mine = state if isinstance(state, dict) and state.get("uid") == uid else None
        known = self._replicasets_seen(deployment)
        # the ReplicaSet of this template existed before this pass if the controller
        # saw it already, or it has pods (a lab that kept no status: "Found")
        existed = current in known or any(p.template_hash == current for p in owned)
        live = [(p.template_hash, ready.get(p.uid, False)) for p in owned if not p.deleting]
        n_available = sum(1 for p in owned if not p.deleting and available.get(p.uid))
        status = rollout.sync(deployment, (mine or {}).get("status"),
                              rollout.counts(live, updated, n_available), existed,
                              time.time())
        # the pass that only writes the resumed condition makes no ReplicaSet
        made = set() if rollout.resuming(deployment, (mine or {}).get("status")) \
            else {current}
        fresh = {"uid": uid, "status": status, "replicaSets": sorted(known | made)}
        if fresh != state:
            self.store.set_meta(key, fresh)

    def _scaling_events(self, deployment: dict[str, Any], owned: list[PodRow],
                        plan: controller.Plan, current: str) -> None:
        """The deployment controller's ScalingReplicaSet for what this pass does: the lab
        creates and deletes a Deployment's pods itself, so each ReplicaSet's size is the
        number of its pods that are not terminating once the pass is done, and an event
        is recorded when that differs from the size last set (sync.go scaleReplicaSet:
        "Scaled up|down replica set X to N from M"; a new one, "Scaled up replica set X
        to N"). A pod deleted by a user and replaced leaves the size as it was, as on a
        cluster, where only the ReplicaSet controller acts on it."""
        meta = deployment["metadata"]
        ns, name = meta.get("namespace", "default"), meta["name"]
        sizes = Counter(p.template_hash for p in owned if not p.deleting)
        sizes[current] += plan.create
        for doomed in plan.delete:
            thash = next((p.template_hash for p in owned if p.name == doomed), None)
            if thash is not None:
                sizes[thash] -= 1
        known = {k[2] for k in self._rs_sizes if k[:2] == (ns, name)}
        involved = Involved("Deployment", ns, name, naming.object_uid(
            "Deployment", ns, name, meta.get("creationTimestamp")), "apps/v1")
        # the old ReplicaSets first, then the new one
        for thash in sorted(known | set(sizes), key=lambda h: (h == current, h)):
            before, after = self._rs_sizes.get((ns, name, thash)), max(0, sizes[thash])
            if after == (before or 0):
                if before is None and thash == current:
                    self._rs_sizes[(ns, name, thash)] = after
                continue
            rs = f"{name}-{thash}"
            message = (f"Scaled up replica set {rs} to {after}" if before is None else
                       f"Scaled {'up' if after > before else 'down'} replica set {rs} to "
                       f"{after} from {before}")
            self._record(involved, "ScalingReplicaSet", message,
                         component="deployment-controller")
            self._rs_sizes[(ns, name, thash)] = after

    def _container_event(self, pod: PodRef, container: str, init: bool, reason: str,
                         detail: str) -> None:
        """kubelet's events for what the supervisor did to a container (pkg/kubelet/
        events; the messages of kuberuntime_container.go and kuberuntime_manager.go)."""
        row = self.store.get_pod(pod.namespace, pod.name)
        if row is None or row.uid != pod.uid:
            return
        host = self.node_net(row.node).netns
        field = f"spec.{'initContainers' if init else 'containers'}{{{container}}}"
        involved = Involved("Pod", pod.namespace, pod.name, pod.uid, field_path=field)
        spec = row.body.get("spec") or {}
        image = next((str(c.get("image") or "") for key in ("initContainers", "containers")
                      for c in spec.get(key) or [] if c.get("name") == container), "")
        if reason == "Started":
            # the lab's images are on the machine already: kubelet's Pulled for an image
            # present (IfNotPresent), then Created and Started, each counted per run
            for why, message in (
                    ("Pulled", f'Container image "{image}" already present on machine'),
                    ("Created", f"Created container: {container}"),
                    ("Started", f"Started container {container}")):
                self._record(involved, why, message, component="kubelet", host=host)
        elif reason == "Failed":
            self._record(involved, "Failed", f"Error: {detail}", type_="Warning",
                         component="kubelet", host=host)
        elif reason == "BackOff":
            self._record(involved, "BackOff", f"Back-off restarting failed container "
                         f"{container} in pod {pod.name}_{pod.namespace}({pod.uid})",
                         type_="Warning", component="kubelet", host=host)
        elif reason == "Unhealthy":  # prober.go's recordContainerEvent, a Warning
            self._record(involved, "Unhealthy", detail, type_="Warning", component="kubelet",
                         host=host)
        elif reason == "ProbeWarning":  # prober.go: a probe that succeeded with a warning
            self._record(involved, "ProbeWarning", detail, type_="Warning",
                         component="kubelet", host=host)
        elif reason == "Killing":  # killContainer: the reason given, else "Stopping ..."
            self._record(involved, "Killing", detail or f"Stopping container {container}",
                         component="kubelet", host=host)

    def _pick_node(self, pod: dict[str, Any]) -> int:
        wanted = pod.get("spec", {}).get("nodeName")
        for node in self.nodes:
            if wanted in (node.netns, str(node.index)):
                return node.index
        counts = {n.index: 0 for n in self.nodes}
        for p in self.store.list_pods():
            counts[p.node] = counts.get(p.node, 0) + 1
        return min(counts, key=lambda i: (counts[i], i))

    def mark_deleting(self, namespace: str, name: str) -> bool:
        row = self.store.get_pod(namespace, name)
        if row is not None and not row.deleting:
            self.store.update_pod(row.uid, deleting=1)
            self.wake.set()
            return True
        return False

    # -- pod lifecycle ----------------------------------------------------------------------
    def _pod(self, row: PodRow) -> None:
        if row.deleting:
            self._delete_step(row)
            return
        if time.monotonic() < self._retry.get(row.uid, 0.0):
            return
        if row.phase == "Pending":
            row = self._network(row)
            self._starting[row.uid] = time.monotonic()
            self.setup.prepare(self.context(row))
            self.store.update_pod(row.uid, phase="Init", message="")
            row.phase = "Init"
        if row.phase == "Init" and self._inits_done(row):
            self._start_apps(row)
        elif row.phase == "Running":
            self._start_apps(row)  # containers added by a restart of the daemon, if any

    def _network(self, row: PodRow) -> PodRow:
        if not row.ip:
            used = self.store.used_ips("pod")
            ips = ipam.allocate_pod_ips(self.plan, row.node, used)
            for ip in ips:
                self.store.hold_ip("pod", ip, f"pod:{row.uid}")
            row.ip = ips[0]
            # a single-stack IPv4 pod keeps the store as before (ip alone)
            row.ips = ips if len(ips) > 1 or self.plan.ipv6 else []
            self.store.update_pod(row.uid, ip=row.ip, ips=row.ips)
        node = self.node_net(row.node)
        topology.attach_pod(node, row.netns, naming.pod_veth(row.uid), row.addresses)
        etcfiles.write(row.netns, row.namespace, self.plan.dns_ips(), row.addresses, row.name,
                       self.config.domain, self.config.etc_netns)
        self.pod_dir(row).mkdir(parents=True, exist_ok=True)
        return row

    def _inits_done(self, row: PodRow) -> bool:
        ctx, ref = self.context(row), self.pod_ref(row)
        for container in row.body.get("spec", {}).get("initContainers") or []:
            name = container["name"]
            state = self.supervisor.row(row.uid, name)
            if state is None:
                self.supervisor.start_container(ref, name, self.setup.process(ctx, container, True),
                                                init=True)
                return False
            if not (state.state == "Terminated" and state.exit_code == 0):
                return False
        return True

    def _start_apps(self, row: PodRow) -> None:
        ctx, ref = self.context(row), self.pod_ref(row)
        earlier = {c.name: c for c in self.store.containers(row.uid)}
        for container in row.body.get("spec", {}).get("containers") or []:
            if not self.supervisor.has(row.uid, container["name"]):
                spec = self.setup.process(ctx, container, False)
                before = earlier.get(container["name"])
                restarts = before.restarts + 1 if before and before.pid else 0
                self.supervisor.start_container(ref, container["name"], spec,
                                                restarts=restarts)
        if row.phase != "Running":
            self.store.update_pod(row.uid, phase="Running", message="")

    def _delete_step(self, row: PodRow) -> None:
        if row.uid not in self._stopping:
            listed = not self._pushed_endpoints.isdisjoint(row.addresses)
            self._stopping[row.uid] = (time.monotonic(), listed)
        if row.uid not in self._signalled:
            if self._sidecars_may_send(row, *self._stopping[row.uid]):
                self._busy = True  # it serves on; the next tick looks again
                return
            self._signalled.add(row.uid)
            self.supervisor.stop_pod(row.uid, self.config.stop_grace)
        if not self.supervisor.pod_stopped(row.uid):
            return
        self.remove_pod(row)
        self._stopping.pop(row.uid, None)
        self._signalled.discard(row.uid)

    def _sidecars_may_send(self, row: PodRow, since: float, listed: bool) -> bool:
        """Whether a sidecar may still send to ROW, whose deletion began at SINCE
        (SIDECAR_READ above): the sidecars' config listed it as an endpoint then, and
        still does (the push that drops it not made yet) or was pushed without it too
        recently to have been read. A pod no Service selected waits for nothing;
        PUSH_WAIT bounds the wait."""
        now = time.monotonic()
        if not listed or now - since > PUSH_WAIT:
            return False
        if not self._pushed_endpoints.isdisjoint(row.addresses):
            return True
        pushed_at = self._pushes.pushed_at
        return pushed_at is not None and now - pushed_at < SIDECAR_READ

    def remove_pod(self, row: PodRow) -> None:
        if row.phase != "Pending" or row.ip:
            try:
                self.setup.cleanup(self.context(row))
            except Exception:
                log.exception("cleanup of pod %s/%s", row.namespace, row.name)
        topology.detach_pod(self.node_net(row.node).netns, row.netns, naming.pod_veth(row.uid),
                            row.addresses)
        etcfiles.remove(row.netns, self.config.etc_netns)
        shutil.rmtree(self.pod_dir(row), ignore_errors=True)
        shutil.rmtree(self.config.log_root / self.pod_ref(row).log_dir_name, ignore_errors=True)
        self.supervisor.forget(row.uid)
        self.store.delete_pod(row.uid)
        self._retry.pop(row.uid, None)

    # -- services ---------------------------------------------------------------------------
    def _services(self) -> None:
        services = views.services(self.store, self.plan)
        pods = views.pod_objects(self.store, self.nodes)
        snapshot = views.snapshot(self.store, services, pods)
        self.snapshot = snapshot
        signature = json.dumps([services, {f"{k[0]}/{k[1]}": v
                                           for k, v in snapshot.endpoints.items()},
                                sorted((p["status"].get("podIP", ""), p["metadata"]["namespace"])
                                       for p in pods),
                                # policies and namespace labels change the sidecars' config
                                snapshot.policies, snapshot.namespaces],
                               sort_keys=True, default=str)
        if signature != self._signature:
            self._apply_services(services, snapshot, pods)
            self._signature = signature
        now = time.monotonic()
        if not self._pushes.due(signature, now):
            if self._pushes.pending(signature):
                self._busy = True  # a deferred push: the next tick must come
            return
        contexts = [self.context(r) for r in self.store.list_pods() if r.ip and not r.deleting]
        try:
            self.setup.cluster_changed(snapshot, contexts)
        except Exception:
            log.exception("pod setup failed to take the new cluster state")
            self._busy = True  # tried again next pass
            return
        self._pushes.done(signature, now, time.monotonic() - now)
        self._pushed_endpoints = frozenset(e["ip"] for eps in snapshot.endpoints.values()
                                           for e in eps)

    def _apply_services(self, services: list[dict[str, Any]], snapshot: ClusterSnapshot,
                        pods: list[dict[str, Any]]) -> None:
        """The node's side of a cluster change, at once: the DNS zone and kube-proxy."""
        # DNS first: it must not wait for a rules reload that may fail and be retried.
        self.zone = views.zone(self.config.domain, services, pods)
        resolver.write_zone(self.config.state_dir, self.zone)  # the resolver process reads it
        ports = views.service_ports(services, snapshot.endpoints, pods)
        rules = kubeproxy.render([p for p in ports if ":" not in p.cluster_ip])
        rules6 = kubeproxy.render([p for p in ports if ":" in p.cluster_ip], ipv6=True) \
            if self.plan.ipv6 else None
        for node in self.nodes:
            kubeproxy.apply(node.netns, rules)
            if rules6 is not None:
                kubeproxy.apply(node.netns, rules6, ipv6=True)
