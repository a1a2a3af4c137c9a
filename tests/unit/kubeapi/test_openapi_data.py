"""The Kubernetes schemas the lab serves (src/remora/kubeapi/openapi_v2.json.gz): what the
regeneration script makes of them, that an install carries them, that they are read only
when first asked for."""

from __future__ import annotations

import fnmatch
import gzip
import importlib.util
import json
import tomllib
from pathlib import Path
from types import ModuleType

from remora.kubeapi import openapi
from remora.kubeapi import resources as res
from remora.kubeapi.handlers import Handler
from remora.kubeapi.messages import Request, Response
from remora.node.store import Store
from tests.unit.kubeapi.test_handlers import TOKEN, StoreBackend

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "src/remora/kubeapi" / openapi.DATA


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_kube_openapi_subset", ROOT / "scripts/gen_kube_openapi_subset.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_subset_is_what_the_script_makes(tmp_path: Path) -> None:
    """The file is the closure of the served kinds (so a kind added to resources.py without
    rerunning the script fails here), byte for byte what the script writes."""
    script = _script()
    committed = json.loads(gzip.decompress(DATA.read_bytes()))["definitions"]
    swagger = tmp_path / "swagger.json"
    swagger.write_text(json.dumps({"swagger": "2.0", "definitions": committed}))
    assert script.render(script.subset(script.load(swagger))) == DATA.read_bytes()
    served = {(g["group"], g["version"], g["kind"]) for s in committed.values()
              for g in s.get("x-kubernetes-group-version-kind", [])}
    assert openapi.wanted_kinds() <= served
    assert ("apps", "v1", "Deployment") in openapi.wanted_kinds()
    assert not any(k[0] == res.ISTIO_SECURITY for k in openapi.wanted_kinds())


def test_the_script_undoes_the_json_schema_form(tmp_path: Path) -> None:
    """kubernetes-validate's JSON Schema form of the definitions (openapi2jsonschema's
    nullable types, $defs refs, kind enums) comes back as the swagger's."""
    script = _script()
    pod = {"type": ["object", "null"],
           "x-kubernetes-group-version-kind": [{"group": "", "kind": "Pod", "version": "v1"}],
           "properties": {"kind": {"type": ["string", "null"], "enum": ["Pod"]},
                          "spec": {"$ref": "#/$defs/io.k8s.api.core.v1.PodSpec",
                                   "description": "d"},
                          "ports": {"type": ["array", "null"], "items": {
                              "$ref": "#/$defs/io.k8s.api.core.v1.ContainerPort"},
                              "x-kubernetes-patch-merge-key": "containerPort"}}}
    given = {"$defs": {"io.k8s.api.core.v1.Pod": pod,
                       "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {
                           "oneOf": [{"type": "string"}, {"type": "integer"}]}}}
    path = tmp_path / "_definitions.json"
    path.write_text(json.dumps(given))
    back = script.load(path)
    assert back["io.k8s.api.core.v1.Pod"] == {
        "type": "object",
        "x-kubernetes-group-version-kind": [{"group": "", "kind": "Pod", "version": "v1"}],
        "properties": {"kind": {"type": "string"},
                       "spec": {"$ref": "#/definitions/io.k8s.api.core.v1.PodSpec",
                                "description": "d"},
                       "ports": {"type": "array", "items": {
                           "$ref": "#/definitions/io.k8s.api.core.v1.ContainerPort"},
                           "x-kubernetes-patch-merge-key": "containerPort"}}}
    assert back["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] == {
        "type": "string", "format": "int-or-string"}


def test_an_install_carries_the_schemas() -> None:
    """setuptools' package-data globs (pyproject.toml) name the file, so a wheel has it."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["remora"]
    relative = DATA.relative_to(ROOT / "src/remora").as_posix()
    assert any(fnmatch.fnmatch(relative, g) for g in globs), globs


def test_schemas_are_read_on_the_first_openapi_request(tmp_path: Path) -> None:
    openapi.definitions.cache_clear()
    openapi._v3_schemas.cache_clear()
    openapi._encoded.cache_clear()
    api = Handler(StoreBackend(Store(tmp_path / "remora.db")), TOKEN)

    def get(path: str) -> int:
        result = api.handle(Request.parse("GET", path, {"authorization": f"Bearer {TOKEN}"}))
        assert isinstance(result, Response)
        return result.status

    assert get("/api/v1") == 200
    assert openapi.definitions.cache_info().currsize == 0
    assert get("/openapi/v3") == 200
    assert openapi.definitions.cache_info().currsize == 1
