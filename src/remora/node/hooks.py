"""The pluggable pod setup: what higher layers add to a pod's life on the node.

The reconciler owns the mechanics (namespace, veth, IP, DNS files, processes); a PodSetup
decides the content. The default runs each container's command/args as given. The lab
subclasses it to do what Istio's injector and kubelet do for a meshed pod:

  admit(pod, namespace)      -> the pod after admission (sidecar injection adds the
                                istio-init and istio-proxy containers and annotations)
  prepare(ctx)               -> before any container starts, with the network in place
                                (write the sidecar's Envoy bootstrap and xDS files)
  process(ctx, c, init)      -> the process for container C (map an image without a
                                command, e.g. istio-init -> `remora capture ...`, the
                                sidecar -> `remora proxy -c ...` or `envoy -c ...`)
  cluster_changed(snap, pods)-> services, endpoints or security policies changed (rewrite
                                the sidecars' xDS files so Envoy picks them up without a
                                restart)
  cleanup(ctx)               -> the pod is gone (its processes stopped, before the
                                namespace is deleted)

A PodSetup is loaded in the daemon by "module:attribute" (`remora node daemon --pod-setup`)
so the lab can plug in without the node runtime importing it.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from remora.errors import UsageError
from remora.node import podspec
from remora.node.process import ProcessSpec


@dataclass(frozen=True)
class ClusterSnapshot:
    """What a control plane needs: every namespace, service and pod with its status."""

    namespaces: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)  # spec.clusterIP filled in
    pods: list[dict[str, Any]] = field(default_factory=list)  # status.podIP, phase, ready
    # (namespace, service) -> [{"ip", "port", "name", "protocol", "pod", "ready"}]
    endpoints: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    # Istio's PeerAuthentication and AuthorizationPolicy objects, as applied
    policies: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class PodContext:
    namespace: str
    name: str
    uid: str
    netns: str  # `ip netns` name of the pod
    ip: str
    node: int
    node_netns: str
    pod: dict[str, Any]  # the pod object after admission (metadata + spec)
    pod_dir: Path  # a private folder for files the setup writes (removed with the pod)
    state_dir: Path
    # The cluster as of the last reconcile pass (services with ClusterIPs, pods, endpoints),
    # so prepare() can write a sidecar's full config before it starts.
    cluster: ClusterSnapshot = field(default_factory=lambda: ClusterSnapshot())
    # every address of the pod (status.podIPs), the primary (ip) first
    ips: tuple[str, ...] = ()

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns


class DaemonService(Protocol):
    """A server the daemon runs beside its socket API until it stops."""

    def close(self) -> None: ...


class NodeRequests(Protocol):
    """The daemon's request handler (remora.node.api.Api): one op dict in, its result."""

    def handle(self, req: dict[str, Any]) -> Any: ...


# MODULE:ATTR of `async def start(node_api, state_dir) -> DaemonService | None`
StartService = Callable[[NodeRequests, Path], Awaitable[DaemonService | None]]


class PodSetup:
    """Default setup: no admission changes, containers run their command/args."""

    # Servers the daemon starts beside its socket API, named "module:attribute" like the
    # PodSetup itself, so the node runtime never imports the layers above it (the lab
    # names its Kubernetes API here: remora.kubeapi.daemon_hook:start).
    daemon_services: tuple[str, ...] = ()

    # the cluster's IP families, the primary first ("IPv4", "IPv6"); the runtime sets it
    # from its address plan before any hook runs (an injector needs it: dual stack)
    ip_families: tuple[str, ...] = ("IPv4",)

    def admit(self, pod: dict[str, Any], namespace: dict[str, Any] | None) -> dict[str, Any]:
        return pod

    def prepare(self, ctx: PodContext) -> None:
        return None

    def process(self, ctx: PodContext, container: dict[str, Any], init: bool) -> ProcessSpec:
        return podspec.process_spec(ctx.pod, container, ctx.ip, node_name=ctx.node_netns)

    def cluster_changed(self, snapshot: ClusterSnapshot, pods: list[PodContext]) -> None:
        return None

    def cleanup(self, ctx: PodContext) -> None:
        return None


def load(target: str | None) -> PodSetup:
    """Instantiate the PodSetup named "module:attribute" (a class or a factory)."""
    if not target:
        return PodSetup()
    module_name, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr or "PodSetup")
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"pod setup {target!r} cannot be loaded ({exc})",
                         "pass --pod-setup MODULE:ATTRIBUTE naming a PodSetup subclass") from None
    setup = factory()
    if not isinstance(setup, PodSetup):
        raise UsageError(f"pod setup {target!r} is not a remora.node.hooks.PodSetup",
                         "subclass remora.node.hooks.PodSetup")
    return setup


def load_service(target: str) -> StartService:
    """The start function of a daemon service named "module:attribute"."""
    module_name, _, attr = target.partition(":")
    try:
        start: StartService = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"daemon service {target!r} cannot be loaded ({exc})",
                         "name an async start(node_api, state_dir) as MODULE:ATTRIBUTE"
                         ) from None
    return start
