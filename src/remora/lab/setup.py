"""MeshSetup: the node's pod-setup hook that makes a pod meshed, as Istio and kubelet do.

The node runtime (remora.node.hooks) calls it at each step of a pod's life:

- admit: Istio's sidecar injector (remora.controlplane.adapters.inject_dict) adds the
  istio-init and istio-proxy containers when the namespace or pod asks for injection;
- prepare: with the pod's network in place, the control plane generates the sidecar's
  Envoy config and writes it as path-watched xDS files into the pod's folder;
- process: istio-init runs its injected args through the capture API
  (remora.lab.istio_init), istio-proxy runs `remora proxy` or Envoy on those files,
  an app container runs its command or its image's mapped command;
- cluster_changed: services or endpoints changed, every sidecar's files are regenerated
  (only files whose content changed are replaced, so Envoy and `remora proxy` pick up
  the new endpoints without a restart).
"""

from __future__ import annotations

import copy
import logging
import sys
from typing import Any

from remora.controlplane.adapters import inject_dict, pod_from_dict, snapshot_from_dicts
from remora.controlplane.ca import CertificateAuthority
from remora.controlplane.files import write_config
from remora.controlplane.generate import generate
from remora.controlplane.model import Snapshot
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


def is_meshed(pod: dict[str, Any]) -> bool:
    return any(c.get("name") == PROXY_CONTAINER
               for c in (pod.get("spec") or {}).get("containers") or [])


def pod_ref(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"pod {meta.get('namespace', 'default')}/{meta.get('name', '?')}"


class MeshSetup(PodSetup):
    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self._ca: CertificateAuthority | None = None

    # -- what the lab was started with -----------------------------------------------------
    def settings(self, ctx: PodContext) -> LabSettings:
        return lab_settings.load(ctx.state_dir)

    # -- the hooks ---------------------------------------------------------------------------
    def admit(self, pod: dict[str, Any], namespace: dict[str, Any] | None) -> dict[str, Any]:
        return inject_dict(pod, namespace)

    def prepare(self, ctx: PodContext) -> None:
        if is_meshed(ctx.pod):
            self._write(ctx)

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
        self.snapshot = snapshot_from_dicts(snapshot.namespaces, snapshot.services,
                                            snapshot.pods)
        for ctx in pods:
            if not is_meshed(ctx.pod):
                continue
            try:
                self._write(ctx)
            except Exception:  # one pod's config must not keep the others stale
                log.exception("sidecar config of %s", pod_ref(ctx.pod))

    # -- helpers -----------------------------------------------------------------------------
    def _certs(self, ctx: PodContext) -> str | None:
        """The pod's workload certificate from the lab's CA (issued again when half its
        life is gone), as pilot-agent's secret manager keeps it; None without mTLS."""
        if not self.settings(ctx).mtls:
            return None
        if self._ca is None:
            self._ca = CertificateAuthority(ctx.state_dir / lab_settings.CA_DIR)
        certs = ctx.pod_dir / CERTS_DIR
        account = (ctx.pod.get("spec") or {}).get("serviceAccountName") or "default"
        self._ca.ensure_workload(certs, ctx.namespace, account)
        return str(certs)

    def _write(self, ctx: PodContext) -> list[str]:
        directory = ctx.pod_dir / CONFIG_DIR
        config = generate(self.snapshot, pod_from_dict(ctx.pod), ctx.ip, str(directory),
                          certs_dir=self._certs(ctx))
        changed = write_config(config)
        if changed:
            log.info("%s: sidecar config %s", pod_ref(ctx.pod), " ".join(changed))
        return changed

    def _sidecar_identity(self, ctx: PodContext, spec: ProcessSpec) -> ProcessSpec:
        gid = spec.gid if spec.gid is not None else sidecar.PROXY_GID
        uid = spec.uid
        if uid not in (None, 0) and not sidecar.can_run_as(uid, gid, spec.argv[0],
                                                            ctx.pod_dir / CONFIG_DIR):
            uid = 0  # see remora.lab.sidecar: gid 1337 alone keeps capture correct
        return ProcessSpec(argv=spec.argv, env=spec.env, uid=uid, gid=gid, caps=spec.caps,
                           cwd=spec.cwd, ready_port=spec.ready_port,
                           ready_host=spec.ready_host)


LabSetup = MeshSetup  # the name docs/node.md uses for the lab's hook
