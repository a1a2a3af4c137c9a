"""The API's request handling, pure over a Backend: a Request in, and out a Response or
a description of a stream the server edge runs (a watch, a followed log, an exec).

Routes are the apiserver's: /api/v1/[namespaces/NS/]RESOURCE[/NAME[/SUBRESOURCE]] and
/apis/GROUP/VERSION/...; verbs by method (GET list/get/watch, POST create, PUT update,
PATCH patch, DELETE delete). Whatever is not served answers with the Status object the
apiserver would give (404 NotFound for an unknown path or resource, 405 MethodNotAllowed
for a verb a resource does not support), never with a traceback.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hmac
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from remora.errors import RemoraError
from remora.kubeapi import field_validation as fv
from remora.kubeapi import managed_fields as mf
from remora.kubeapi import openapi, patches, table, views
from remora.kubeapi import resources as res
from remora.kubeapi.backend import Backend
from remora.kubeapi.messages import PROTOBUF_MAGIC, ApiError, Request, Response, not_found
from remora.kubeapi.resources import Resource
from remora.kubeapi.versions import Key, Pair, Versions, key_of, parse_version
from remora.lab import selectors
from remora.node.controller import TEMPLATE_HASH_LABEL

NOT_FOUND = "the server could not find the requested resource"


# who the kubeconfig's token is: the lab has one user, allowed everything (no RBAC), as a
# cluster's admin (system:masters) is
LAB_USER = {"username": "remora-admin", "groups": ["system:masters", "system:authenticated"]}
_REVIEWS = ("SelfSubjectAccessReview", "SelfSubjectRulesReview", "SelfSubjectReview")


@functools.cache
def _host_info() -> dict[str, str]:
    """What a Node's nodeInfo tells of the machine: the lab's nodes are this host's."""
    import platform

    from remora import __version__

    try:
        pretty = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        pretty = ""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    memory = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{line.split()[1]}Ki"
    return {"os": pretty, "kernel": platform.release(), "arch": arch,
            "runtime": f"remora://{__version__}", "cpu": str(os.cpu_count() or 1),
            "memory": memory}


def no_such_path(message: str = NOT_FOUND) -> ApiError:
    """The apiserver's 404 for a path it does not serve: NewNotFound of an empty
    GroupResource and name, so `details` is there and empty. kubectl reads that: `debug`
    takes it for "ephemeral containers are disabled" (debug.go), and dereferenced the
    missing details (a panic) before."""
    return ApiError(404, message, details={})
# what a store object carries that a write must not send back (the apiserver owns it)
_SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp",
                  "managedFields", "deletionTimestamp", "deletionGracePeriodSeconds",
                  "ownerReferences", "selfLink")


def _unserved(plural: str) -> ApiError:
    # kubectl prints the message as is (`kubectl create configmap`: "failed to create
    # configmap: ..."): the apiserver's words, then what the lab serves
    return no_such_path(f"{NOT_FOUND} ({plural}: the lab does not serve them; it stores "
                        f"{res.writable_kinds()})")


def _unstored_warning(plural: str) -> str:
    return (f"{plural}: the lab does not store them (it stores {res.writable_kinds()}); "
            "their lists are always empty, served so that kubectl apply --prune's default "
            "allowlist resolves")


@dataclass(frozen=True)
class Target:
    resource: Resource
    version: str
    namespace: str | None
    name: str | None
    subresource: str | None


@dataclass
class Watch:
    """A watch on a list: the server edge polls `Handler.view` and sends `events`."""

    target: Target
    since: int | None
    timeout: float | None
    as_table: bool
    matches: Callable[[dict[str, Any]], bool]
    include: str = "Metadata"  # a Table row's object: None, Metadata or Object


@dataclass
class LogStream:
    path: Path
    text: str  # what is there now (tailLines applied); then appended bytes follow
    namespace: str = "default"
    pod: str = ""
    uid: str = ""  # the followed pod's uid: a new pod of the same name ends the stream too
    remaining: int | None = None  # limitBytes left after `text`; the stream ends at 0


@dataclass
class Exec:
    argv: list[str]
    protocol: str
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


@dataclass
class PortForward:
    """A pod's port-forward: SPDY streams tunnelled in a WebSocket, each stream pair a
    connection to a port on the pod's loopback, as kubelet's runtime dials it."""

    netns: str
    protocol: str
    pod: str
    uid: str


Result = Response | Watch | LogStream | Exec | PortForward
PORTFORWARD_PROTOCOL = "SPDY/3.1+portforward.k8s.io"  # client-go's tunneling_dialer.go


def _field_selector(text: str) -> Callable[[dict[str, Any]], bool]:
    reqs: list[tuple[str, str, bool]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        for op, equal in (("!=", False), ("==", True), ("=", True)):
            if op in part:
                path, value = part.split(op, 1)
                reqs.append((path.strip(), value.strip(), equal))
                break
        else:
            raise ApiError(400, f"invalid field selector {text!r}: {part!r} is not "
                           "FIELD=VALUE or FIELD!=VALUE")
    return lambda obj: all((views.field_value(obj, p) == v) == eq for p, v, eq in reqs)


def _label_selector(text: str) -> Callable[[dict[str, Any]], bool]:
    try:
        match = selectors.parse(text)
    except RemoraError as exc:
        raise ApiError(400, f"unable to parse requirement: {exc.problem}") from None
    return lambda obj: match(obj["metadata"].get("labels") or {})


# NamespaceLifecycle's immortal namespaces (k8s.io/apiserver
# pkg/admission/plugin/namespace/lifecycle: default, kube-system, kube-public)
_UNDELETABLE_NAMESPACES = ("default", "kube-system", "kube-public")
_PROPAGATION = ("Orphan", "Background", "Foreground")


def _delete_options(req: Request) -> tuple[bool, str]:
    """(dry run?, propagationPolicy) of a DELETE. kubectl sends them as a DeleteOptions
    JSON body (`{"kind":"DeleteOptions","dryRun":["All"],"propagationPolicy":...}`),
    other clients as query parameters; the apiserver reads both (the body wins)."""
    opts: dict[str, Any] = {}
    if req.body.strip():
        body = req.json()
        if not isinstance(body, dict):
            raise ApiError(400, "the DeleteOptions body must be a JSON object")
        opts = body
    dry = opts.get("dryRun")
    if dry is None:
        dry = req.query.get("dryRun") or []
    if not isinstance(dry, list):
        raise ApiError(400, f"dryRun must be a list, not {dry!r}")
    for value in dry:
        if value != "All":  # apimachinery ValidateDryRun: only "All" is valid
            raise ApiError(422, f'dryRun: Unsupported value: "{value}": supported values: '
                           '"All"')
    policy = opts.get("propagationPolicy") or req.arg("propagationPolicy")
    orphan = opts.get("orphanDependents")
    if orphan is None and req.arg("orphanDependents"):
        orphan = req.flag("orphanDependents")
    if policy and orphan is not None:
        raise ApiError(422, "propagationPolicy: Invalid value: the OrphanDependents field "
                       "and the PropagationPolicy field cannot be both set")
    if orphan is not None:  # the deprecated form of Orphan / Background
        policy = "Orphan" if orphan else "Background"
    policy = policy or "Background"
    if policy not in _PROPAGATION:
        raise ApiError(422, f'propagationPolicy: Unsupported value: "{policy}": supported '
                       'values: "Foreground", "Background", "Orphan"')
    return bool(dry), str(policy)


def _unsupported_deployment_fields(name: str, obj: dict[str, Any]) -> None:
    """Deployment fields a cluster honours that the lab's controller cannot: refused by
    name (422) rather than stored and ignored."""
    spec = obj.get("spec") or {}
    # spec.paused (`kubectl rollout pause`) is honoured: remora.node.controller.rolled_out
    strategy = spec.get("strategy") or {}
    kind = strategy.get("type") if isinstance(strategy, dict) else None
    if kind not in (None, "RollingUpdate", "Recreate"):
        # the apiserver's ValidateDeploymentStrategy message
        raise ApiError(422, f'Deployment.apps "{name}" is invalid: spec.strategy.type: '
                       f'Unsupported value: "{kind}": supported values: "Recreate", '
                       '"RollingUpdate"')


def _only_added(given: Any, defaulted: Any) -> bool:
    """Whether DEFAULTED is GIVEN with fields added and none changed or dropped."""
    if isinstance(given, dict):
        return isinstance(defaulted, dict) and all(
            k in defaulted and _only_added(v, defaulted[k]) for k, v in given.items())
    if isinstance(given, list):
        return isinstance(defaulted, list) and len(given) == len(defaulted) and all(
            _only_added(g, d) for g, d in zip(given, defaulted, strict=True))
    return bool(given == defaulted)


def _stored_pod_maps(meta: dict[str, Any], labels: Any, annotations: Any) -> None:
    """META with a pod's LABELS and ANNOTATIONS as the node stores them (pod_metadata): an
    empty map is no map (omitempty)."""
    for key, value in (("labels", labels), ("annotations", annotations)):
        if value:
            meta[key] = copy.deepcopy(value)
        else:
            meta.pop(key, None)


class ManagedFields:
    """Every object's managedFields: the object's uid ("" until a create's object is
    first read) and its managers, by (store kind, namespace, name). Read from the
    backend's store once, then written through to it: this API is the store's only
    writer of them."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._held: dict[tuple[str, str, str], tuple[str, list[mf.Entry]]] | None = None
        self._lock = threading.Lock()

    def _all(self) -> dict[tuple[str, str, str], tuple[str, list[mf.Entry]]]:
        with self._lock:
            if self._held is None:
                held = {}
                for row in self.backend.managed_fields():
                    entries = mf.decode(row["entries"])
                    if entries is not None:
                        held[(str(row["kind"]), str(row["namespace"]), str(row["name"]))] = \
                            (str(row["uid"]), entries)
                self._held = held
            return self._held

    def get(self, key: tuple[str, str, str]) -> tuple[str, list[mf.Entry]] | None:
        return self._all().get(key)

    def set(self, key: tuple[str, str, str], uid: str, entries: list[mf.Entry]) -> None:
        self._all()[key] = (uid, entries)
        self.backend.put_managed_fields(*key, uid, mf.encode(entries))

    def drop(self, key: tuple[str, str, str]) -> None:
        if self._all().pop(key, None) is not None:
            self.backend.put_managed_fields(*key, "", None)


class Handler:
    def __init__(self, backend: Backend, token: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.token = token
        self.clock = clock
        self.versions = Versions()
        self.started = clock()
        self.pod_wait = 1.0  # seconds a bare pod's create waits for the runtime's pod
        # metadata.managedFields by (store kind, namespace, name), kept in the node's
        # store with the objects (as kube-apiserver keeps them in the object in etcd), so
        # a restarted daemon's API knows who owns what
        self.managed = ManagedFields(backend)

    # -- entry -------------------------------------------------------------------------
    def handle(self, req: Request) -> Result:
        try:
            self._authenticate(req)
            result = self._route(req)
            if isinstance(result, Response) and req.warnings:
                result.warnings = req.warnings + result.warnings
            return result
        except ApiError as exc:
            return exc.response()
        except RemoraError as exc:
            return ApiError(422, exc.one_line()).response()

    def _authenticate(self, req: Request) -> None:
        if not self.token:
            return
        given = req.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            raise ApiError(401, "Unauthorized")

    def _route(self, req: Request) -> Result:
        parts = [p for p in req.path.split("/") if p]
        if req.path in ("/healthz", "/livez", "/readyz"):
            return Response(200, b"ok", "text/plain")
        if parts == ["version"]:
            return Response.of(res.version_info())
        if parts and parts[0] == "openapi":
            return openapi.document(parts[1:], req)
        discovery = (parts[:1] == ["api"] and len(parts) <= 2) or (
            parts[:1] == ["apis"] and len(parts) <= 3)
        if req.method != "GET" and discovery:
            raise ApiError(405, f"{req.method} is not supported on {req.path}")
        if parts == ["api"]:
            return Response.of(res.core_versions())
        if parts == ["apis"]:
            return Response.of(res.group_list())
        if parts == ["api", "v1"]:
            return Response.of(res.resource_list("", "v1"))
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in res.groups():
            return Response.of(res.api_group(parts[1]))
        if len(parts) == 3 and parts[0] == "apis":
            found = res.resource_list(parts[1], parts[2])
            if found is None:
                raise no_such_path()
            return Response.of(found)
        target = self._target(parts)
        return self._verb(req, target)

    def _target(self, parts: list[str]) -> Target:
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) > 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise no_such_path()
        namespace = None
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise no_such_path()
        resource = res.lookup(group, version, rest[0])
        if resource is None:
            raise _unserved(rest[0])
        if namespace is not None and not resource.namespaced:
            raise no_such_path()
        sub = rest[2] if len(rest) == 3 else None
        if sub == "ephemeralcontainers" and resource.plural == "pods":
            # as a cluster with EphemeralContainers off answers, so `kubectl debug` says
            # "ephemeral containers are disabled for this cluster" with this message
            raise no_such_path("the lab's pods take no ephemeral containers (kubectl "
                               "debug): use kubectl exec, which runs on the host's "
                               "filesystem in the pod's network namespace")
        if sub is not None and sub not in res.SUBRESOURCES.get(resource.plural, ()) and (
                sub, resource.plural) != ("attach", "pods"):
            raise no_such_path()
        return Target(resource, version, namespace, rest[1] if len(rest) > 1 else None, sub)

    def _verb(self, req: Request, t: Target) -> Result:
        r = t.resource
        verbs = set(r.verbs)
        if r.unstored and not (req.method == "GET" and t.name is None):
            raise _unserved(r.plural)  # only its (empty) list is served
        if t.subresource == "log":
            if req.method != "GET":
                raise ApiError(405, f"{req.method} is not supported on pods/log")
            return self._log(req, t)
        if t.subresource == "exec":
            if req.method not in ("GET", "POST"):
                raise ApiError(405, f"{req.method} is not supported on pods/exec")
            return self._exec(req, t)
        if t.subresource == "attach":
            # refused by name (it was the bare 404 "could not find the requested
            # resource"), after the pod is found, as the apiserver's AttachLocation
            self._one(Target(t.resource, t.version, t.namespace, t.name, None))
            raise ApiError(400, "attach is not served by the lab (its containers' stdin "
                           "and terminal are not kept): use kubectl logs -f for a "
                           "container's output, kubectl exec to run a command in it")
        if t.subresource == "portforward":
            if req.method not in ("GET", "POST"):
                raise ApiError(405, f"{req.method} is not supported on pods/portforward")
            return self._portforward(req, t)
        method = req.method
        if r.kind in _REVIEWS and method == "POST" and t.name is None:
            return self._review(req, t)
        if t.subresource == "scale":
            return self._scale(req, t)
        if t.name is None:
            if method == "GET" and "list" in verbs:
                if req.flag("watch"):
                    return self._watch(req, t)
                return self._list(req, t)
            if method == "POST" and "create" in verbs:
                return self._create(req, t)
        else:
            if method == "GET" and "get" in verbs:
                return self._get(req, t)
            if t.subresource is not None and method != "GET":
                raise ApiError(405, f"{method} on {r.plural}/{t.subresource} is not served by "
                               "the lab (its status is the controllers' own)")
            if method == "PUT" and "update" in verbs:
                return self._update(req, t)
            if method == "PATCH" and "patch" in verbs:
                return self._patch(req, t)
            if method == "DELETE" and "delete" in verbs:
                return self._delete(req, t)
        raise ApiError(405, f"{method} is not supported on {r.plural}"
                       f"{' collection' if t.name is None else ''} by the lab "
                       f"(it serves: {', '.join(sorted(verbs))})")

    # -- reading -----------------------------------------------------------------------
    def view(self, t: Target) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(node object, served object) pairs of T's resource, stamped with versions.

        Always reads every namespace, so that the version stamps also record deletions;
        T's namespace is applied after."""
        r = t.resource
        kind = r.kind
        gv = r.group_version
        if r.store_kind:
            raw = self.backend.objects(r.store_kind, None)
            if kind == "Namespace" and not any(n["metadata"]["name"] == "default"
                                               for n in raw):
                raw = [{"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "default"}}, *raw]
            # served (and stamped) in the resource's storage version whatever version
            # they were applied in, so a v1beta1 apply does not look like a change
            pairs = [(o, views.api_object(kind, gv, {**o, "apiVersion": gv})) for o in raw]
            for _, stored in pairs:
                self._served_managed_fields(r.store_kind, stored)
        elif r.unstored:
            pairs = []  # the lab holds none (resources.UNSTORED)
        elif kind == "CustomResourceDefinition":
            # installed with the lab: created when this API started
            served = [views.api_object(kind, gv, {**o, "metadata": {
                **o["metadata"], "creationTimestamp": self.started}}) for o in res.crds()]
            pairs = [(o, o) for o in served]
        else:
            if kind in ("Node", "Lease"):
                default = next((n for n in self.backend.objects("Namespace", None)
                                if n["metadata"]["name"] == "default"), None)
                created = views.api_object("Namespace", "v1", default)["metadata"][
                    "creationTimestamp"] if default else views.iso(self.started)
                derived = views.nodes(self.backend.nodes(), created, _host_info(),
                                      res.version_info()["gitVersion"])
                if kind == "Lease":
                    derived = views.leases(derived, self.clock())
            elif kind == "Event":
                derived = self.backend.events()
            elif kind == "ReplicaSet":
                raw_deployments = self.backend.objects("Deployment", None)
                deployments = [views.api_object("Deployment", "apps/v1", d)
                               for d in raw_deployments]
                raw_pods = self.backend.objects("Pod", None)
                derived = views.replicasets(deployments, raw_pods, {
                    (d["metadata"]["namespace"], d["metadata"]["name"]):
                    (d.get("remora") or {}).get("revisions") or [] for d in raw_deployments},
                    self.clock())
            else:
                pods = [views.api_object("Pod", "v1", p)
                        for p in self.backend.objects("Pod", None)]
                services = self.backend.objects("Service", None)
                derived = (views.endpoints(services, pods) if kind == "Endpoints"
                           else views.endpointslices(services, pods))
            pairs = [(o, o) for o in derived]
        self.versions.stamp(kind, [s for _, s in pairs], complete=True)
        asked = self._group_version(t)
        if asked != gv:
            # the apiserver converts to the version asked for (Istio's CRDs serve v1 and
            # v1beta1 of the same objects, conversion strategy None: only apiVersion
            # changes)
            pairs = [(o, {**s, "apiVersion": asked}) for o, s in pairs]
        if t.namespace is not None:
            pairs = [(o, s) for o, s in pairs if s["metadata"].get("namespace") == t.namespace]
        return pairs

    def _served_managed_fields(self, store_kind: str, served: dict[str, Any]) -> None:
        meta = served["metadata"]
        key = (store_kind, str(meta.get("namespace") or ""), str(meta.get("name")))
        held = self.managed.get(key)
        if held is None:
            return
        uid, entries = held
        if uid == "" and meta.get("uid"):  # a create's record: this is the object it made
            uid = str(meta["uid"])
            self.managed.set(key, uid, entries)
        if uid != str(meta.get("uid") or ""):
            self.managed.drop(key)  # another object of the same name now
            return
        if entries:  # omitempty: an object no manager holds a field of has none
            meta["managedFields"] = mf.encode(entries)

    def _entries(self, t: Target) -> list[mf.Entry]:
        held = self.managed.get((t.resource.store_kind or t.resource.kind,
                                 t.namespace or "", t.name or ""))
        return list(held[1]) if held else []

    def _one(self, t: Target) -> tuple[dict[str, Any], dict[str, Any]]:
        for raw, served in self.view(t):
            if served["metadata"]["name"] == t.name:
                return raw, served
        raise not_found(t.resource.plural, t.name or "", t.resource.group)

    def _matcher(self, req: Request) -> Callable[[dict[str, Any]], bool]:
        labels = _label_selector(req.arg("labelSelector"))
        fields = _field_selector(req.arg("fieldSelector"))
        return lambda obj: labels(obj) and fields(obj)

    def _list(self, req: Request, t: Target) -> Response:
        match = self._matcher(req)
        pairs = [(o, s) for o, s in self.view(t) if match(s)]
        version = str(self.versions.current)
        if table.wants_table(req.headers.get("accept", "")):
            if t.resource.unstored:
                # a person's `kubectl get configmaps` (it asks for a Table; kubectl's
                # prune and other clients ask for the list itself) is told why it is empty
                req.warnings.append(_unstored_warning(t.resource.plural))
            return Response.of(table.table(t.resource.kind, pairs, self.clock(), version,
                                           include=req.arg("includeObject", "Metadata")))
        return Response.of({"kind": f"{t.resource.kind}List",
                            "apiVersion": self._group_version(t),
                            "metadata": {"resourceVersion": version},
                            "items": [s for _, s in pairs]})

    def _get(self, req: Request, t: Target) -> Response:
        raw, served = self._one(t)
        if table.wants_table(req.headers.get("accept", "")):
            return Response.of(table.table(t.resource.kind, [(raw, served)], self.clock(),
                                           served["metadata"]["resourceVersion"],
                                           include=req.arg("includeObject", "Metadata")))
        return Response.of(served)

    @staticmethod
    def _group_version(t: Target) -> str:
        r = t.resource
        return f"{r.group}/{t.version}" if r.group else t.version

    def _watch(self, req: Request, t: Target) -> Watch:
        timeout = req.arg("timeoutSeconds")
        return Watch(t, parse_version(req.arg("resourceVersion")),
                     float(timeout) if timeout.isdigit() else None,
                     table.wants_table(req.headers.get("accept", "")), self._matcher(req),
                     req.arg("includeObject", "Metadata"))

    def watch_view(self, w: Watch) -> dict[Key, Pair]:
        """The watch's current view: (node, served) objects that match, by key."""
        kind = w.target.resource.kind
        return {key_of(kind, s): (o, s) for o, s in self.view(w.target) if w.matches(s)}

    def watch_start(self, w: Watch) -> tuple[dict[Key, Pair], list[tuple[str, Pair]]]:
        """The view a watch starts from and its first events: from a version, what changed
        since (deletions too); without one, every current object as ADDED."""
        current = self.watch_view(w)
        if w.since is None:
            return current, [("ADDED", p) for p in current.values()]
        changed = [("MODIFIED", p) for p in current.values()
                   if int(p[1]["metadata"]["resourceVersion"]) > w.since]
        gone = [("DELETED", (o, o)) for o in self.versions.deleted_since(
                    w.target.resource.kind, w.since)
                if (w.target.namespace is None or
                    o["metadata"].get("namespace") == w.target.namespace) and w.matches(o)]
        return current, changed + gone

    def watch_event(self, w: Watch, kind: str, pair: Pair, first: bool) -> bytes:
        body: dict[str, Any] = pair[1]
        if w.as_table:
            body = table.table(w.target.resource.kind, [pair], self.clock(),
                               body["metadata"].get("resourceVersion", ""), with_columns=first,
                               include=w.include)
        return json.dumps({"type": kind, "object": body}).encode() + b"\n"

    # -- writing -----------------------------------------------------------------------
    def _body(self, req: Request, t: Target) -> dict[str, Any]:
        obj = req.json()
        if not isinstance(obj, dict):
            raise ApiError(400, "the request body must be a JSON object")
        self._check_identity(obj, t)
        return obj

    def _check_identity(self, obj: dict[str, Any], t: Target) -> None:
        r = t.resource
        if obj.get("kind") != r.kind:
            raise ApiError(400, f"the object's kind {obj.get('kind')!r} does not match the "
                           f"resource {r.plural} (kind {r.kind})")
        gv = self._group_version(t)
        if obj.get("apiVersion") not in (gv, r.group_version):
            raise ApiError(400, f"the object's apiVersion {obj.get('apiVersion')!r} does not "
                           f"match {gv}")
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "metadata must be an object")
        if t.name is not None and meta.get("name", t.name) != t.name:
            raise ApiError(400, f"the name of the object ({meta.get('name')}) does not match "
                           f"the name on the URL ({t.name})")
        if r.namespaced:
            ns = t.namespace or "default"
            if meta.get("namespace", ns) != ns:
                raise ApiError(400, "the namespace of the provided object does not match "
                               "the namespace sent on the request")
            meta["namespace"] = ns
        if not meta.get("name") and meta.get("generateName"):
            raise ApiError(422, "metadata.generateName is not supported by the lab; "
                           "give metadata.name")

    def _store(self, req: Request, t: Target, obj: dict[str, Any], created: bool,
               applied: mf.Applied | None = None, subresource: str = "") -> Response:
        unknown = self._unknown_fields(req, t, obj)
        if t.resource.kind == "Pod" and not created:
            return self._update_pod(req, t, obj, applied)
        # the live object (stored, served) as this write finds it, read once for the
        # comparisons below (None for a create)
        current: tuple[dict[str, Any], dict[str, Any]] | None = None
        if not created:
            with contextlib.suppress(ApiError):
                current = self._one(Target(t.resource, t.version, t.namespace, t.name, None))
        if applied is not None:
            entries = applied.entries
        else:
            # any other write is an Update by its manager (fieldManager, else the
            # User-Agent's product): it takes the fields it adds or changes. The
            # managedFields the write carries, when they decode, replace the live
            # ones first (decodeLiveOrNew: kubectl's migration of client-side apply's
            # fields to its server-side manager is a JSON patch of them)
            if not created:
                # the served defaults a write spells out are no field it sets: the
                # apiserver's field manager compares defaulted objects
                obj = self._keep_stored_spec(t, obj, current)
            prior = mf.decode(obj["metadata"].get("managedFields"))
            if prior is None:
                prior = [] if created else self._entries(t)
            # the live object as the patch saw it (with the controller's revision
            # annotation), so a patch that keeps that annotation does not take it
            live = None if current is None else self._writable(*current)
            manager = mf.manager_name(req.arg("fieldManager"),
                                      req.headers.get("user-agent", ""))
            entries = mf.update(self._schema(t), prior, live, obj, manager,
                                self._group_version(t), self.clock(), subresource)
        meta = obj["metadata"]
        for f in _SERVER_FIELDS:
            meta.pop(f, None)
        obj.pop("status", None)
        if created and t.resource.namespaced:
            self._namespace_exists(str(meta.get("namespace") or "default"))
        if t.resource.kind == "Deployment":
            _unsupported_deployment_fields(t.name or str(meta.get("name")), obj)
            # the controller's revision annotation is served from the Deployment's numbered
            # templates (views.api_object), never stored: a copy that a patch or a PUT
            # brings back (kubectl rollout undo replaces /metadata/annotations) would be
            # stale after the next rollout, in `remora get -o yaml` too
            annotations = meta.get("annotations")
            if isinstance(annotations, dict) and views.REVISION in annotations:
                kept = {k: v for k, v in annotations.items() if k != views.REVISION}
                if kept:
                    meta["annotations"] = kept
                else:
                    meta.pop("annotations")
        if not created:
            self._immutable(t, obj)
        normal, warnings = self.backend.admit([obj])
        if not created:
            normal[0] = self._keep_stored_spec(t, normal[0], current)
            entries = self._unchanged_times(t, normal[0], entries, current)
        # the resources layer's "(ignored)" warning for a field Kubernetes does not know
        # either is the one above (or none, under Ignore), as the apiserver says it
        warnings = [w for w in warnings
                    if not any(w.endswith(f": unknown field {p} (ignored)") for p in unknown)]
        if req.arg("dryRun") != "All":
            self.backend.apply(normal)
            t = Target(t.resource, t.version, t.namespace or meta.get("namespace"),
                       meta["name"], None)
            key = (t.resource.store_kind or t.resource.kind, t.namespace or "", t.name or "")
            self.managed.set(key, "" if created else (self.managed.get(key) or ("", []))[0],
                             entries)
            try:
                served = self._one(t)[1]
            except ApiError:
                if t.resource.kind != "Pod":
                    raise
                # a bare pod is made by the runtime's next pass, not by the store write;
                # the apiserver answers 201 with the object at once (Pending, unscheduled)
                served = self._pending_pod(t, normal[0])
        else:
            served = self._dry_run_view(t, normal[0])
            served["metadata"].pop("managedFields", None)
            if entries:
                served["metadata"]["managedFields"] = mf.encode(entries)
        body = json.dumps(served).encode()
        resp = Response(201 if created else 200, body)
        resp.warnings = warnings
        return resp

    def _keep_stored_spec(self, t: Target, obj: dict[str, Any],
                          current: tuple[dict[str, Any], dict[str, Any]] | None
                          ) -> dict[str, Any]:
        """OBJ with the live object's stored spec when the two differ only by what the
        server defaults: the apiserver defaults a write before it compares it with what
        it holds, so sending back a fetched object (its served defaults spelled out:
        `kubectl get -o yaml` then `kubectl replace`/`apply`) is no change to the spec,
        keeps metadata.generation (registry/rest: generation grows only when the spec
        changes) and, for a Deployment, its pod template (no rollout). CURRENT: the live
        (stored, served) object, None when there is none."""
        if current is None:
            return obj
        raw, served = current
        kind = t.resource.kind
        if "spec" not in raw or obj.get("spec") == raw.get("spec"):
            return obj
        live_spec = served.get("spec") or {}
        new_spec = views.defaulted_spec(kind, views.api_object(
            kind, self._group_version(t), {**obj, "metadata": dict(obj.get("metadata") or {})}
        ).get("spec") or {}, live_spec)
        # defaulting only fills in what is absent: a given value the served form reads
        # otherwise (a strategy type the lab does not know, served as RollingUpdate) is
        # a change, left to validation
        if not _only_added(obj.get("spec"), new_spec) or \
                new_spec != views.defaulted_spec(kind, live_spec, live_spec):
            return obj
        return {**obj, "spec": copy.deepcopy(self._writable(raw)["spec"])}

    def _unchanged_times(self, t: Target, stored: dict[str, Any], entries: list[mf.Entry],
                         current: tuple[dict[str, Any], dict[str, Any]] | None
                         ) -> list[mf.Entry]:
        """A write that leaves the stored object as it was (an apply of the same
        manifest, fields the lab does not keep aside) changes no manager's time: the
        apiserver's field manager dates an entry only when its operation changed the
        object (managedfieldsupdater.go), so the object and its resourceVersion stay."""
        if current is None or self._writable(stored) != self._writable(current[0]):
            return entries
        before = {(e.ident, frozenset(e.fields)): e.time for e in self._entries(t)}
        return [mf.Entry(e.manager, e.operation, e.api_version, e.fields,
                         before.get((e.ident, frozenset(e.fields)), e.time), e.subresource)
                for e in entries]

    def _immutable(self, t: Target, obj: dict[str, Any]) -> None:
        """Fields the apiserver lets no update change (its 422 Invalid, same message)."""
        try:
            _, live = self._one(t)
        except ApiError:
            return
        spec, have = obj.get("spec") or {}, live.get("spec") or {}
        kind = t.resource.kind
        if kind == "Service":
            # ValidateServiceUpdate: "spec.clusterIPs[0]: Invalid value: ...: may not
            # change once set" (clusterIP and clusterIPs[0] are kept in step)
            for key in ("clusterIP", "clusterIPs"):
                wanted = spec.get(key)
                if key == "clusterIP":
                    wanted = [wanted] if wanted else None
                held = have.get("clusterIPs") or ([have["clusterIP"]] if have.get(
                    "clusterIP") else [])
                if wanted and held and list(wanted) != held[:len(wanted)]:
                    raise ApiError(422, f'Service "{t.name}" is invalid: spec.clusterIPs[0]: '
                                   f'Invalid value: {json.dumps(list(wanted))}: may not '
                                   "change once set")
        elif kind == "Deployment" and spec.get("selector") != have.get("selector"):
            # apps/v1 ValidateDeploymentUpdate: the selector is immutable
            raise ApiError(422, f'Deployment.apps "{t.name}" is invalid: spec.selector: '
                           f"Invalid value: {json.dumps(spec.get('selector'))}: field is "
                           "immutable")

    def _pending_pod(self, t: Target, obj: dict[str, Any]) -> dict[str, Any]:
        """A bare pod the runtime has not made yet, as the apiserver answers its create:
        phase Pending, no node, no IP. Waits a little for the runtime first (it wakes on
        the write) so that the answer usually carries the pod's own uid."""
        for _ in range(int(self.pod_wait / 0.1)):
            time.sleep(0.1)
            try:
                return self._one(t)[1]
            except ApiError:
                continue
        out = views.api_object("Pod", "v1", {**obj, "metadata": {
            **obj["metadata"], "creationTimestamp": self.clock()}})
        out["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        return out

    def _update_pod(self, req: Request, t: Target, obj: dict[str, Any],
                    applied: mf.Applied | None = None) -> Response:
        """An update of a running pod, bare or a Deployment's. As the apiserver
        (ValidatePodUpdate), only metadata (labels, annotations) and a few spec fields may
        change; of those the lab keeps labels and annotations. A container image is
        mutable on a cluster (kubelet restarts the container), but the lab's runtime
        cannot restart a container with another image, so that is refused by name rather
        than answered and ignored."""
        _, live = self._one(t)
        owner = self._pod_deployment(t)
        wanted = obj.get("spec") or {}
        have = live.get("spec") or {}
        if wanted != have:
            def images(spec: dict[str, Any]) -> dict[str, Any]:
                out = copy.deepcopy(spec)
                for key in ("containers", "initContainers"):
                    for c in out.get(key) or []:
                        if isinstance(c, dict):
                            c.pop("image", None)
                return out

            if images(wanted) == images(have):
                raise ApiError(422, f'Pod "{t.name}" is invalid: spec.containers[*].image: '
                               "Forbidden: the lab cannot change the image of a running "
                               "pod's container (its runtime does not restart a container "
                               "with another image); " + (
                                   "change the image in the template of Deployment "
                                   f'"{owner["metadata"]["name"]}"' if owner is not None else
                                   "delete the pod and create it again, or run it from a "
                                   "Deployment"))
            raise ApiError(422, f'Pod "{t.name}" is invalid: spec: Forbidden: pod updates '
                           "may not change fields other than `spec.containers[*].image`,"
                           "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
                           "`spec.tolerations` (only additions to existing tolerations),"
                           "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if "
                           "it was previously negative)")
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        for name, value in (("labels", labels), ("annotations", annotations)):
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise ApiError(422, f'Pod "{t.name}" is invalid: metadata.{name}: must be a '
                               "map of strings to strings")
        if owner is not None:
            self._keep_owned(t, owner, live, labels)
        entries = self._pod_update_entries(req, t, obj, live, applied)
        held_as = ("Pod", t.namespace or "default", t.name or "")
        if req.arg("dryRun") == "All":
            served = copy.deepcopy(live)
            served["metadata"].pop("managedFields", None)
            if entries:
                served["metadata"]["managedFields"] = mf.encode(entries)
            # as the write itself stores them, so a dry run of a pod without labels does
            # not show `labels: {}` (kubectl diff)
            _stored_pod_maps(served["metadata"], labels, annotations)
        else:
            self.backend.pod_metadata(t.namespace or "default", t.name or "", labels,
                                      annotations)
            self.managed.set(held_as, str(live["metadata"].get("uid") or ""), entries)
            served = self._one(t)[1]
        return Response(200, json.dumps(served).encode())

    def _pod_update_entries(self, req: Request, t: Target, obj: dict[str, Any],
                            live: dict[str, Any], applied: mf.Applied | None
                            ) -> list[mf.Entry]:
        """The managedFields after an update of a running pod (its labels and
        annotations, all it may change here): the apiserver's field manager records it
        as any other write, e.g. `kubectl label pod X a=b` as an Update by
        `kubectl-label` owning f:metadata.f:labels.f:a. Only the metadata is compared:
        the spec was checked unchanged (_update_pod), whatever form it was sent in."""
        if applied is not None:
            return applied.entries
        prior = mf.decode((obj.get("metadata") or {}).get("managedFields"))
        if prior is None:
            prior = self._entries(t)
        before, after = copy.deepcopy(obj), copy.deepcopy(obj)
        for version, meta in ((before, live["metadata"]), (after, obj.get("metadata") or {})):
            _stored_pod_maps(version.setdefault("metadata", {}), meta.get("labels"),
                             meta.get("annotations"))
        manager = mf.manager_name(req.arg("fieldManager"), req.headers.get("user-agent", ""))
        return mf.update(self._schema(t), prior, before, after, manager,
                         self._group_version(t), self.clock())

    def _namespace_exists(self, namespace: str) -> None:
        """NamespaceLifecycle admission: nothing is created in a namespace that does not
        exist (`namespaces "X" not found`, 404), dry run or not; a namespace made on the
        fly would lack istio-injection and its pods would run without sidecars."""
        from remora.lab.manifests import BUILTIN_NAMESPACES  # as `remora apply` checks

        existing = {n["metadata"]["name"] for n in self.backend.objects("Namespace", None)}
        if namespace not in existing and namespace not in BUILTIN_NAMESPACES:
            raise not_found("namespaces", namespace)

    def _dry_run_view(self, t: Target, obj: dict[str, Any]) -> dict[str, Any]:
        """What a write would have stored, as it would be served (`kubectl diff`,
        `--dry-run=server`): the live object's server-owned fields carried over."""
        out = views.api_object(t.resource.kind, self._group_version(t), obj)
        out["apiVersion"] = self._group_version(t)  # answered in the version asked for
        try:
            _, live = self._one(Target(t.resource, t.version, obj["metadata"].get("namespace"),
                                       obj["metadata"]["name"], None))
        except ApiError:
            return out
        if t.resource.kind == "Service":
            for key in ("clusterIP", "clusterIPs", "type"):
                if key in live.get("spec", {}):
                    out.setdefault("spec", {}).setdefault(key, live["spec"][key])
        for key in ("uid", "creationTimestamp", "resourceVersion", "generation"):
            if key in live["metadata"]:
                out["metadata"][key] = live["metadata"][key]
        if t.resource.kind == "Deployment" and views.REVISION in (
                live["metadata"].get("annotations") or {}):
            # the controller's annotation, as a dry run (no controller runs) shows it
            out["metadata"].setdefault("annotations", {})[views.REVISION] = \
                live["metadata"]["annotations"][views.REVISION]
        if "generation" in live["metadata"] and out.get("spec") != live.get("spec"):
            out["metadata"]["generation"] = live["metadata"]["generation"] + 1
        if "status" in live:
            out["status"] = live["status"]
        return out

    def _pod_deployment(self, t: Target) -> dict[str, Any] | None:
        """The Deployment that owns pod T (the node's own pod objects name it), or None
        for a bare pod."""
        for p in self.backend.objects("Pod", t.namespace):
            if p["metadata"]["name"] != t.name:
                continue
            for ref in p["metadata"].get("ownerReferences") or []:
                if ref.get("kind") == "Deployment":
                    for d in self.backend.objects("Deployment", t.namespace):
                        if d["metadata"]["name"] == ref.get("name"):
                            return d
                    return {"metadata": {"name": ref.get("name")}, "spec": {}}
        return None

    @staticmethod
    def _keep_owned(t: Target, owner: dict[str, Any], live: dict[str, Any],
                    labels: dict[str, str]) -> None:
        """A Deployment's pod may take any labels (kubectl label pod) except a change to
        those that tie it to its Deployment: the selector's and pod-template-hash. On a
        cluster the ReplicaSet would then release the pod (drop its ownerReference) and
        start another; the lab's pods cannot outlive their Deployment, so such a change
        is refused by name rather than stored with the ownership silently kept."""
        held = live["metadata"].get("labels") or {}
        selector = ((owner.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        for key in sorted({*selector, TEMPLATE_HASH_LABEL}):
            if key in held and labels.get(key) != held[key]:
                name = owner["metadata"]["name"]
                raise ApiError(422, f'Pod "{t.name}" is invalid: metadata.labels[{key}]: '
                               f"Forbidden: the pod belongs to Deployment \"{name}\" "
                               "through this label; the lab cannot release a pod from its "
                               "Deployment (a cluster's ReplicaSet would orphan it and "
                               "start another): change the other labels, or the "
                               "Deployment")

    def _exists(self, t: Target) -> bool:
        try:
            self._one(t)
        except ApiError:
            return False
        return True

    def _unknown_fields(self, req: Request, t: Target, obj: dict[str, Any]) -> list[str]:
        """OBJ's fields Kubernetes' schema of the kind lacks, by the request's
        fieldValidation (field_validation.py): Strict refuses them (a PATCH: the patched
        object's, the error quoting the patch), Warn answers a warning per field, Ignore
        says nothing. Server-side apply's patches were checked against the schema
        before (managed_fields.check_patch), whatever the directive."""
        directive = fv.directive(req.arg("fieldValidation"))
        content_type = req.headers.get("content-type", "")
        if req.method == "PATCH" and content_type.startswith(patches.APPLY):
            return []
        r = t.resource
        # not status: a write's status is dropped (_store), and the lab's served one has
        # its own `remora` block, which a `kubectl replace` of a fetched pod sends back
        unknown = fv.unknown_fields(r.group, t.version, r.kind,
                                    {k: v for k, v in obj.items() if k != "status"})
        if not unknown or directive == fv.IGNORE:
            return unknown
        if directive == fv.WARN:
            req.warnings += fv.warnings(unknown)
        elif req.method == "PATCH":
            raise fv.patch_error(yaml.safe_load(req.body.decode()), unknown)
        else:
            raise fv.decode_error(r.kind, t.version, unknown)
        return unknown

    def _create(self, req: Request, t: Target) -> Response:
        obj = self._body(req, t)
        name = obj["metadata"].get("name")
        if not name:
            raise ApiError(422, f"{t.resource.kind} is invalid: metadata.name: Required value")
        named = Target(t.resource, t.version, obj["metadata"].get("namespace"), name, None)
        if self._exists(named):
            raise ApiError(409, f'{t.resource.qualified} "{name}" already exists',
                           details={"name": name, "group": t.resource.group,
                                    "kind": t.resource.plural})
        return self._store(req, named, obj, created=True)

    def _update(self, req: Request, t: Target) -> Response:
        obj = self._body(req, t)
        try:
            _, live = self._one(t)
        except ApiError:
            return self._store(req, t, obj, created=True)
        self._precondition(obj, live, t)
        return self._store(req, t, obj, created=False)

    @staticmethod
    def _precondition(obj: dict[str, Any], live: dict[str, Any], t: Target) -> None:
        """Optimistic concurrency: a write that names a resourceVersion must name the live
        one (`kubectl replace`/`edit` of a stale copy gets the apiserver's 409)."""
        given = (obj.get("metadata") or {}).get("resourceVersion")
        if given and str(given) != live["metadata"].get("resourceVersion"):
            r = t.resource
            raise ApiError(409, f'Operation cannot be fulfilled on {r.qualified} '
                           f'"{t.name}": the object has '
                           "been modified; please apply your changes to the latest version "
                           "and try again", reason="Conflict",
                           details={"name": t.name, "group": r.group, "kind": r.plural})

    def _writable(self, raw: dict[str, Any],
                  served: dict[str, Any] | None = None) -> dict[str, Any]:
        """The stored form of an object (what a patch applies to): no status, no fields
        the server owns, no `remora` block."""
        obj = {k: v for k, v in raw.items() if k not in ("remora", "status")}
        obj["metadata"] = {k: v for k, v in raw["metadata"].items() if k not in _SERVER_FIELDS}
        revision = ((served or {}).get("metadata", {}).get("annotations") or {}).get(
            views.REVISION)
        if raw.get("kind") == "Deployment" and revision is not None:
            # Kubernetes' deployment controller writes deployment.kubernetes.io/revision
            # into the stored Deployment, so a patch sees it: `kubectl rollout undo`
            # (polymorphichelpers/rollback.go getDeploymentPatch) sends a JSON patch
            # `replace /metadata/annotations`, which needs the annotations to exist
            obj["metadata"]["annotations"] = {
                **(obj["metadata"].get("annotations") or {}), views.REVISION: revision}
        spec = obj.get("spec")
        if raw.get("kind") == "Service" and isinstance(spec, dict):
            obj["spec"] = {k: v for k, v in spec.items() if k != "clusterIPs"}
        return obj

    def _schema(self, t: Target) -> mf.Node:
        r = t.resource
        return mf.kind_schema(r.group, t.version, r.kind)

    def _server_side_apply(self, req: Request, t: Target) -> Response:
        """PATCH application/apply-patch+yaml, as the apiserver's field manager
        (managed_fields.py): the configuration checked against the kind's schema,
        merged onto the live object, the fields the manager applied before and no
        longer does removed, conflicts with other managers refused unless forced."""
        directive = fv.directive(req.arg("fieldValidation"))
        manager = req.arg("fieldManager")
        if not manager:
            # ValidatePatchOptions
            raise ApiError(422, 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: '
                           "Required value: is required for apply patch")
        try:
            patch = yaml.safe_load(req.body.decode() or "null")
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"error decoding YAML: {' '.join(str(exc).split())}") \
                from None
        schema = self._schema(t)
        mf.check_patch(schema, patch, (t.resource.group, t.version, t.resource.kind),
                       self._group_version(t))
        if directive != fv.IGNORE:
            # applyPatcher: Strict and Warn also decode the YAML strictly, for keys
            # given twice (an undeclared field was refused above in any case)
            twice = patches.duplicate_keys(req.body)
            if twice and directive == fv.STRICT:
                raise ApiError(400, "error strict decoding YAML: error converting YAML to "
                               "JSON: yaml: unmarshal errors:\n" + "\n".join(
                                   "  " + line for line in twice))
            req.warnings += twice  # parseYAMLWarnings: one warning per line
        try:
            raw, _ = self._one(t)
        except ApiError:
            raw = None
        live = self._writable(raw) if raw is not None else None
        if raw is not None and live is not None and t.resource.kind == "Service" and \
                "clusterIPs" in raw.get("spec", {}):
            # the apiserver's live object holds the allocated clusterIPs, so an apply
            # that gives the same list co-owns it rather than conflicting with the
            # manager that wrote it (a `kubectl replace` of a fetched Service)
            live["spec"]["clusterIPs"] = copy.deepcopy(raw["spec"]["clusterIPs"])
        applied = mf.apply(schema, self._entries(t) if raw is not None else [], live, patch,
                           manager, self._group_version(t), req.flag("force"), self.clock())
        obj = applied.obj
        obj.setdefault("apiVersion", patch.get("apiVersion"))
        obj.setdefault("kind", patch.get("kind"))
        self._check_identity(obj, t)
        if live is None:
            return self._store(req, t, obj, created=True, applied=applied)
        self._precondition(patch, self._one(t)[1], t)
        return self._store(req, t, obj, created=False, applied=applied)

    def _patch(self, req: Request, t: Target) -> Response:
        content_type = req.headers.get("content-type", "")
        if content_type.startswith(patches.APPLY):
            return self._server_side_apply(req, t)
        raw, served = self._one(t)
        base = self._writable(raw, served)
        # a patch sees (and may test or set) the resourceVersion and managedFields
        for key in ("resourceVersion", "managedFields"):
            if key in served["metadata"]:
                base["metadata"][key] = served["metadata"][key]
        obj = patches.apply_patch(content_type, base, req.body)
        self._check_identity(obj, t)
        self._precondition(obj, self._one(t)[1], t)  # a patch may name a version too
        return self._store(req, t, obj, created=False)

    def _delete(self, req: Request, t: Target) -> Response:
        dry_run, policy = _delete_options(req)
        kind = t.resource.store_kind
        if kind == "Namespace" and t.name in _UNDELETABLE_NAMESPACES:
            # NamespaceLifecycle admission refuses these, dry run or not
            # (plugin/pkg/admission/namespace/lifecycle: "this namespace may not be deleted")
            raise ApiError(403, f'namespaces "{t.name}" is forbidden: this namespace may not '
                           "be deleted", details={"name": t.name, "kind": "namespaces"})
        _, served = self._one(t)
        if policy == "Orphan" and kind == "Deployment":
            # Orphan would leave the pods running without an owner; the lab's pods cannot
            # outlive their Deployment (its controller deletes them with it), so refuse
            # rather than silently cascade.
            raise ApiError(422, f'{t.resource.qualified} "{t.name}": propagationPolicy '
                           '"Orphan" (kubectl delete --cascade=orphan) is not supported by '
                           "the lab: a Deployment's pods are deleted with it; use "
                           "--cascade=background or --cascade=foreground")
        if not dry_run:
            self.backend.delete(kind, t.namespace or "", t.name or "")
        if kind == "Pod":
            served["metadata"]["deletionTimestamp"] = views.iso(self.clock())
        return Response.of(served)

    def _scale(self, req: Request, t: Target) -> Response:
        """deployments/scale (autoscaling/v1 Scale), what `kubectl scale` patches."""
        whole = Target(t.resource, t.version, t.namespace, t.name, None)
        raw, served = self._one(whole)

        def scale(d: dict[str, Any]) -> dict[str, Any]:
            return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                    "metadata": {k: d["metadata"][k] for k in (
                        "name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                        if k in d["metadata"]},
                    "spec": {"replicas": d["spec"]["replicas"]},
                    "status": {"replicas": d.get("status", {}).get("replicas", 0),
                               "selector": ",".join(f"{k}={v}" for k, v in (
                                   d["spec"].get("selector", {}).get("matchLabels") or {})
                                   .items())}}

        if req.method == "GET":
            return Response.of(scale(served))
        if req.method == "PATCH":
            wanted = patches.apply_patch(req.headers.get("content-type", ""), scale(served),
                                         req.body)
        elif req.method == "PUT":
            wanted = req.json()
        else:
            raise ApiError(405, f"{req.method} is not supported on deployments/scale")
        # autoscaling/v1 ScaleSpec.replicas is an int32 with omitempty: a Scale for 0
        # replicas comes without it (client-go's JSON and protobuf alike), and the
        # apiserver reads the missing field as Go's zero
        replicas = (wanted.get("spec") or {}).get("replicas", 0) if isinstance(wanted, dict) \
            else None
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "Scale is invalid: spec.replicas: must be a whole number "
                           "of 0 or more")
        obj = self._writable(raw)
        obj.setdefault("spec", {})["replicas"] = replicas
        self._store(req, whole, obj, created=False, subresource="scale")
        return Response.of(scale(self._one(whole)[1]))

    # -- pods/log and pods/exec --------------------------------------------------------
    def pod_alive(self, stream: LogStream) -> bool:
        """Is the pod a followed log belongs to still there? (kubelet ends `logs -f` when
        the pod goes; a new pod of the same name is another pod.)"""
        return any(p["metadata"]["name"] == stream.pod and
                   p["metadata"].get("uid") == stream.uid and
                   not p["metadata"].get("deletionTimestamp")
                   for p in self.backend.objects("Pod", stream.namespace))

    def _log(self, req: Request, t: Target) -> Result:
        tail = req.arg("tailLines")
        if tail and not tail.lstrip("-").isdigit():
            raise ApiError(400, f"tailLines {tail!r} is not a number")
        for name in ("sinceSeconds", "sinceTime"):
            if req.arg(name):
                raise ApiError(400, f"{name} is not supported by the lab: its container "
                               "logs carry no timestamps to filter by (use tailLines)")
        if req.flag("timestamps"):
            raise ApiError(400, "timestamps is not supported by the lab: its container "
                           "logs carry no timestamps")
        limit_text = req.arg("limitBytes")
        limit = None
        if limit_text:
            if not limit_text.isdigit() or int(limit_text) < 1:
                # ValidatePodLogOptions: "limitBytes: Invalid value: ...: must be > 0"
                raise ApiError(422, f"PodLogOptions is invalid: limitBytes: Invalid value: "
                               f"{limit_text}: must be greater than 0")
            limit = int(limit_text)
        _, served = self._one(Target(t.resource, t.version, t.namespace, t.name, None))
        try:
            got = self.backend.logs(t.namespace or "default", t.name or "",
                                    req.arg("container") or None, req.flag("previous"),
                                    int(tail) if tail else None)
        except RemoraError as exc:  # an unknown container: the apiserver's 400
            raise ApiError(400, exc.problem) from None
        if req.flag("previous") and not got.path.exists():
            # kubelet: a container that never terminated has no previous log
            raise ApiError(400, f'previous terminated container "{got.container}" in pod '
                           f'"{t.name}" not found')
        text = got.text.encode()
        if limit is not None:
            text = text[:limit]  # limitBytes: the first N bytes, as kubelet cuts them
        if req.flag("follow"):
            head = text.decode(errors="ignore")  # a character cut by the limit is dropped
            return LogStream(got.path, head, t.namespace or "default", t.name or "",
                             str(served["metadata"].get("uid", "")),
                             None if limit is None else limit - len(head.encode()))
        return Response(200, text, "text/plain")

    def _exec(self, req: Request, t: Target) -> Exec:
        # The pod and container first, as the apiserver resolves them (ExecLocation)
        # before any upgrade: kubectl falls back from WebSocket to SPDY on a failed
        # upgrade, and both attempts must then say what is wrong, not "SPDY".
        _, pod = self._one(Target(t.resource, t.version, t.namespace, t.name, None))
        container = req.arg("container")
        spec = pod.get("spec") or {}
        names = [c.get("name") for key in ("containers", "initContainers", "ephemeralContainers")
                 for c in spec.get(key) or []]
        if container and container not in names:
            # pkg/registry/core/pod/strategy.go: "container %s is not valid for pod %s"
            raise ApiError(400, f"container {container} is not valid for pod {t.name}")
        upgrade = req.headers.get("upgrade", "").lower()
        if upgrade.startswith("spdy"):
            raise ApiError(400, "exec over SPDY is not served by the lab: use a client that "
                           "speaks WebSocket v5.channel.k8s.io (kubectl 1.30 or later)")
        if upgrade != "websocket":
            raise ApiError(400, "exec needs a WebSocket upgrade (Upgrade: websocket, "
                           "Sec-WebSocket-Protocol: v5.channel.k8s.io)")
        offered = [p.strip() for p in req.headers.get("sec-websocket-protocol", "").split(",")]
        protocol = next((p for p in ("v5.channel.k8s.io", "v4.channel.k8s.io")
                         if p in offered), None)
        if protocol is None:
            raise ApiError(400, "exec: none of the offered WebSocket subprotocols "
                           f"({', '.join(offered)}) is served; use v5.channel.k8s.io")
        command = req.query.get("command") or []
        if not command:
            raise ApiError(400, "exec: you must specify at least one command for the "
                           "container")
        argv = self.backend.exec_argv(t.namespace or "default", t.name or "",
                                      req.arg("container") or None)
        return Exec([*argv, *command], protocol, req.flag("stdin"),
                    req.flag("stdout") or "stdout" not in req.query, req.flag("stderr") or
                    "stderr" not in req.query, req.flag("tty"))

    def _portforward(self, req: Request, t: Target) -> PortForward:
        # The pod first (404 if missing), as the apiserver's PortForwardLocation does
        # before any upgrade. kubectl 1.31+ offers a WebSocket carrying SPDY
        # (PortForwardWebsockets, on by default) and falls back to plain SPDY when that
        # upgrade fails; the plain SPDY upgrade is refused with the way out.
        _, pod = self._one(Target(t.resource, t.version, t.namespace, t.name, None))
        if (pod.get("status") or {}).get("phase") != "Running":
            # the apiserver's pod/strategy.go PortForwardLocation -> kubelet: a pod
            # that is not running has no network namespace to forward into
            raise ApiError(400, f"unable to upgrade connection: pod {t.name} is not "
                           "running")
        upgrade = req.headers.get("upgrade", "").lower()
        offered = [p.strip() for p in req.headers.get("sec-websocket-protocol", "").split(",")]
        if upgrade != "websocket" or PORTFORWARD_PROTOCOL not in offered:
            raise ApiError(400, "port-forward is served by the lab over a WebSocket with "
                           f"subprotocol {PORTFORWARD_PROTOCOL} only (kubectl 1.31 or "
                           "later), not over SPDY")
        argv = self.backend.exec_argv(t.namespace or "default", t.name or "", None)
        # exec_argv is ["ip", "netns", "exec", NETNS, ...]: the pod's network namespace
        return PortForward(argv[3], PORTFORWARD_PROTOCOL, t.name or "",
                           str(pod["metadata"].get("uid", "")))

    def _review(self, req: Request, t: Target) -> Response:
        """`kubectl auth can-i` (SelfSubjectAccessReview), `auth can-i --list`
        (SelfSubjectRulesReview) and `auth whoami` (SelfSubjectReview), answered for the
        lab's one user, who may do everything: allowed, as RBAC allows system:masters.
        Whether the lab serves the resource asked about is discovery's business (kubectl
        warns when it does not)."""
        kind = t.resource.kind
        spec: Any = {}
        if req.body and not req.body.startswith(PROTOBUF_MAGIC):
            spec = self._body(req, t).get("spec") or {}
        # else kubectl's protobuf body (client-go's typed client): the answer does not
        # depend on what is asked, so the spec is not decoded and comes back empty
        out = {"apiVersion": t.resource.group_version, "kind": kind,
               "metadata": {"creationTimestamp": None}, "spec": spec}
        if kind == "SelfSubjectAccessReview":
            out["status"] = {"allowed": True, "reason": "the lab has no RBAC: its token may "
                             "do everything"}
        elif kind == "SelfSubjectRulesReview":
            out["status"] = {"resourceRules": [{"verbs": ["*"], "apiGroups": ["*"],
                                                "resources": ["*"]}],
                             "nonResourceRules": [{"verbs": ["*"],
                                                   "nonResourceURLs": ["*"]}],
                             "incomplete": False}
        else:
            out.pop("spec")
            out["status"] = {"userInfo": copy.deepcopy(LAB_USER)}
        return Response.of(out, 201)
