"""The resources the lab serves, and the discovery documents kubectl reads them from.

Names, short names, verbs and categories are Kubernetes' own (`kubectl api-resources` on
a 1.32 cluster; Istio's CRDs from manifests/charts/base/files/crd-all.gen.yaml), so that
`kubectl get po`, `get deploy`, `get pa` and `get ap` resolve as on a real cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RW = ("create", "delete", "get", "list", "patch", "update", "watch")
RO = ("get", "list", "watch")


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = RW
    categories: tuple[str, ...] = ()
    store_kind: str = ""  # the node store's kind; "" = derived, read-only
    # a kind the lab does not store, in discovery only so that kubectl can map it (see
    # UNSTORED): its lists are empty, every other request is refused naming what is stored
    unstored: bool = False

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The name the apiserver's messages use: `deployments.apps`, `pods`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def api_resource(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.plural, "singularName": self.singular,
                               "namespaced": self.namespaced, "kind": self.kind,
                               "verbs": list(self.verbs)}
        if self.short_names:
            out["shortNames"] = list(self.short_names)
        if self.categories:
            out["categories"] = list(self.categories)
        return out


ISTIO_SECURITY = "security.istio.io"
RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",),
             store_kind="Namespace"),
    Resource("", "v1", "nodes", "Node", namespaced=False, short_names=("no",), verbs=RO),
    Resource("", "v1", "pods", "Pod", short_names=("po",), categories=("all",),
             store_kind="Pod"),
    Resource("", "v1", "services", "Service", short_names=("svc",), categories=("all",),
             store_kind="Service"),
    Resource("", "v1", "endpoints", "Endpoints", short_names=("ep",), verbs=RO),
    # recorded by the lab's controllers and kubelet (remora.node.events); a cluster
    # also takes writes from any client
    Resource("", "v1", "events", "Event", short_names=("ev",), verbs=RO),
    Resource("apps", "v1", "deployments", "Deployment", short_names=("deploy",),
             categories=("all",), store_kind="Deployment"),
    Resource("apps", "v1", "replicasets", "ReplicaSet", short_names=("rs",),
             categories=("all",), verbs=RO),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", verbs=RO),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", verbs=RO),
    # reviews: create-only questions about the caller (kubectl auth can-i, auth whoami),
    # answered, never stored
    Resource("authorization.k8s.io", "v1", "selfsubjectaccessreviews",
             "SelfSubjectAccessReview", namespaced=False, verbs=("create",)),
    Resource("authorization.k8s.io", "v1", "selfsubjectrulesreviews",
             "SelfSubjectRulesReview", namespaced=False, verbs=("create",)),
    Resource("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview",
             namespaced=False, verbs=("create",)),
    Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions",
             "CustomResourceDefinition", namespaced=False, short_names=("crd", "crds"),
             verbs=RO, categories=("api-extensions",)),
    Resource(ISTIO_SECURITY, "v1", "peerauthentications", "PeerAuthentication",
             short_names=("pa",), categories=("istio-io", "security-istio-io"),
             store_kind="PeerAuthentication"),
    Resource(ISTIO_SECURITY, "v1", "authorizationpolicies", "AuthorizationPolicy",
             short_names=("ap",), categories=("istio-io", "security-istio-io"),
             store_kind="AuthorizationPolicy"),
)
# The kinds of kubectl's default `apply --prune` allowlist (kubectl 1.32,
# staging/src/k8s.io/kubectl/pkg/cmd/apply/prune.go: defaultNamespacedPruneResources and,
# without --namespace, defaultNonNamespacedPruneResources) that the lab does not store.
# kubectl maps every kind of the list through discovery before it prunes, and one missing
# kind fails the whole apply ("error retrieving RESTMappings to prune: ... no matches for
# kind ConfigMap"). So they are in discovery with the verbs list and watch only, and their
# lists are empty, which is true: the lab holds none and refuses to make one. Anything
# else (get by name, create, apply, delete) is the 404 that names what the lab stores, as
# for a kind it does not know at all; `kubectl get` of one says so in a Warning.
_LIST_ONLY = ("list", "watch")
UNSTORED: tuple[Resource, ...] = tuple(
    Resource(group, "v1", plural, kind, namespaced=namespaced, short_names=short,
             verbs=_LIST_ONLY, unstored=True)
    for group, plural, kind, namespaced, short in (
        ("", "configmaps", "ConfigMap", True, ("cm",)),
        ("", "secrets", "Secret", True, ()),
        ("", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",)),
        ("", "persistentvolumes", "PersistentVolume", False, ("pv",)),
        ("", "replicationcontrollers", "ReplicationController", True, ("rc",)),
        ("apps", "daemonsets", "DaemonSet", True, ("ds",)),
        ("apps", "statefulsets", "StatefulSet", True, ("sts",)),
        ("batch", "jobs", "Job", True, ()),
        ("batch", "cronjobs", "CronJob", True, ("cj",)),
        ("networking.k8s.io", "ingresses", "Ingress", True, ("ing",))))
RESOURCES += UNSTORED
# Istio serves its CRDs at v1 and v1beta1 (the same objects); v1 is preferred.
SERVED_VERSIONS = {ISTIO_SECURITY: ("v1", "v1beta1")}
SUBRESOURCES = {"pods": ("status", "log", "exec", "portforward"),
                "deployments": ("status", "scale"), "services": ("status",)}


def crds() -> list[dict[str, Any]]:
    """The CustomResourceDefinitions of the custom kinds served (Istio's, as its chart
    installs them: both versions served, v1 stored, their printer columns), read-only."""
    columns = {"PeerAuthentication": [
        {"name": "Mode", "type": "string", "jsonPath": ".spec.mtls.mode",
         "description": "Defines the mTLS mode used for peer authentication."}],
        "AuthorizationPolicy": [
        {"name": "Action", "type": "string", "jsonPath": ".spec.action",
         "description": "The operation to take."}]}
    out = []
    for r in RESOURCES:
        if r.group != ISTIO_SECURITY:
            continue
        printer = [*columns.get(r.kind, []),
                   {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        out.append({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{r.plural}.{r.group}",
                         "labels": {"app": "istio-pilot", "chart": "istio"}},
            "spec": {"group": r.group, "scope": "Namespaced",
                     "names": {"plural": r.plural, "singular": r.singular, "kind": r.kind,
                               "listKind": f"{r.kind}List", "shortNames": list(r.short_names),
                               "categories": list(r.categories)},
                     "versions": [{"name": v, "served": True, "storage": v == "v1",
                                   "subresources": {"status": {}},
                                   "additionalPrinterColumns": printer,
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object",
                                       "x-kubernetes-preserve-unknown-fields": True}}}
                                  for v in versions(r.group)]},
            "status": {"acceptedNames": {"plural": r.plural, "kind": r.kind},
                       "storedVersions": ["v1"],
                       "conditions": [{"type": "Established", "status": "True",
                                       "reason": "InitialNamesAccepted"}]}})
    return out


def writable_kinds() -> str:
    """The kinds a client may create, for the messages that refuse the others."""
    return ", ".join(r.kind for r in RESOURCES if "create" in r.verbs and r.store_kind)


def groups() -> list[str]:
    out: list[str] = []
    for r in RESOURCES:
        if r.group and r.group not in out:
            out.append(r.group)
    return out


def lookup(group: str, version: str, plural: str) -> Resource | None:
    for r in RESOURCES:
        if r.group == group and r.plural == plural and (
                version == r.version or version in SERVED_VERSIONS.get(group, ())):
            return r
    return None


def by_kind(kind: str) -> Resource | None:
    return next((r for r in RESOURCES if r.kind == kind), None)


def versions(group: str) -> tuple[str, ...]:
    return SERVED_VERSIONS.get(group, ("v1",))


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    """APIResourceList of GROUP/VERSION (the legacy discovery document)."""
    served = [r for r in RESOURCES if r.group == group and version in versions(group)]
    if not served:
        return None
    items: list[dict[str, Any]] = []
    for r in served:
        items.append(r.api_resource())
        for sub in SUBRESOURCES.get(r.plural, ()):
            verbs = ["get"] if sub in ("log",) else ["create", "get"] if sub in (
                "exec", "portforward") else ["get", "patch", "update"]
            items.append({"name": f"{r.plural}/{sub}", "singularName": "",
                          "namespaced": r.namespaced,
                          "kind": {"status": r.kind, "log": "Pod", "exec": "PodExecOptions",
                                   "portforward": "PodPortForwardOptions",
                                   "scale": "Scale"}[sub],
                          "verbs": verbs})
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": items}


def core_versions() -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": "127.0.0.1"}]}


def api_group(group: str) -> dict[str, Any]:
    vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions(group)]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": vs,
            "preferredVersion": vs[0]}


def group_list() -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group(g)
                                                                    for g in groups()]}


def version_info() -> dict[str, Any]:
    # The Kubernetes release whose API this subset follows (kubectl warns on a skew > 1).
    return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-remora",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "",
            "compiler": "", "platform": "linux/amd64"}
