"""MeshSetup: the node's pod-setup hook that makes a pod meshed, as Istio and kubelet do.

The node runtime (remora.node.hooks) calls it at each step of a pod's life:

- admit: Istio's sidecar injector (remora.controlplane.adapters.inject_dict) adds the
  istio-init and istio-proxy containers when the namespace or pod asks for injection;
- prepare: with the pod's network in place, the control plane generates the sidecar's
  Envoy config and writes it as path-watched xDS files into the pod's folder;
- process: istio-init runs its injected args through the capture API
  (remora.lab.istio_init), istio-proxy runs `remora proxy` or Envoy on those files,
  an app container runs its command or its image's mapped command;
- cluster_changed: services, endpoints, PeerAuthentication or AuthorizationPolicy
  objects changed, every sidecar's files are regenerated (only files whose content
  changed are replaced, so Envoy and `remora proxy` pick up the new endpoints and RBAC
  filters without a restart);
- between changes, a timer re-issues each meshed pod's workload certificate once half
  its life is gone (pilot-agent's secret rotation), so an idle lab never lets one
  expire. Only the PEM files are replaced; the sidecars reload them through the SDS
  files' watched_directory, and open connections keep their sessions.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import logging
import sys
import threading
from typing import Any

from remora.controlplane.adapters import inject_dict, pod_from_dict, snapshot_from_dicts
from remora.controlplane.ca import DEFAULT_TTL, CertificateAuthority, parse_ttl
from remora.controlplane.files import write_config
from remora.controlplane.generate import generate
from remora.controlplane.injection import DUAL_STACK_METADATA
from remora.controlplane.model import Snapshot
from remora.errors import RemoraError
from remora.lab import settings as lab_settings
from remora.lab import sidecar
from remora.lab.images import ImageMap
from remora.lab.settings import LabSettings
from remora.node import podspec
from remora.node.hooks import ClusterSnapshot, PodContext, PodSetup
from remora.node.process import ProcessSpec

log = logging.getLogger("remora.lab")
INIT_CONTAINER = "istio-init"
PROXY_CONTAINER = "istio-proxy"
CONFIG_DIR = "envoy"
CERTS_DIR = "certs"  # cert-chain.pem, key.pem, root-cert.pem: Istio's /etc/certs names
MAX_ROTATION_CHECK = 60.0  # seconds between certificate checks (less for short TTLs)


def is_meshed(pod: dict[str, Any]) -> bool:
    return any(c.get("name") == PROXY_CONTAINER
               for c in (pod.get("spec") or {}).get("containers") or [])


def pod_ref(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"pod {meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def cluster_snapshot(cluster: ClusterSnapshot) -> Snapshot:
    """The control plane's view of the node's cluster, security policies included."""
    return snapshot_from_dicts(cluster.namespaces, cluster.services, cluster.pods,
                               cluster.policies)


class MeshSetup(PodSetup):
    daemon_services = ("remora.kubeapi.daemon_hook:start",)  # kubectl's API (docs/kubeapi.md)

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self._ca: CertificateAuthority | None = None
        # The reconciler thread writes configs; the rotation timer only certificates.
        # One lock keeps them from writing one pod's PEM files at once.
        self._lock = threading.RLock()
        self._meshed: dict[str, PodContext] = {}  # uid -> context, for the rotation timer
        self._timer: threading.Thread | None = None

    # -- what the lab was started with -----------------------------------------------------
    def settings(self, ctx: PodContext) -> LabSettings:
        return lab_settings.load(ctx.state_dir)

    # -- the hooks ---------------------------------------------------------------------------
    def admit(self, pod: dict[str, Any], namespace: dict[str, Any] | None) -> dict[str, Any]:
        # a dual-stack cluster's mesh sets proxyMetadata ISTIO_DUAL_STACK=true, which the
        # injector hands to istio-init (ip6tables rules too) and istio-proxy; an IPv6-only
        # pod needs no flag: istio-iptables sees its first address is IPv6
        metadata = DUAL_STACK_METADATA if len(self.ip_families) > 1 else None
        return inject_dict(pod, namespace, metadata)

    def prepare(self, ctx: PodContext) -> None:
        if is_meshed(ctx.pod):
            if ctx.cluster.pods or ctx.cluster.services or ctx.cluster.policies:
                # the runtime's snapshot of this pass: the policies applied with the pod
                self.snapshot = cluster_snapshot(ctx.cluster)
            self._write(ctx)
            self._track([ctx], replace=False)

    def process(self, ctx: PodContext, container: dict[str, Any], init: bool) -> ProcessSpec:
        name = container.get("name")
        settings = self.settings(ctx)
        runnable = copy.deepcopy(container)
        if init and name == INIT_CONTAINER:
            # The injected args start with the program name, istio-iptables.
            runnable["command"] = [sys.executable, "-m", "remora.lab.istio_init"]
        elif not init and name == PROXY_CONTAINER:
            runnable["command"] = sidecar.argv(settings, ctx.pod_dir / CONFIG_DIR /
                                               "bootstrap.json")
            runnable["args"] = []
        else:
            images = ImageMap.from_file(settings.image_map or None)
            runnable["command"] = images.command(container, pod_ref(ctx.pod))
            runnable["args"] = []
        spec = podspec.process_spec(ctx.pod, runnable, ctx.ip, node_name=ctx.node_netns)
        if not init and name == PROXY_CONTAINER:
            spec = self._sidecar_identity(ctx, spec)
        return spec

    def cluster_changed(self, snapshot: ClusterSnapshot, pods: list[PodContext]) -> None:
        try:
            self.snapshot = cluster_snapshot(snapshot)
        except RemoraError as exc:
            # apply validated every policy; one that no longer parses (a newer remora's
            # field) must not stop endpoint updates: keep the previous policies
            log.error("security policies ignored: %s", exc.one_line())
            self.snapshot = cluster_snapshot(ClusterSnapshot(
                snapshot.namespaces, snapshot.services, snapshot.pods, snapshot.endpoints,
                []))
        meshed = [ctx for ctx in pods if is_meshed(ctx.pod)]
        for ctx in meshed:
            try:
                self._write(ctx)
            except Exception:  # one pod's config must not keep the others stale
                log.exception("sidecar config of %s", pod_ref(ctx.pod))
        self._track(meshed, replace=True)

    def cleanup(self, ctx: PodContext) -> None:
        with self._lock:
            self._meshed.pop(ctx.uid, None)

    # -- helpers -----------------------------------------------------------------------------
    def _certs(self, ctx: PodContext) -> str | None:
        """The pod's workload certificate from the lab's CA (issued again when half its
        life is gone), as pilot-agent's secret manager keeps it; None without mTLS."""
        settings = self.settings(ctx)
        if not settings.mtls:
            return None
        certs = ctx.pod_dir / CERTS_DIR
        account = (ctx.pod.get("spec") or {}).get("serviceAccountName") or "default"
        with self._lock:
            if self._ca is None:
                self._ca = CertificateAuthority(ctx.state_dir / lab_settings.CA_DIR)
            if self._ca.ensure_workload(certs, ctx.namespace, account, ttl=cert_ttl(settings)):
                log.info("%s: workload certificate issued", pod_ref(ctx.pod))
        return str(certs)

    # -- rotation on an idle lab ----------------------------------------------------------------
    def _track(self, contexts: list[PodContext], replace: bool) -> None:
        with self._lock:
            if replace:
                self._meshed = {}
            self._meshed.update((ctx.uid, ctx) for ctx in contexts)
            if self._timer is None and contexts:
                self._timer = threading.Thread(target=self._rotate_forever,
                                               name="cert-rotation", daemon=True)
                self._timer.start()

    def _rotate_forever(self) -> None:
        stop = threading.Event()  # never set: the thread ends with the daemon process
        while True:
            try:
                every = self._check_every()
            except Exception:  # e.g. lab.json being rewritten: try again later
                log.exception("certificate rotation check")
                every = MAX_ROTATION_CHECK
            if stop.wait(every):
                return
            self.rotate_due()

    def _check_every(self) -> float:
        with self._lock:
            contexts = list(self._meshed.values())
        ttl = cert_ttl(self.settings(contexts[0])) if contexts else DEFAULT_TTL
        return max(0.5, min(MAX_ROTATION_CHECK, ttl.total_seconds() / 10))

    def rotate_due(self) -> None:
        """Re-issue every tracked pod's certificate that is past half its life."""
        with self._lock:
            contexts = list(self._meshed.values())
        for ctx in contexts:
            if not ctx.pod_dir.is_dir():
                continue  # removed between the listing and now
            try:
                self._certs(ctx)
            except Exception:
                log.exception("certificate rotation of %s", pod_ref(ctx.pod))

    def _write(self, ctx: PodContext) -> list[str]:
        directory = ctx.pod_dir / CONFIG_DIR
        # the pod's own addresses (status.podIPs) decide its IP families: in prepare() the
        # pass's snapshot does not hold this pod's addresses yet
        config = generate(self.snapshot, pod_from_dict(ctx.pod), ctx.ip, str(directory),
                          certs_dir=self._certs(ctx), ips=ctx.ips)
        changed = write_config(config)
        if changed:
            log.info("%s: sidecar config %s", pod_ref(ctx.pod), " ".join(changed))
        return changed

    def _sidecar_identity(self, ctx: PodContext, spec: ProcessSpec) -> ProcessSpec:
        config_dir = ctx.pod_dir / CONFIG_DIR
        uid, gid, caps = sidecar.identity(spec.uid, spec.gid, spec.caps, spec.argv[0],
                                          config_dir)
        # (caps unchanged: identity found the uid can run it as it is, no second walk)
        if uid is not None and caps != spec.caps and not sidecar.can_run_as(
                uid, gid, spec.argv[0], config_dir, read_search=True):
            # no execute bit for uid 1337 even with CAP_DAC_READ_SEARCH: the container
            # fails with its own "Permission denied", said here first
            log.warning("%s: uid %d cannot execute %s", pod_ref(ctx.pod), uid, spec.argv[0])
        return dataclasses.replace(spec, uid=uid, gid=gid, caps=caps)


def cert_ttl(settings: LabSettings) -> dt.timedelta:
    return parse_ttl(settings.cert_ttl) if settings.cert_ttl else DEFAULT_TTL


LabSetup = MeshSetup  # the name docs/node.md uses for the lab's hook
