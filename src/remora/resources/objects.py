"""Typed Kubernetes objects: the subset of core/v1 and apps/v1 that the lab runs.

Field names follow the Kubernetes API (``matchLabels``, ``targetPort``, ``appProtocol``)
in their Python spelling; ``to_dict()`` gives the API's own JSON back, which is what
``remora get -o yaml|json`` prints and what the strategic-merge patch works on.
Reference: https://kubernetes.io/docs/reference/kubernetes-api/
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ObjectMeta:
    name: str
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    def to_dict(self, namespaced: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if namespaced:
            out["namespace"] = self.namespace
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class ContainerPort:
    containerPort: int
    name: str = ""
    protocol: str = "TCP"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"containerPort": self.containerPort}
        if self.name:
            out["name"] = self.name
        out["protocol"] = self.protocol
        return out


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str = ""
    # valueFrom (downward API) is kept as written: the node runtime resolves fieldRefs.
    valueFrom: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.valueFrom is not None:
            out["valueFrom"] = self.valueFrom
        else:
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class Container:
    name: str
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    imagePullPolicy: str = ""
    workingDir: str = ""
    # Kept verbatim: the injector writes Istio's securityContext, the runtime reads
    # runAsUser/runAsGroup/capabilities from it.
    securityContext: dict[str, Any] | None = None
    # Kept verbatim: the node runtime runs the readiness, liveness and startup probes
    # (tcpSocket, httpGet, exec: remora.node.probes).
    readinessProbe: dict[str, Any] | None = None
    livenessProbe: dict[str, Any] | None = None
    startupProbe: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "image": self.image}
        if self.command:
            out["command"] = list(self.command)
        if self.args:
            out["args"] = list(self.args)
        if self.env:
            out["env"] = [e.to_dict() for e in self.env]
        if self.ports:
            out["ports"] = [p.to_dict() for p in self.ports]
        if self.imagePullPolicy:
            out["imagePullPolicy"] = self.imagePullPolicy
        if self.workingDir:
            out["workingDir"] = self.workingDir
        if self.securityContext is not None:
            out["securityContext"] = self.securityContext
        if self.readinessProbe is not None:
            out["readinessProbe"] = self.readinessProbe
        if self.livenessProbe is not None:
            out["livenessProbe"] = self.livenessProbe
        if self.startupProbe is not None:
            out["startupProbe"] = self.startupProbe
        return out


@dataclass(frozen=True)
class PodSpec:
    containers: tuple[Container, ...]
    initContainers: tuple[Container, ...] = ()
    serviceAccountName: str = "default"
    restartPolicy: str = "Always"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.initContainers:
            out["initContainers"] = [c.to_dict() for c in self.initContainers]
        out["containers"] = [c.to_dict() for c in self.containers]
        out["serviceAccountName"] = self.serviceAccountName
        out["restartPolicy"] = self.restartPolicy
        return out


@dataclass(frozen=True)
class PodTemplate:
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: PodSpec

    def to_dict(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if self.labels:
            meta["labels"] = dict(self.labels)
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        return {"metadata": meta, "spec": self.spec.to_dict()}


@dataclass(frozen=True)
class Namespace:
    metadata: ObjectMeta
    kind: str = "Namespace"

    def to_dict(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Namespace",
                "metadata": self.metadata.to_dict(namespaced=False)}


@dataclass(frozen=True)
class Deployment:
    metadata: ObjectMeta
    selector: dict[str, str]
    template: PodTemplate
    replicas: int = 1
    # spec.strategy.rollingUpdate as given (an int or "N%"), None when left out: the
    # node's controller applies the lab's defaults (maxSurge 1, maxUnavailable 0)
    max_surge: int | str | None = None
    max_unavailable: int | str | None = None
    strategy: str = "RollingUpdate"  # or "Recreate" (spec.strategy.type)
    # spec.progressDeadlineSeconds as given (None: the apiserver's default, 600)
    progress_deadline: int | None = None
    # spec.revisionHistoryLimit as given (None: the apiserver's default, 10)
    revision_history: int | None = None
    # spec.minReadySeconds: how long a pod stays Ready before it counts as available
    # (the node's controller: remora.node.rollout), 0 by default as the apiserver's
    min_ready: int = 0
    # spec.paused: the controller rolls no template change out while it is set
    # (`kubectl rollout pause|resume`; remora.node.controller.rolled_out)
    paused: bool = False
    kind: str = "Deployment"

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "replicas": self.replicas,
            "selector": {"matchLabels": dict(self.selector)},
            "template": self.template.to_dict(),
        }
        rolling = {k: v for k, v in (("maxSurge", self.max_surge),
                                     ("maxUnavailable", self.max_unavailable))
                   if v is not None}
        if self.strategy != "RollingUpdate":
            spec["strategy"] = {"type": self.strategy}
        elif rolling:
            spec["strategy"] = {"type": "RollingUpdate", "rollingUpdate": rolling}
        if self.progress_deadline is not None:
            spec["progressDeadlineSeconds"] = self.progress_deadline
        if self.revision_history is not None:
            spec["revisionHistoryLimit"] = self.revision_history
        if self.min_ready:
            spec["minReadySeconds"] = self.min_ready
        if self.paused:
            spec["paused"] = True
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self.metadata.to_dict(),
            "spec": spec,
        }


@dataclass(frozen=True)
class ServicePort:
    port: int
    targetPort: int | str
    name: str = ""
    protocol: str = "TCP"
    appProtocol: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        out["port"] = self.port
        out["targetPort"] = self.targetPort
        out["protocol"] = self.protocol
        if self.appProtocol:
            out["appProtocol"] = self.appProtocol
        return out


@dataclass(frozen=True)
class Service:
    metadata: ObjectMeta
    selector: dict[str, str]
    ports: tuple[ServicePort, ...]
    clusterIP: str = ""  # "" until the node runtime allocates one
    type: str = "ClusterIP"
    kind: str = "Service"
    # dual stack, as given (the node runtime defaults and checks them as the API server
    # does: remora.node.ipam.service_families); empty when not given
    ipFamilies: tuple[str, ...] = ()
    ipFamilyPolicy: str = ""
    clusterIPs: tuple[str, ...] = ()

    @property
    def fqdn(self) -> str:
        return f"{self.metadata.name}.{self.metadata.namespace}.svc.cluster.local"

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": self.type}
        if self.clusterIP:
            spec["clusterIP"] = self.clusterIP
        if self.clusterIPs:
            spec["clusterIPs"] = list(self.clusterIPs)
        if self.ipFamilies:
            spec["ipFamilies"] = list(self.ipFamilies)
        if self.ipFamilyPolicy:
            spec["ipFamilyPolicy"] = self.ipFamilyPolicy
        if self.selector:
            spec["selector"] = dict(self.selector)
        spec["ports"] = [p.to_dict() for p in self.ports]
        return {"apiVersion": "v1", "kind": "Service", "metadata": self.metadata.to_dict(),
                "spec": spec}


@dataclass(frozen=True)
class Pod:
    metadata: ObjectMeta
    spec: PodSpec
    kind: str = "Pod"

    def to_dict(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": self.metadata.to_dict(),
                "spec": self.spec.to_dict()}


# Istio's security kinds live in their own module (imported here, after ObjectMeta exists).
from remora.resources.security import AuthorizationPolicy, PeerAuthentication  # noqa: E402

Object = Namespace | Deployment | Service | Pod | PeerAuthentication | AuthorizationPolicy


def ref(obj: Object) -> str:
    """kind/namespace/name as errors name an object (namespace left out for Namespace)."""
    if isinstance(obj, Namespace):
        return f"Namespace/{obj.metadata.name}"
    return f"{obj.kind}/{obj.metadata.namespace}/{obj.metadata.name}"
