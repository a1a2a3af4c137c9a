import copy
import logging
from typing import Any

from remora.controlplane.adapters import inject_dict, snapshot_from_dicts
from remora.controlplane.generate import generate
from remora.resources.naming import pod_from_deployment
from tests.unit.controlplane.seed import SERVER_IP, seed


def store_pod(obj: dict[str, Any], ip: str, ready: bool) -> dict[str, Any]:
    # as remora.node.views renders a pod: runtime bookkeeping next to the manifest fields
    obj = {**obj, "status": {"phase": "Running", "podIP": ip, "ready": ready},
           "remora": {"netns": "x", "node": 1}}
    obj["metadata"] = {**obj["metadata"], "uid": "u1",
                       "creationTimestamp": "2026-01-01T00:00:00Z"}
    obj["spec"] = {**obj["spec"], "volumes": [{"name": "data", "emptyDir": {}}]}
    return obj


def test_inject_dict_keeps_unmodelled_fields_and_adds_sidecar() -> None:
    plain = pod_from_deployment(_server_deployment())
    d = store_pod(plain.to_dict(), "", False)
    out = inject_dict(d, {"metadata": {"name": "demo-to",
                                       "labels": {"istio-injection": "enabled"}}})
    assert [c["name"] for c in out["spec"]["containers"]] == ["demo", "istio-proxy"]
    assert out["spec"]["initContainers"][0]["args"][0] == "istio-iptables"
    assert out["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]
    assert out["remora"] == {"netns": "x", "node": 1}
    assert inject_dict(d, {"metadata": {"name": "demo-to"}}) is d  # not injected: unchanged


def _server_deployment() -> Any:
    from remora.resources.loader import load_file
    from tests.unit.controlplane.seed import DATA
    return load_file(DATA / "server.yaml").objects[0]


def test_snapshot_from_store_dicts_only_ready_pods_are_endpoints() -> None:
    snap, server, client = seed()
    pods = [store_pod(server.to_dict(), SERVER_IP, True),
            store_pod(client.to_dict(), "10.20.0.78", True)]
    not_ready = store_pod(server.to_dict(), "10.20.0.99", False)
    not_ready["metadata"]["name"] += "x"
    services = [s.to_dict() for s in snap.services]
    namespaces = [n.to_dict() for n in snap.namespaces]
    snap2 = snapshot_from_dicts(namespaces, services, [*pods, not_ready])
    assert snap2.services[0].clusterIP == "172.16.234.188"
    cfg = generate(snap2, client, "10.20.0.78", "/d")
    cla = cfg.endpoints["outbound|18080||simple-server-svc.demo-to.svc.cluster.local"]
    ips = [e["endpoint"]["address"]["socket_address"]["address"]
           for e in cla["endpoints"][0]["lb_endpoints"]]
    assert ips == [SERVER_IP]


def test_a_stored_service_that_no_longer_validates_is_left_out_not_fatal(
        caplog: Any) -> None:
    # one bad object must not stop every sidecar's config updates (istiod keeps pushing)
    snap, server, _client = seed()
    good = snap.services[0].to_dict()
    bad = copy.deepcopy(good)
    bad["metadata"]["name"] = "dup"
    bad["spec"]["ports"] = [{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]
    pods = [store_pod(server.to_dict(), SERVER_IP, True)]
    with caplog.at_level(logging.WARNING, logger="remora.controlplane"):
        snap2 = snapshot_from_dicts([n.to_dict() for n in snap.namespaces], [good, bad], pods)
    assert [s.metadata.name for s in snap2.services] == ["simple-server-svc"]
    assert "service/dup in namespace demo-to left out" in caplog.text
    assert "Duplicate value" in caplog.text


def test_generation_never_emits_two_clusters_or_listeners_of_one_name() -> None:
    from dataclasses import replace

    from remora.resources.objects import ServicePort
    snap, _server, client = seed()
    svc = snap.services[0]
    # a snapshot built without validation: port 80 twice, on a TCP and a sniffed port
    dup = replace(svc, metadata=replace(svc.metadata, name="dup"), clusterIP="172.16.0.9",
                  ports=(ServicePort(port=80, targetPort=80, name="a"),
                         ServicePort(port=80, targetPort=81, name="tcp-b")))
    cfg = generate(replace(snap, services=(svc, dup)), client, "10.20.0.78", "/d")
    for items in (cfg.clusters, cfg.listeners):
        names = [x["name"] for x in items]
        assert len(names) == len(set(names)), names
    assert "outbound|80||dup.demo-to.svc.cluster.local" in [c["name"] for c in cfg.clusters]
