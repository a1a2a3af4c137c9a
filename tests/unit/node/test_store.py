from __future__ import annotations

from pathlib import Path

from remora.node.store import ContainerRow, PodRow, Store


def test_objects_keep_generation_of_spec_changes(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    d = {"kind": "Deployment", "metadata": {"name": "web", "namespace": "demo"},
         "spec": {"replicas": 1}}
    assert store.put_object(d) == (True, 1)
    assert store.put_object(d) == (False, 1)
    d["metadata"]["labels"] = {"a": "b"}
    assert store.put_object(d) == (True, 1)  # metadata only: same generation
    d["spec"]["replicas"] = 2
    assert store.put_object(d) == (True, 2)
    got = store.get_object("Deployment", "demo", "web")
    assert got is not None and got["spec"]["replicas"] == 2
    assert got["metadata"]["generation"] == 2
    assert [o["metadata"]["name"] for o in store.list_objects("Deployment", "demo")] == ["web"]
    assert store.list_objects("Deployment", "other") == []
    assert store.delete_object("Deployment", "demo", "web")
    assert not store.delete_object("Deployment", "demo", "web")


def test_pods_containers_and_ips_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    row = PodRow(uid="u1", namespace="demo", name="p", node=1, netns="remora-pod-x",
                 body={"metadata": {"name": "p"}, "spec": {"containers": []}})
    store.insert_pod(row)
    store.hold_ip("pod", "10.20.0.2", "pod:u1")
    store.update_pod("u1", ip="10.20.0.2", phase="Running")
    got = store.get_pod("demo", "p")
    assert got is not None and got.ip == "10.20.0.2" and got.phase == "Running"
    assert got.body == row.body
    store.put_container(ContainerRow(pod_uid="u1", name="c", pid=42, start_ticks=7,
                                     cmdline=["sleep", "1"], restarts=3, state="Running"))
    (c,) = store.containers("u1")
    assert (c.pid, c.start_ticks, c.cmdline, c.restarts) == (42, 7, ["sleep", "1"], 3)
    assert store.used_ips("pod") == {"10.20.0.2": "pod:u1"}
    store.delete_pod("u1")
    assert store.get_pod("demo", "p") is None
    assert store.containers("u1") == [] and store.used_ips("pod") == {}


def test_state_survives_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.set_meta("config", {"prefix": "rn-"})
    store.hold_ip("svc", "172.16.1.2", "svc:a/b")
    store.close()
    again = Store(tmp_path / "db")
    assert again.get_meta("config") == {"prefix": "rn-"}
    assert again.used_ips("svc") == {"172.16.1.2": "svc:a/b"}


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    try:
        with store.tx():
            store.hold_ip("svc", "172.16.1.2", "svc:a/b")
            raise RuntimeError("half-way")
    except RuntimeError:
        pass
    assert store.used_ips("svc") == {}
