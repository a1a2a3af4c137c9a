"""/openapi/v3, as much of it as kubectl reads (pure).

`kubectl apply/create/patch` validate on the server when its OpenAPI v3 document says so:
kubectl's queryParamVerifierV3 (k8s.io/cli-runtime/pkg/resource/query_param_verifier_v3.go)
fetches /openapi/v3, then the group-version's document, and looks for a PATCH operation
tagged with the kind's `x-kubernetes-group-version-kind` that takes the `fieldValidation`
query parameter. With it, kubectl sends `?fieldValidation=Strict` and leaves validation to
the server (the lab validates as `remora apply` does); without it, kubectl falls back to
client-side validation from /openapi/v2, which the lab does not serve. The documents hold
paths only, no schemas: kubectl then computes apply patches from its built-in types
(strategic merge) or, for the Istio CRDs, as JSON merge patches — what a real cluster's
CRDs without a structural schema get too.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from remora.kubeapi import resources as res
from remora.kubeapi.messages import ApiError, Response

NOT_FOUND = "the server could not find the requested resource"


def _group_versions() -> list[tuple[str, str]]:
    out = [("", "v1")]
    for g in res.groups():
        out += [(g, v) for v in res.versions(g)]
    return out


def _key(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def gv_document(group: str, version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    query = [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
             for n in ("dryRun", "fieldManager", "fieldValidation")]
    for r in res.RESOURCES:
        if r.group != group or version not in res.versions(group) or "get" not in r.verbs:
            continue
        prefix = f"/{_key(group, version)}" + ("/namespaces/{namespace}" if r.namespaced
                                                else "")
        gvk = {"group": group, "version": version, "kind": r.kind}
        item: dict[str, Any] = {"get": {"operationId": f"read{r.kind}",
                                        "x-kubernetes-action": "get",
                                        "x-kubernetes-group-version-kind": gvk,
                                        "responses": {"200": {"description": "OK"}}}}
        if "patch" in r.verbs:
            item["patch"] = {"operationId": f"patch{r.kind}", "x-kubernetes-action": "patch",
                             "x-kubernetes-group-version-kind": gvk, "parameters": query,
                             "responses": {"200": {"description": "OK"}}}
        paths[f"{prefix}/{r.plural}/{{name}}"] = item
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes (remora lab)",
                                         "version": "v1.32.0"},
            "paths": paths, "components": {"schemas": {}}}


def _hash(doc: dict[str, Any]) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()


def document(parts: list[str]) -> Response:
    if parts == ["v3"]:
        return Response.of({"paths": {
            _key(g, v): {"serverRelativeURL": f"/openapi/v3/{_key(g, v)}?hash="
                                              f"{_hash(gv_document(g, v))}"}
            for g, v in _group_versions()}})
    if parts[:1] == ["v3"]:
        wanted = "/".join(parts[1:])
        for g, v in _group_versions():
            if _key(g, v) == wanted:
                return Response.of(gv_document(g, v))
    raise ApiError(404, NOT_FOUND, details={})  # the apiserver's empty NotFound details
