"""Service -> endpoints has one definition (remora.resources.selection), and the three
places that need it agree with it: the control plane (what Envoy gets by EDS), the node
(what kube-proxy programs) and `explain` (which server pods a probe may reach)."""

from __future__ import annotations

from typing import Any

import pytest

from remora.controlplane import model
from remora.controlplane.adapters import snapshot_from_dicts
from remora.diagnose.evidence.target import resolve_destination
from remora.errors import RemoraError
from remora.node import controller
from remora.resources import selection
from remora.resources.selection import (
    Candidate,
    LabelSelector,
    PortSpec,
    Requirement,
    label_selector,
    select_endpoints,
    target_port,
)

# -- label selectors, as Kubernetes defines them ----------------------------------------------
LABELS = {"app": "web", "tier": "front"}


@pytest.mark.parametrize(("req", "labels", "expected"), [
    (Requirement("app", "In", ("web", "api")), LABELS, True),
    (Requirement("app", "In", ("api",)), LABELS, False),
    (Requirement("zone", "In", ("a",)), LABELS, False),          # absent key: In is false
    (Requirement("app", "NotIn", ("api",)), LABELS, True),
    (Requirement("app", "NotIn", ("web",)), LABELS, False),
    (Requirement("zone", "NotIn", ("a",)), LABELS, True),        # absent key: NotIn holds
    (Requirement("tier", "Exists"), LABELS, True),
    (Requirement("zone", "Exists"), LABELS, False),
    (Requirement("zone", "DoesNotExist"), LABELS, True),
    (Requirement("tier", "DoesNotExist"), LABELS, False),
    (Requirement("app", "Gt", ("1",)), LABELS, False),           # unknown: selects nothing
])
def test_requirement_operators(req: Requirement, labels: dict[str, str],
                               expected: bool) -> None:
    assert req.matches(labels) is expected


def test_label_selector_forms() -> None:
    # a Service's plain map is matchLabels alone
    assert label_selector({"app": "web"}).matches(LABELS)
    assert not label_selector({"app": "web", "zone": "a"}).matches(LABELS)
    # matchLabels and matchExpressions are ANDed
    both = label_selector({"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["front", "back"]},
        {"key": "canary", "operator": "DoesNotExist"}]})
    assert both.matches(LABELS)
    assert not both.matches({**LABELS, "canary": "true"})
    assert not both.matches({**LABELS, "app": "api"})
    assert label_selector({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}) \
        == LabelSelector({}, (Requirement("tier", "Exists"),))
    # a Service without a selector gets no endpoints from the controller
    for empty in (None, {}, {"matchLabels": {}}):
        assert not label_selector(empty).matches(LABELS)


PORTS = (("http", 18080), ("metrics", 9090))


@pytest.mark.parametrize(("port", "expected"), [
    (PortSpec(80, 8080), 8080),
    (PortSpec(80, "8080"), 8080),          # a numeric string is a number
    (PortSpec(80, "http"), 18080),         # a name resolves on the pod
    (PortSpec(80, "grpc"), None),          # a name the pod lacks: no endpoint
    (PortSpec(80, None), 80),              # missing: the service port
])
def test_target_port(port: PortSpec, expected: int | None) -> None:
    assert target_port(port, PORTS) == expected


def test_select_endpoints_keeps_ready_selected_pods_of_the_namespace() -> None:
    def cand(name: str, ip: str, **kw: Any) -> Candidate:
        base: dict[str, Any] = {"namespace": "ns", "labels": {"app": "web"}, "ready": True,
                                "container_ports": (("http", 18080),)}
        return Candidate(name=name, ip=ip, **{**base, **kw})
    pods = [cand("b", "10.20.0.100"), cand("a", "10.20.0.9"),
            cand("unready", "10.20.0.3", ready=False),
            cand("going", "10.20.0.4", deleting=True),
            cand("pending", ""),
            cand("elsewhere", "10.20.0.5", namespace="other"),
            cand("other-app", "10.20.0.6", labels={"app": "db"}),
            cand("renamed", "10.20.0.7", container_ports=(("http", 28080),)),
            cand("unnamed", "10.20.0.8", container_ports=(("", 18080),))]
    eps = select_endpoints("ns", LabelSelector({"app": "web"}),
                           [PortSpec(80, "http", "http"), PortSpec(81, "8081", "alt")], pods)
    assert [(e.service_port, e.ip, e.port, e.pod) for e in eps] == [
        (80, "10.20.0.7", 28080, "renamed"),      # the name resolves per pod
        (80, "10.20.0.9", 18080, "a"),            # addresses sort numerically
        (80, "10.20.0.100", 18080, "b"),
        (81, "10.20.0.7", 8081, "renamed"),
        (81, "10.20.0.8", 8081, "unnamed"),
        (81, "10.20.0.9", 8081, "a"),
        (81, "10.20.0.100", 8081, "b")]


# -- the three callers agree --------------------------------------------------------------
def pod(name: str, ip: str, labels: dict[str, str], ports: list[tuple[str, int]],
        ready: bool = True, ns: str = "demo-to", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-04T14:00:00Z"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "app", "image": "vasth/simple-server",
                                     "ports": [{"name": n, "containerPort": p} if n else
                                               {"containerPort": p} for n, p in ports]}]},
            "status": {"podIP": ip, "ready": ready},
            "remora": {"netns": f"x-{name}" if ip else "", "status": "Running"}}


def service(name: str, ip: str, selector: dict[str, str],
            ports: list[dict[str, Any]], ns: str = "demo-to") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "selector": selector, "ports": ports}}


PODS = [
    pod("server-a", "10.20.0.77", {"web": "server"}, [("http", 18080)]),
    pod("server-b", "10.20.0.100", {"web": "server", "track": "canary"}, [("http", 28080)]),
    pod("server-unready", "10.20.0.80", {"web": "server"}, [("http", 18080)], ready=False),
    pod("server-going", "10.20.0.81", {"web": "server"}, [("http", 18080)], deleting=True),
    pod("server-pending", "", {"web": "server"}, [("http", 18080)]),
    pod("server-elsewhere", "10.20.1.5", {"web": "server"}, [("http", 18080)], ns="demo-from"),
    pod("plain", "10.20.0.90", {"web": "server"}, [("", 18080)]),
    pod("client", "10.20.0.78", {"web": "client"}, [("http", 18080)]),
]
SERVICES = [
    service("by-name", "172.16.0.10", {"web": "server"},
            [{"name": "http", "port": 18080, "targetPort": "http"}]),
    service("by-number", "172.16.0.11", {"web": "server"},
            [{"name": "http", "port": 80, "targetPort": 18080},
             {"name": "alt", "port": 81, "targetPort": "9090"}]),   # a numeric string
    service("canary", "172.16.0.12", {"web": "server", "track": "canary"},
            [{"name": "http", "port": 80, "targetPort": "http"}]),
    service("defaulted", "172.16.0.13", {"web": "client"}, [{"port": 18080}]),
    service("nobody", "172.16.0.14", {"web": "nobody"}, [{"port": 80}]),
]
# (service, service port) -> (pod, pod port): the answer, written out by hand.
EXPECTED = {
    ("by-name", 18080): [("server-a", 18080), ("server-b", 28080)],   # "plain" has no name
    ("by-number", 80): [("server-a", 18080), ("plain", 18080), ("server-b", 18080)],
    ("by-number", 81): [("server-a", 9090), ("plain", 9090), ("server-b", 9090)],
    ("canary", 80): [("server-b", 28080)],
    ("defaulted", 18080): [("client", 18080)],
    ("nobody", 80): [],
}


def _by_port(eps: list[tuple[str, int, int]]) -> dict[int, list[tuple[str, int]]]:
    out: dict[int, list[tuple[str, int]]] = {}
    for pod_name, port, service_port in eps:
        out.setdefault(service_port, []).append((pod_name, port))
    return out


def test_the_one_function_gives_the_expected_endpoints() -> None:
    for svc in SERVICES:
        eps = selection.service_endpoints_from_dicts(svc, PODS)
        got = _by_port([(e.pod, e.port, e.service_port) for e in eps])
        for (name, sp), want in EXPECTED.items():
            if name == svc["metadata"]["name"]:
                assert got.get(sp, []) == want, (name, sp)


def test_node_control_plane_and_explain_agree_with_it() -> None:
    snapshot = snapshot_from_dicts([], SERVICES, PODS)
    typed = {s.metadata.name: s for s in snapshot.services}
    assert typed["by-number"].ports[1].targetPort == 9090  # the loader read "9090" too
    for svc in SERVICES:
        name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
        node = _by_port([(e["pod"], e["port"], e["servicePort"])
                         for e in controller.endpoints(svc, PODS)])
        for sp in typed[name].ports:
            want = EXPECTED[(name, sp.port)]
            # the node: what kube-proxy programs
            assert node.get(sp.port, []) == want, ("node", name, sp.port)
            # the control plane: what Envoy gets by EDS (same pods, same ports)
            eds = model.endpoints(snapshot, typed[name], sp)
            assert [(e.pod, e.port) for e in eds] == want, ("eds", name, sp.port)
            # explain: the server pods a probe to SERVICE.NS:PORT may reach
            if want:
                dest = resolve_destination(f"{name}.{ns}:{sp.port}", "demo-from",
                                           SERVICES, PODS)
                assert [c.name for c in dest.candidates] == [p for p, _ in want]
            else:
                with pytest.raises(RemoraError, match="no ready endpoint"):
                    resolve_destination(f"{name}.{ns}:{sp.port}", "demo-from",
                                        SERVICES, PODS)


def test_the_node_reads_match_expressions_through_the_same_rules() -> None:
    svc = service("expr", "172.16.0.20", {}, [{"name": "http", "port": 80,
                                              "targetPort": "http"}])
    svc["spec"]["selector"] = {"matchLabels": {"web": "server"}, "matchExpressions": [
        {"key": "track", "operator": "NotIn", "values": ["canary"]}]}
    assert [(e["pod"], e["port"]) for e in controller.endpoints(svc, PODS)] == [
        ("server-a", 18080)]
    assert controller.selector_matches(svc["spec"]["selector"], {"web": "server"})
    assert not controller.selector_matches(svc["spec"]["selector"],
                                           {"web": "server", "track": "canary"})


def test_the_control_plane_inbound_ports_use_the_same_target_resolution() -> None:
    snapshot = snapshot_from_dicts([], SERVICES, PODS)
    server_b = next(w.pod for w in snapshot.workloads if w.pod.metadata.name == "server-b")
    ports = {p.port: sorted(s.metadata.name for s in p.services)
             for p in model.inbound_ports(snapshot, server_b)}
    assert ports == {28080: ["by-name", "canary"], 18080: ["by-number"],
                     9090: ["by-number"]}
