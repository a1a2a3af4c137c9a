"""The node runtime's dicts (Kubernetes JSON as the store keeps it) <-> typed objects.

The node runtime and its PodSetup hooks (remora.node.hooks) pass pods, services and
namespaces around as the API's JSON, with status filled in (``status.podIP``,
``status.ready``, ``spec.clusterIP``; for dual stack ``status.podIPs`` and
``spec.clusterIPs``). These helpers read them leniently, since runtime
bookkeeping fields are not manifest fields and draw no warnings, and give injection
results back as dicts that keep every field remora does not model.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any

from remora.controlplane.injection import inject
from remora.controlplane.model import Snapshot, Workload
from remora.errors import RemoraError
from remora.resources.loader import parse_object
from remora.resources.objects import Namespace, Pod, Service
from remora.resources.security import AuthorizationPolicy, PeerAuthentication

_API = {"Pod": "v1", "Service": "v1", "Namespace": "v1"}
log = logging.getLogger("remora.controlplane")


def _ref(obj: dict[str, Any], kind: str) -> str:
    meta = obj.get("metadata") or {}
    return f"{kind.lower()}/{meta.get('name', '?')} in namespace {meta.get('namespace', '?')}"


def _typed(obj: dict[str, Any], kind: str) -> Any:
    doc = {"apiVersion": _API[kind], "kind": kind,
           **{k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}}
    parsed, _warnings = parse_object(doc, f"{kind} from the node store")
    if parsed is None or parsed.kind != kind:
        raise RemoraError(f"expected a {kind}, got {obj.get('kind')!r}")
    return parsed


def pod_from_dict(obj: dict[str, Any]) -> Pod:
    pod = _typed(obj, "Pod")
    assert isinstance(pod, Pod)
    return pod


def service_from_dict(obj: dict[str, Any]) -> Service:
    svc = _typed(obj, "Service")
    assert isinstance(svc, Service)
    return svc


def namespace_from_dict(obj: dict[str, Any]) -> Namespace:
    ns = _typed(obj, "Namespace")
    assert isinstance(ns, Namespace)
    return ns


def snapshot_from_dicts(namespaces: Iterable[dict[str, Any]],
                        services: Iterable[dict[str, Any]],
                        pods: Iterable[dict[str, Any]],
                        policies: Iterable[dict[str, Any]] = ()) -> Snapshot:
    """A Snapshot from the store's objects: pods count as endpoints when they have an IP,
    are ready and are not being deleted (Istio sends only ready endpoints). POLICIES are
    the store's PeerAuthentication and AuthorizationPolicy objects (any order)."""
    workloads = []
    for p in pods:
        status = p.get("status") or {}
        ready = bool(status.get("ready")) and not (p.get("metadata") or {}).get(
            "deletionTimestamp")
        ip = str(status.get("podIP") or "")
        # status.podIPs ([{"ip": ...}], the primary first) for dual-stack pods
        ips = tuple(str(x.get("ip")) for x in status.get("podIPs") or []
                    if isinstance(x, dict) and x.get("ip"))
        workloads.append(Workload(pod=pod_from_dict(p), ip=ip or (ips[0] if ips else ""),
                                  ready=ready, ips=ips if len(ips) > 1 else ()))
    typed_services = []
    cluster_ips: dict[str, tuple[str, ...]] = {}
    for obj in services:
        try:
            svc = service_from_dict(obj)
        except RemoraError as exc:
            # One stored object that no longer validates (stored by an older remora, or
            # through a path that skipped validation) must not stop the config updates of
            # every sidecar, as istiod keeps pushing when it cannot convert one Service:
            # leave it out and name it.
            log.warning("%s left out of the sidecars' config: %s", _ref(obj, "Service"),
                        exc.one_line())
            continue
        typed_services.append(svc)
        # spec.clusterIPs (dual stack, the primary family first): the typed Service keeps
        # only clusterIP, so the control plane's view of the others lives in the snapshot
        ips = tuple(str(x) for x in (obj.get("spec") or {}).get("clusterIPs") or [] if x)
        if len(ips) > 1:
            cluster_ips[svc.fqdn] = ips
    pas, aps = security_from_dicts(policies)
    return Snapshot(services=tuple(typed_services),
                    workloads=tuple(workloads),
                    namespaces=tuple(namespace_from_dict(n) for n in namespaces),
                    peer_authentications=pas, authorization_policies=aps,
                    cluster_ips=cluster_ips)


def security_from_dicts(objs: Iterable[dict[str, Any]]
                        ) -> tuple[tuple[PeerAuthentication, ...], tuple[AuthorizationPolicy, ...]]:
    """Istio's security objects as the store keeps them (their own apiVersion/kind)."""
    pas: list[PeerAuthentication] = []
    aps: list[AuthorizationPolicy] = []
    for obj in objs:
        parsed, _warnings = parse_object(obj, f"{obj.get('kind')} from the node store")
        if isinstance(parsed, PeerAuthentication):
            pas.append(parsed)
        elif isinstance(parsed, AuthorizationPolicy):
            aps.append(parsed)
    return tuple(pas), tuple(aps)


def inject_dict(pod: dict[str, Any], namespace: dict[str, Any] | None,
                proxy_metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Admission: the pod dict with Istio's sidecar injected (unchanged when not injected);
    fields remora does not model (volumes, status, ...) are kept. PROXY_METADATA: the
    mesh's proxyMetadata (env of istio-init and istio-proxy)."""
    typed = pod_from_dict(pod)
    ns = namespace_from_dict(namespace) if namespace else None
    injected = inject(typed, ns, proxy_metadata=proxy_metadata)
    if injected is typed:
        return pod
    body = injected.to_dict()
    out = copy.deepcopy(pod)
    meta = out.setdefault("metadata", {})
    meta["labels"] = body["metadata"].get("labels", {})
    meta["annotations"] = body["metadata"].get("annotations", {})
    spec = out.setdefault("spec", {})
    spec["initContainers"] = body["spec"].get("initContainers", [])
    spec["containers"] = body["spec"]["containers"]
    return out
