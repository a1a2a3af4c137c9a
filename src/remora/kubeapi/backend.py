"""What the API needs from the lab, as one protocol, and its implementation over the node
daemon's own request handler (remora.node.api.Api) — so the API, the remora CLI and the
controllers read and write the same store through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from remora.errors import RemoraError
from remora.node.hooks import NodeRequests  # the daemon's request handler

if TYPE_CHECKING:
    from remora.lab.images import ImageMap


@dataclass(frozen=True)
class LogRef:
    text: str
    path: Path
    container: str


class Backend(Protocol):
    def objects(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        """Objects of a store kind (Pod, Service, Deployment, Namespace, policies)."""

    def admit(self, objects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
        """Validate OBJECTS as `remora apply` does; return them normalised, and warnings.
        Raises RemoraError for an invalid object (nothing is stored)."""

    def apply(self, objects: list[dict[str, Any]]) -> list[str]:
        """Store OBJECTS, all or nothing."""

    def delete(self, kind: str, namespace: str, name: str) -> list[str]: ...

    def pod_metadata(self, namespace: str, pod: str, labels: dict[str, str],
                     annotations: dict[str, str]) -> None:
        """Set a running pod's labels and annotations (what a pod update may change)."""

    def logs(self, namespace: str, pod: str, container: str | None, previous: bool,
             tail: int | None) -> LogRef: ...

    def exec_argv(self, namespace: str, pod: str, container: str | None) -> list[str]:
        """The argv prefix that runs a command in the pod (`ip netns exec NETNS`)."""

    def nodes(self) -> list[dict[str, Any]]:
        """The lab's nodes: name, index, subnet, gateway, nodeIP (the daemon's `nodes`)."""

    def events(self) -> list[dict[str, Any]]:
        """The core/v1 Events the lab's controllers and kubelet recorded (remora.node.events),
        oldest first."""

    def managed_fields(self) -> list[dict[str, Any]]:
        """Every object's stored metadata.managedFields: {kind (the store's), namespace,
        name, uid, entries}."""

    def put_managed_fields(self, kind: str, namespace: str, name: str, uid: str,
                           entries: list[dict[str, Any]] | None) -> None:
        """Store an object's managedFields with it (None: forget them)."""


def admit(objects: list[dict[str, Any]], namespaces: list[dict[str, Any]],
          images: ImageMap) -> tuple[list[dict[str, Any]], list[str]]:
    """The checks of `remora apply` (remora.lab.manifests): the resources layer's
    validation, then Istio's injection and the image map on the pods it would make.
    Returns the objects as the resources layer writes them, and its warnings."""
    from remora.lab import manifests
    from remora.resources.loader import parse_object

    out, warnings = [], []
    for obj in objects:
        meta = obj.get("metadata") or {}
        typed, warned = parse_object(obj, f"{obj.get('kind')}/{meta.get('name')}")
        if typed is None:
            raise RemoraError(warned[0] if warned else "unknown kind",
                              "apply Namespace, Deployment, Service, Pod, "
                              "PeerAuthentication or AuthorizationPolicy")
        warnings += warned
        out.append(typed.to_dict())
    manifests.admission_check(out, manifests.namespace_objects(out, namespaces), images)
    return out, warnings




class NodeBackend:
    """Backend over the daemon's in-process request handler (the socket API's `handle`)."""

    def __init__(self, api: NodeRequests, state_dir: Path) -> None:
        self.api = api
        self.state_dir = state_dir

    def objects(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        return list(self.api.handle({"op": "get", "kind": kind, "namespace": namespace})
                    ["items"])

    def admit(self, objects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
        from remora.lab import settings as lab_settings
        from remora.lab.images import ImageMap

        settings = lab_settings.load(self.state_dir)
        images = ImageMap.from_file(settings.image_map or None)
        return admit(objects, self.objects("Namespace", None), images)

    def apply(self, objects: list[dict[str, Any]]) -> list[str]:
        return list(self.api.handle({"op": "apply", "objects": objects})["results"])

    def delete(self, kind: str, namespace: str, name: str) -> list[str]:
        return list(self.api.handle({"op": "delete", "kind": kind, "namespace": namespace,
                                     "name": name})["results"])

    def pod_metadata(self, namespace: str, pod: str, labels: dict[str, str],
                     annotations: dict[str, str]) -> None:
        self.api.handle({"op": "pod_metadata", "namespace": namespace, "pod": pod,
                         "labels": labels, "annotations": annotations})

    def logs(self, namespace: str, pod: str, container: str | None, previous: bool,
             tail: int | None) -> LogRef:
        got = self.api.handle({"op": "logs", "namespace": namespace, "pod": pod,
                               "container": container, "previous": previous, "tail": tail})
        return LogRef(str(got["text"]), Path(got["path"]), str(got["container"]))

    def exec_argv(self, namespace: str, pod: str, container: str | None) -> list[str]:
        return list(self.api.handle({"op": "exec", "namespace": namespace, "pod": pod,
                                     "container": container})["argv"])

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.api.handle({"op": "nodes"})["items"])

    def events(self) -> list[dict[str, Any]]:
        return list(self.api.handle({"op": "events"})["items"])

    def managed_fields(self) -> list[dict[str, Any]]:
        return list(self.api.handle({"op": "managed_fields"})["items"])

    def put_managed_fields(self, kind: str, namespace: str, name: str, uid: str,
                           entries: list[dict[str, Any]] | None) -> None:
        self.api.handle({"op": "put_managed_fields", "kind": kind, "namespace": namespace,
                         "name": name, "uid": uid, "entries": entries})
