import random

import pytest

from remora.errors import RemoraError
from remora.resources.loader import load_file
from remora.resources.naming import (
    ALPHANUMS,
    pod_from_deployment,
    replicaset_name,
    template_hash,
)
from remora.resources.objects import Deployment
from remora.resources.patch import apply_patch, strategic_merge
from tests.datafiles import data_path

DATA = data_path("resources")
SEED_PATCH = ('{"spec":{"template":{"metadata":{"annotations":'
              '{"sidecar.istio.io/interceptionMode":"TPROXY"}}}}}')


def server() -> Deployment:
    dep = load_file(DATA / "server.yaml").objects[0]
    assert isinstance(dep, Deployment)
    return dep


def test_seed_patch_sets_annotation_and_changes_template_hash() -> None:
    dep = server()
    new, warnings = apply_patch(dep, SEED_PATCH)
    assert warnings == []
    assert isinstance(new, Deployment)
    assert new.template.annotations == {"sidecar.istio.io/interceptionMode": "TPROXY"}
    assert new.template.labels == dep.template.labels
    assert new.template.spec == dep.template.spec
    assert template_hash(new.template) != template_hash(dep.template)
    assert replicaset_name(new) != replicaset_name(dep)


def test_pod_names_look_like_kubernetes() -> None:
    dep = server()
    h = template_hash(dep.template)
    assert len(h) <= 10 and set(h) <= set(ALPHANUMS)
    assert template_hash(dep.template) == h  # deterministic
    pod = pod_from_deployment(dep, random.Random(1))
    name = pod.metadata.name
    assert name.startswith(f"simple-server-{h}-") and len(name.rsplit("-", 1)[1]) == 5
    assert pod.metadata.labels == {"web": "server", "pod-template-hash": h}
    assert pod.metadata.namespace == "demo-to"
    assert pod_from_deployment(dep).metadata.name != pod_from_deployment(dep).metadata.name


def test_containers_merge_by_name_scalars_replace_null_deletes() -> None:
    base = {"spec": {"replicas": 1, "template": {"spec": {"containers": [
        {"name": "a", "image": "x", "env": [{"name": "K", "value": "1"}]},
        {"name": "b", "image": "y"}]}}}}
    patch = {"spec": {"replicas": 3, "template": {"spec": {"containers": [
        {"name": "a", "image": "x2", "env": [{"name": "L", "value": "2"}]},
        {"name": "c", "image": "z"},
        {"name": "b", "$patch": "delete"}]}}}}
    out = strategic_merge(base, patch)
    assert out["spec"]["replicas"] == 3
    cs = out["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in cs] == ["a", "c"]
    assert cs[0]["image"] == "x2"
    assert cs[0]["env"] == [{"name": "K", "value": "1"}, {"name": "L", "value": "2"}]
    assert strategic_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": None}}) == {"a": {"c": 2}}
    assert base["spec"]["replicas"] == 1  # inputs untouched


def test_invalid_patch_results_are_refused() -> None:
    dep = server()
    with pytest.raises(RemoraError, match="selector does not match"):
        apply_patch(dep, '{"spec":{"template":{"metadata":{"labels":{"web":"x"}}}}}')
    with pytest.raises(RemoraError, match="changes its kind, name or namespace"):
        apply_patch(dep, '{"metadata":{"name":"other"}}')
    with pytest.raises(RemoraError, match="JSON object"):
        apply_patch(dep, "[1]")
