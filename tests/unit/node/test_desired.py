from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from remora.errors import UsageError
from remora.node import desired
from remora.node.ipam import AddressPlan
from remora.node.store import Store

PLAN = AddressPlan.build()


def svc(name: str, ns: str = "demo-to", ip: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"web": "server"}, "ports": [{"port": 18080}]}
    if ip:
        spec["clusterIP"] = ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def test_apply_reports_like_kubectl_and_allocates_cluster_ips(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    assert desired.apply(store, PLAN, [svc("a")]) == ["service/a created"]
    assert desired.apply(store, PLAN, [svc("a")]) == ["service/a unchanged"]
    changed = svc("a")
    changed["spec"]["ports"] = [{"port": 80}]
    assert desired.apply(store, PLAN, [changed]) == ["service/a configured"]
    (ip,) = store.used_ips("svc")
    assert store.used_ips("svc")[ip] == "svc:demo-to/a"  # kept across re-apply


def test_conflicting_cluster_ip_applies_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    desired.apply(store, PLAN, [svc("a", ip="172.16.234.188")])
    with pytest.raises(UsageError, match="already allocated to svc:demo-to/a"):
        desired.apply(store, PLAN, [svc("b"), svc("c", ip="172.16.234.188")])
    assert store.get_object("Service", "demo-to", "b") is None
    assert list(store.used_ips("svc").values()) == ["svc:demo-to/a"]


def test_unknown_kind_or_missing_name_is_refused_before_anything_is_written(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    with pytest.raises(UsageError, match="kind 'ConfigMap'"):
        desired.apply(store, PLAN, [svc("a"), {"kind": "ConfigMap", "metadata": {"name": "x"}}])
    with pytest.raises(UsageError, match=r"no metadata\.name"):
        desired.apply(store, PLAN, [{"kind": "Pod", "metadata": {}}])
    assert store.list_objects("Service") == []


def test_namespace_delete_takes_its_objects_and_ips(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    desired.apply(store, PLAN, [{"kind": "Namespace", "metadata": {"name": "demo-to"}},
                                svc("a"), svc("b", ns="other")])
    gone = desired.delete(store, "Namespace", "", "demo-to")
    assert gone == ["service/a deleted", "namespace/demo-to deleted"]
    assert [o["metadata"]["name"] for o in store.list_objects("Service")] == ["b"]
    assert list(store.used_ips("svc").values()) == ["svc:other/b"]
    assert desired.delete(store, "Service", "other", "missing") == []


def test_default_namespace_is_filled_in(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    desired.apply(store, PLAN, [{"kind": "Pod", "metadata": {"name": "p"}, "spec": {}}])
    assert store.get_object("Pod", "default", "p") is not None


def deploy(env: str, limit: int | None = None, cause: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"matchLabels": {"web": "server"}}, "template": {
        "metadata": {"labels": {"web": "server"}},
        "spec": {"containers": [{"name": "demo", "image": "vasth/simple-server",
                                 "env": [{"name": "E", "value": env}]}]}}}
    if limit is not None:
        spec["revisionHistoryLimit"] = limit
    meta: dict[str, Any] = {"name": "d", "namespace": "demo-to"}
    if cause:
        meta["annotations"] = {"kubernetes.io/change-cause": cause}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}


def test_deployment_templates_are_numbered_as_the_deployment_controller_does(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "db")

    def numbered() -> list[tuple[int, str, str | None]]:
        return [(e["revision"], e["template"]["spec"]["containers"][0]["env"][0]["value"],
                 e["changeCause"]) for e in desired.revisions(store, "demo-to", "d")]

    desired.apply(store, PLAN, [deploy("a")])
    desired.apply(store, PLAN, [deploy("b", cause="to b")])
    desired.apply(store, PLAN, [deploy("b", cause="to b")])  # unchanged: no revision
    assert numbered() == [(1, "a", None), (2, "b", "to b")]
    # a template seen before (kubectl rollout undo) becomes the newest revision again
    desired.apply(store, PLAN, [deploy("a")])
    assert numbered() == [(2, "b", "to b"), (3, "a", None)]
    # revisionHistoryLimit old ones are kept besides the current one, the oldest go
    desired.apply(store, PLAN, [deploy("c", limit=1)])
    assert numbered() == [(3, "a", None), (4, "c", None)]
    # a Deployment deleted and made again starts at revision 1
    desired.delete(store, "Deployment", "demo-to", "d")
    desired.apply(store, PLAN, [deploy("z")])
    assert numbered() == [(1, "z", None)]
