"""/openapi/v3 and /openapi/v2: the documents kubectl reads, with Kubernetes' own schemas
(pure).

Three kubectl features read the v3 group-version documents:
- `kubectl explain` (k8s.io/kubectl/pkg/explain/v2, the default `--output plaintext`)
  fetches /openapi/v3, then the group-version's document, takes the resource's kind from
  an operation on its path, finds the schema whose `x-kubernetes-group-version-kind`
  names it, and follows its `$ref`s inside that same document — so each document
  carries every schema its kinds reference, as the apiserver's do.
- Client-side `kubectl apply` computes its strategic-merge patch from the served schema's
  patch metadata (x-kubernetes-patch-strategy/-patch-merge-key; kubectl's patcher,
  buildStrategicMergePatchFromOpenAPIV3) when the kind's PATCH operation lists the
  strategic body type; a CRD's does not, and for the Istio kinds (no schema) it goes on
  to /openapi/v2, finds none there either, and sends a JSON merge patch, as for a
  cluster's CRD without a structural schema.
- queryParamVerifierV3 (k8s.io/cli-runtime/pkg/resource/query_param_verifier_v3.go) looks
  for a PATCH operation tagged with the kind's GVK that takes `fieldValidation`; with it
  kubectl sends `?fieldValidation=Strict` and leaves validation to the server (the lab
  validates as `remora apply` does); without (a kind the lab only lists) it validates
  client-side from /openapi/v2.

/openapi/v2 is all of it in one swagger 2.0 document, as JSON or (what client-go asks
for, and reads only) gnostic's protobuf (gnostic.py).

The schemas are Kubernetes 1.32's v2 definitions (openapi_v2.json.gz, the served kinds'
closure, made by scripts/gen_kube_openapi_subset.py; its docstring names the origin),
converted for v3 as kube-openapi's openapiconv.ConvertV2ToV3 does: `#/definitions/` refs
become `#/components/schemas/`, and a `$ref` with siblings (a field's description) is
wrapped in `allOf` (builder3/util.WrapRefs: OpenAPI v3 ignores a $ref's siblings). They
are read on the first /openapi request, not at the API server's start, and each document
is encoded once: its hash (in the v3 index's serverRelativeURL) and ETag name those bytes.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import json
from typing import Any

from remora.kubeapi import gnostic
from remora.kubeapi import resources as res
from remora.kubeapi.messages import ApiError, Request, Response

NOT_FOUND = "the server could not find the requested resource"
DATA = "openapi_v2.json.gz"
V2_PREFIX = "#/definitions/"
V3_PREFIX = "#/components/schemas/"
META = "io.k8s.apimachinery.pkg.apis.meta.v1."
# In every group-version document of the apiserver: its operations answer Status, take
# DeleteOptions and Patch bodies, and stream WatchEvents.
COMMON = (META + "Status", META + "DeleteOptions", META + "WatchEvent", META + "Patch")
# deployments/scale's kind (autoscaling/v1 Scale) is in apps/v1's document
EXTRA = {("apps", "v1"): ("io.k8s.api.autoscaling.v1.Scale",)}


def group_versions() -> list[tuple[str, str]]:
    out = [("", "v1")]
    for g in res.groups():
        out += [(g, v) for v in res.versions(g)]
    return out


def _key(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def served_kinds(group: str, version: str) -> set[str]:
    """The kinds of GROUP/VERSION with a schema: each resource's kind and its list kind.
    The Istio kinds have none: their CRDs carry no structural schema (resources.crds)."""
    if group == res.ISTIO_SECURITY:
        return set()
    kinds = {r.kind for r in res.RESOURCES if r.group == group and r.version == version}
    return kinds | {k + "List" for k in kinds}


def wanted_kinds() -> set[tuple[str, str, str]]:
    """The kinds that must have a schema (the review kinds have no list kind)."""
    return {(g, v, k) for g, v in group_versions() for k in served_kinds(g, v)
            if not k.endswith("List")}


def roots(definitions: dict[str, Any], group: str, version: str) -> set[str]:
    """The definitions GROUP/VERSION's document starts from (then all they reference)."""
    kinds = served_kinds(group, version)
    found = {name for name, schema in definitions.items()
             if any(g["group"] == group and g["version"] == version and g["kind"] in kinds
                    for g in schema.get("x-kubernetes-group-version-kind", []))}
    return found | {n for n in (*COMMON, *EXTRA.get((group, version), ())) if n in definitions}


def _subschemas(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The schemas directly inside SCHEMA (a `properties` map's keys are field names, which
    may be `$ref` themselves: JSONSchemaProps has such a field)."""
    out = list(schema.get("properties", {}).values())
    for key in ("items", "additionalProperties", "additionalItems", "not"):
        value = schema.get(key)
        if isinstance(value, dict):
            out.append(value)
        elif isinstance(value, list):
            out += value
    for key in ("allOf", "anyOf", "oneOf"):
        out += schema.get(key, [])
    return out


def references(schema: dict[str, Any], prefix: str = V2_PREFIX) -> set[str]:
    found = set()
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(prefix):
        found.add(ref[len(prefix):])
    for sub in _subschemas(schema):
        found |= references(sub, prefix)
    return found


def closure(definitions: dict[str, Any], start: set[str]) -> set[str]:
    keep: set[str] = set()
    todo = sorted(start)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += sorted(references(definitions[name]) - keep)
    return keep


def to_v3(schema: dict[str, Any]) -> dict[str, Any]:
    """kube-openapi's openapiconv.ConvertSchema: the ref's new prefix, then WrapRefs."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: to_v3(v) for k, v in out["properties"].items()}
    for key in ("items", "additionalProperties", "additionalItems", "not"):
        value = out.get(key)
        if isinstance(value, dict):
            out[key] = to_v3(value)
        elif isinstance(value, list):
            out[key] = [to_v3(v) for v in value]
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [to_v3(v) for v in out[key]]
    ref = out.get("$ref")
    if isinstance(ref, str):
        if ref.startswith(V2_PREFIX):
            ref = V3_PREFIX + ref[len(V2_PREFIX):]
        del out["$ref"]
        if out:  # a $ref with siblings: wrapped, as WrapRefs does
            out["allOf"] = [{"$ref": ref}, *out.get("allOf", [])]
        else:
            out["$ref"] = ref
    return out


@functools.cache
def definitions() -> dict[str, Any]:
    """The v2 definitions, read from the package's data on first use."""
    data = importlib.resources.files("remora.kubeapi").joinpath(DATA).read_bytes()
    defs: dict[str, Any] = json.loads(gzip.decompress(data))["definitions"]
    return defs


@functools.cache
def _v3_schemas() -> dict[str, Any]:
    return {name: to_v3(schema) for name, schema in definitions().items()}


def _patch_types(group: str) -> tuple[str, ...]:
    """The PATCH body types, as the apiserver lists them in requestBody.content. kubectl's
    patcher (gvkSupportsPatchOpenAPIV3) computes a strategic-merge patch from the schema
    only when the strategic type is listed; a custom resource's operations leave it out."""
    types = ("application/apply-patch+yaml", "application/json-patch+json",
             "application/merge-patch+json")
    return types if group == res.ISTIO_SECURITY else (
        *types, "application/strategic-merge-patch+json")


def gv_document(group: str, version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    query = [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
             for n in ("dryRun", "fieldManager", "fieldValidation")]
    ok = {"200": {"description": "OK"}}
    for r in res.RESOURCES:
        if r.group != group or version not in res.versions(group):
            continue
        prefix = f"/{_key(group, version)}" + ("/namespaces/{namespace}" if r.namespaced
                                                else "")
        gvk = {"group": group, "version": version, "kind": r.kind}
        # The collection's operations too: kubectl explain finds a resource's kind from
        # the x-kubernetes-group-version-kind of an operation on its collection or item
        # path (explain/v2/templates/plaintext.tmpl), so a kind the lab only lists
        # (configmaps) or only creates (selfsubjectaccessreviews) needs them.
        collection: dict[str, Any] = {}
        if "list" in r.verbs:
            collection["get"] = {"operationId": f"list{r.kind}", "x-kubernetes-action": "list",
                                 "x-kubernetes-group-version-kind": gvk, "responses": ok}
        if "create" in r.verbs:
            collection["post"] = {"operationId": f"create{r.kind}",
                                  "x-kubernetes-action": "post",
                                  "x-kubernetes-group-version-kind": gvk, "responses": ok}
        if collection:
            paths[f"{prefix}/{r.plural}"] = collection
        if "get" not in r.verbs:
            continue
        item: dict[str, Any] = {"get": {"operationId": f"read{r.kind}",
                                        "x-kubernetes-action": "get",
                                        "x-kubernetes-group-version-kind": gvk,
                                        "responses": ok}}
        if "patch" in r.verbs:
            item["patch"] = {"operationId": f"patch{r.kind}", "x-kubernetes-action": "patch",
                             "x-kubernetes-group-version-kind": gvk, "parameters": query,
                             "requestBody": {"content": {
                                 t: {"schema": {"$ref": V3_PREFIX + META + "Patch"}}
                                 for t in _patch_types(group)}, "required": True},
                             "responses": ok}
        paths[f"{prefix}/{r.plural}/{{name}}"] = item
    schemas = _v3_schemas()
    names = closure(definitions(), roots(definitions(), group, version))
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths, "components": {"schemas": {n: schemas[n] for n in sorted(names)}}}


@functools.cache
def _encoded(group: str, version: str) -> tuple[bytes, str]:
    """GROUP/VERSION's document as served, and its hash (the apiserver's handler3 names a
    document by the SHA-512 of its bytes, upper-case hex)."""
    body = json.dumps(gv_document(group, version), separators=(",", ":")).encode()
    return body, hashlib.sha512(body).hexdigest().upper()


def _v2_operation(op: dict[str, Any]) -> dict[str, Any]:
    """A v3 operation of ours back in v2 form: query parameters with their type inline,
    the body types as `consumes`."""
    out = {k: v for k, v in op.items() if k not in ("parameters", "requestBody")}
    if "parameters" in op:
        out["parameters"] = [{"name": p["name"], "in": p["in"], **p["schema"]}
                             for p in op["parameters"]]
    if "requestBody" in op:
        out["consumes"] = sorted(op["requestBody"]["content"])
    return out


def v2_document() -> dict[str, Any]:
    """/openapi/v2: every served path and every definition, in one swagger 2.0 document."""
    paths = {path: {method: _v2_operation(op) for method, op in item.items()}
             for g, v in group_versions() for path, item in gv_document(g, v)["paths"].items()}
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths, "definitions": definitions()}


PROTOBUF_V2 = "application/com.github.proto-openapi.spec.v2"


@functools.cache
def _v2_encoded(protobuf: bool) -> tuple[bytes, str]:
    doc = v2_document()
    body = gnostic.document(doc) if protobuf else json.dumps(doc, separators=(",", ":")).encode()
    return body, hashlib.sha512(body).hexdigest().upper()


def _cached(body: bytes, digest: str, req: Request | None, content_type: str) -> Response:
    headers = [("Etag", f'"{digest}"')]
    if req is not None and req.arg("hash") == digest:
        headers.append(("Cache-Control", "public, immutable"))
    if req is not None and req.headers.get("if-none-match") == f'"{digest}"':
        return Response(304, b"", content_type, headers=headers)
    return Response(200, body, content_type, headers=headers)


def document(parts: list[str], req: Request | None = None) -> Response:
    if parts == ["v2"]:
        # the apiserver's v2 handler answers JSON, or gnostic's protobuf when the client
        # asks for it (client-go does, and reads nothing else)
        protobuf = req is not None and PROTOBUF_V2 in req.headers.get("accept", "")
        return _cached(*_v2_encoded(protobuf), req,
                       PROTOBUF_V2 + ".v1.0+protobuf" if protobuf else "application/json")
    if parts == ["v3"]:
        return Response.of({"paths": {
            _key(g, v): {"serverRelativeURL": f"/openapi/v3/{_key(g, v)}?hash="
                                              f"{_encoded(g, v)[1]}"}
            for g, v in group_versions()}})
    if parts[:1] == ["v3"]:
        wanted = "/".join(parts[1:])
        for g, v in group_versions():
            if _key(g, v) == wanted:
                # handler3: the ETag is the hash; a request naming the current hash may
                # be cached for good (the URL changes with the content)
                return _cached(*_encoded(g, v), req, "application/json")
    raise ApiError(404, NOT_FOUND, details={})  # the apiserver's empty NotFound details
