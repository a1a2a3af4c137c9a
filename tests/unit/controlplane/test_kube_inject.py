"""`remora kube-inject` held to Istio's own injection goldens (tests/data/inject/, copied
from istio/istio pkg/kube/inject/testdata/inject at the commit named in cases.json):
first on the fields the issue names (istio-init's args, istio-proxy's ports, env names,
probes, volumes, securityContext, annotations, labels), each compared on its own so a
failure names the field; then the whole documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from remora.cli.main import cli
from remora.controlplane import kube_inject
from remora.controlplane.kube_inject import MeshSettings, canonical_quantity, inject_text
from remora.errors import RemoraError
from tests.datafiles import data_path

CASES = json.loads(data_path("inject", "cases.json").read_text())
IMAGE = CASES["image"]


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    return obj if obj["kind"] == "Pod" else obj["spec"]["template"]


def workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects with a pod template, a List's items included."""
    out: list[dict[str, Any]] = []
    for o in objs:
        out += workloads(o["items"]) if o["kind"] == "List" else [o]
    return out


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in (spec.get("initContainers") or []) + spec["containers"]
             if c["name"] == name]
    assert len(found) == 1, (name, [c["name"] for c in found])
    return found[0]


def fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The fields that matter, by name."""
    pod = pod_template(obj)
    spec = pod["spec"]
    out: dict[str, Any] = {
        "annotations": pod["metadata"].get("annotations"),
        "labels": pod["metadata"].get("labels"),
        "init container order": [c["name"] for c in spec.get("initContainers") or []],
        "container order": [c["name"] for c in spec["containers"]],
        "app probes": [{k: c.get(k) for k in ("readinessProbe", "livenessProbe",
                                              "startupProbe", "lifecycle")}
                       for c in spec["containers"] if c["name"] != "istio-proxy"],
    }
    if not any(c["name"] == "istio-proxy" for c in (spec.get("initContainers") or []) +
               spec["containers"]):
        return out  # not injected
    proxy = container(spec, "istio-proxy")
    out |= {
        "istio-proxy ports": proxy.get("ports"),
        "istio-proxy args": proxy.get("args"),
        "istio-proxy env names": [e["name"] for e in proxy.get("env") or []],
        "istio-proxy env": proxy.get("env"),
        "istio-proxy readinessProbe": proxy.get("readinessProbe"),
        "istio-proxy startupProbe": proxy.get("startupProbe"),
        "istio-proxy lifecycle": proxy.get("lifecycle"),
        "istio-proxy restartPolicy": proxy.get("restartPolicy"),
        "istio-proxy securityContext": proxy.get("securityContext"),
        "istio-proxy volumeMounts": proxy.get("volumeMounts"),
        "volumes": spec.get("volumes"),
    }
    inits = [c for c in spec.get("initContainers") or [] if c["name"] == "istio-init"]
    if inits:
        out["istio-init args"] = inits[0]["args"]
        out["istio-init securityContext"] = inits[0]["securityContext"]
        out["istio-init env"] = inits[0].get("env")
    return out


def run(case: dict[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    mesh = MeshSettings.from_yaml(case["mesh"], "mesh") if "mesh" in case else None
    got = inject_text(data_path("inject", case["in"]).read_text(), case["in"], IMAGE, mesh)
    return docs(got), docs(data_path("inject", case["want"]).read_text())


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["want"] for c in CASES["cases"]])
def test_fields_that_matter_match_istios_golden(case: dict[str, str]) -> None:
    got, want = run(case)
    got, want = workloads(got), workloads(want)
    assert [o["kind"] for o in got] == [o["kind"] for o in want]
    for g, w in zip(got, want, strict=True):
        if "template" not in g.get("spec", {}) and g["kind"] != "Pod":
            continue  # not a workload (a Service)
        mine, theirs = fields(g), fields(w)
        for name in theirs:
            assert mine.get(name) == theirs[name], f"{case['want']}: {name}"
        assert set(mine) == set(theirs)


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["want"] for c in CASES["cases"]])
def test_whole_document_matches_istios_golden(case: dict[str, str]) -> None:
    got, want = run(case)
    assert got == want


def test_cli_prints_the_injected_manifest_with_a_sidecar_image(tmp_path: Path) -> None:
    hello = data_path("inject", "hello.yaml")
    result = CliRunner().invoke(cli, ["kube-inject", "-f", str(hello),
                                      "--sidecar-image", IMAGE])
    assert result.exit_code == 0, result.output
    assert docs(result.output) == docs(data_path("inject", "hello.yaml.injected").read_text())
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("defaultConfig:\n  interceptionMode: TPROXY\n")
    remora_image = CliRunner().invoke(cli, ["kube-inject", "-f", str(hello), "--sidecar-image",
                                            "localhost/remora-sidecar:dev",
                                            "--meshConfigFile", str(mesh)])
    assert remora_image.exit_code == 0, remora_image.output
    spec = pod_template(docs(remora_image.output)[0])["spec"]
    assert {c["image"] for c in spec["initContainers"]} == {"localhost/remora-sidecar:dev"}
    assert container(spec, "istio-init")["args"][7:9] == ["-m", "TPROXY"]
    missing = CliRunner().invoke(cli, ["kube-inject", "-f", str(tmp_path / "nope.yaml")])
    assert missing.exit_code != 0


def test_the_seeds_deployment_gets_the_labs_capture_args() -> None:
    # the lab's own admission renders istio-init's args from the same template lines
    from remora.controlplane.injection import istio_init_args
    from remora.resources.loader import load_file

    server = data_path("resources", "server.yaml")
    out = docs(inject_text(server.read_text(), str(server)))
    deploy = out[0]
    assert out[1]["kind"] == "Service" and "status" not in out[1]  # not a workload
    args = container(pod_template(deploy)["spec"], "istio-init")["args"]
    typed = load_file(server).objects[0]
    from remora.resources.naming import pod_from_deployment
    assert args == istio_init_args(pod_from_deployment(typed))  # type: ignore[arg-type]
    env = {e["name"]: e.get("value") for e in container(pod_template(deploy)["spec"],
                                                        "istio-proxy")["env"]}
    assert env["ISTIO_META_OWNER"] == ("kubernetes://apis/apps/v1/namespaces/demo-to/"
                                       "deployments/simple-server")
    assert env["ISTIO_META_WORKLOAD_NAME"] == "simple-server"


def test_what_is_not_injected_and_bad_input() -> None:
    skipped = """\
apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations: {sidecar.istio.io/inject: "false"}
spec:
  containers: [{name: a, image: x}]
"""
    left = docs(inject_text(skipped, "p.yaml"))[0]
    # printed back as Go prints the object (empty resources and status), not injected
    assert left["spec"]["containers"] == [{"name": "a", "image": "x", "resources": {}}]
    assert left["metadata"] == docs(skipped)[0]["metadata"] and left["status"] == {}
    host = skipped.replace('annotations: {sidecar.istio.io/inject: "false"}', "") \
        .replace("spec:\n", "spec:\n  hostNetwork: true\n")
    assert "istio-proxy" not in inject_text(host, "h.yaml")
    bad = skipped.replace('sidecar.istio.io/inject: "false"',
                          "sidecar.istio.io/interceptionMode: BOGUS")
    with pytest.raises(RemoraError, match="interception mode 'BOGUS'"):
        inject_text(bad, "b.yaml")
    with pytest.raises(RemoraError, match="not YAML"):
        inject_text("a: [", "x.yaml")


@pytest.mark.parametrize(("given", "printed"), [
    ("4000m", "4"), ("500m", "500m"), ("1.5", "1500m"), ("1024Mi", "1Gi"), ("1536Mi", "1536Mi"),
    ("0.1", "100m"), ("2", "2"), ("128Mi", "128Mi"), ("1000", "1k"), ("abc", "abc")])
def test_quantities_print_as_kubernetes_prints_them(given: str, printed: str) -> None:
    assert canonical_quantity(given) == printed
    assert kube_inject.canonical_quantity(printed) == printed
