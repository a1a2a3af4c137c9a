"""Which lab pods a live `explain source-ip` is about: --from and --to against the
objects the node daemon returns (no lab needed)."""

from __future__ import annotations

from typing import Any

import pytest

from remora.diagnose.evidence.target import find_pod, resolve_destination, split_to
from remora.errors import RemoraError, UsageError


def pod(name: str, ns: str, ip: str, labels: dict[str, str], sidecar: bool = True,
        ready: bool = True, owner: str | None = None, ports: list[int] | None = None,
        deleting: bool = False) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [
        {"name": "demo", "ports": [{"containerPort": p} for p in ports or []]}]
    if sidecar:
        containers.append({"name": "istio-proxy"})
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels}
    if owner:
        meta["ownerReferences"] = [{"kind": "Deployment", "name": owner}]
    if deleting:
        meta["deletionTimestamp"] = "now"
    return {"metadata": meta, "spec": {"containers": containers},
            "status": {"podIP": ip, "ready": ready},
            "remora": {"netns": f"x-pod-{name}" if ip else "", "status": "Running"}}


def svc(name: str, ns: str, ip: str, selector: dict[str, str],
        ports: list[int]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "selector": selector,
                     "ports": [{"port": p, "targetPort": p} for p in ports]}}


PODS = [
    pod("simple-client-abc12-xyz89", "demo-from", "10.20.0.78", {"web": "client"},
        owner="simple-client"),
    pod("simple-server-def34-uvw56", "demo-to", "10.20.0.77", {"web": "server"},
        owner="simple-server"),
    pod("simple-server-old00-gone0", "demo-to", "10.20.0.70", {"web": "server"},
        owner="simple-server", deleting=True),
    pod("plain-0", "plain", "10.20.0.80", {"web": "plain"}, sidecar=False, ports=[8080]),
    pod("pending-0", "plain", "", {"web": "pending"}, ready=False),
]
SERVICES = [svc("simple-server-svc", "demo-to", "172.16.1.170", {"web": "server"}, [18080]),
            svc("lonely-svc", "demo-to", "172.16.1.171", {"web": "nobody"}, [80])]


def test_client_by_name_by_deployment_and_name_dot_namespace() -> None:
    for ref, ns in (("simple-client-abc12-xyz89", "demo-from"),
                    ("deploy/simple-client", "demo-from"),
                    ("simple-client-abc12-xyz89.demo-from", "default")):
        p = find_pod(PODS, ref, ns)
        assert (p.name, p.namespace, p.ip, p.netns, p.has_sidecar, p.app_container) == (
            "simple-client-abc12-xyz89", "demo-from", "10.20.0.78",
            "x-pod-simple-client-abc12-xyz89", True, "demo")


def test_missing_and_pending_pods_are_named() -> None:
    with pytest.raises(RemoraError, match="client pod 'nope' not found in namespace 'demo-from'"):
        find_pod(PODS, "nope", "demo-from")
    with pytest.raises(RemoraError, match="deployment 'nope' has no pods"):
        find_pod(PODS, "deploy/nope", "demo-from")
    with pytest.raises(RemoraError, match="pending-0 is not running yet"):
        find_pod(PODS, "pending-0", "plain")
    with pytest.raises(UsageError, match="expected POD or deploy/NAME"):
        find_pod(PODS, "svc/simple-server-svc", "demo-to")


@pytest.mark.parametrize("to", ["simple-server-svc.demo-to:18080", "simple-server-svc.demo-to",
                                "simple-server-svc.demo-to.svc.cluster.local:18080",
                                "172.16.1.170:18080"])
def test_service_forms(to: str) -> None:
    d = resolve_destination(to, "demo-from", SERVICES, PODS)
    assert (d.kind, d.name, d.namespace, d.host, d.port, d.authority) == (
        "service", "simple-server-svc", "demo-to", "172.16.1.170", 18080,
        "simple-server-svc.demo-to:18080")
    # the terminating pod is not an endpoint
    assert [p.name for p in d.candidates] == ["simple-server-def34-uvw56"]


def test_service_in_the_clients_namespace_by_short_name() -> None:
    d = resolve_destination("simple-server-svc:18080", "demo-to", SERVICES, PODS)
    assert d.kind == "service" and d.host == "172.16.1.170"


def test_pod_forms_and_ports() -> None:
    d = resolve_destination("simple-server-def34-uvw56.demo-to", "demo-from", SERVICES, PODS)
    # no port given: the target port of the service that selects it
    assert (d.kind, d.host, d.port, d.authority) == ("pod", "10.20.0.77", 18080,
                                                     "10.20.0.77:18080")
    d = resolve_destination("plain-0:9000", "plain", SERVICES, PODS)
    assert (d.host, d.port, d.candidates[0].has_sidecar) == ("10.20.0.80", 9000, False)
    d = resolve_destination("plain-0", "plain", SERVICES, PODS)
    assert d.port == 8080  # its containerPort
    d = resolve_destination("10.20.0.80:8080", "default", SERVICES, PODS)
    assert d.kind == "pod" and d.name == "plain-0"


@pytest.mark.parametrize("to,error,message", [
    ("nothing.demo-to:80", RemoraError, "no service or pod named 'nothing' in namespace "
                                        "'demo-to'"),
    ("simple-server-svc.demo-to:9999", RemoraError, "has no port 9999 (its ports: 18080)"),
    ("lonely-svc.demo-to", RemoraError, "has no ready endpoint for port 80"),
    ("simple-server-svc.demo-to:http", UsageError, "is not a port number"),
    ("10.9.9.9:80", RemoraError, "no service ClusterIP or pod IP 10.9.9.9"),
])
def test_bad_destinations(to: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_destination(to, "demo-from", SERVICES, PODS)


def test_split_to() -> None:
    assert split_to("svc.ns:80") == ("svc.ns", 80)
    assert split_to("svc.ns") == ("svc.ns", None)
    assert split_to("fd00::1") == ("fd00::1", None)
    assert split_to("[fd00::1]:80") == ("fd00::1", 80)


def _dual_objects() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    pod = {"metadata": {"name": "srv", "namespace": "demo-to", "labels": {"web": "server"}},
           "spec": {"containers": [{"name": "demo", "ports": [{"containerPort": 18080}]},
                                   {"name": "istio-proxy"}]},
           "status": {"podIP": "10.20.0.77", "ready": True,
                      "podIPs": [{"ip": "10.20.0.77"}, {"ip": "fd00:10:20::77"}]},
           "remora": {"netns": "ns-srv"}}
    svc = {"metadata": {"name": "dual", "namespace": "demo-to"},
           "spec": {"selector": {"web": "server"}, "clusterIP": "172.16.0.5",
                    "clusterIPs": ["172.16.0.5", "fd00:96::5"],
                    "ports": [{"port": 18080}]}}
    return [pod], [svc]


def test_a_dual_stack_service_by_either_cluster_ip_or_family() -> None:
    pods, services = _dual_objects()
    assert resolve_destination("[fd00:96::5]:18080", "demo-to", services, pods).host == \
        "fd00:96::5"
    assert resolve_destination("[FD00:96:0::5]:18080", "demo-to", services, pods).host == \
        "fd00:96::5"
    assert resolve_destination("172.16.0.5:18080", "demo-to", services, pods).host == \
        "172.16.0.5"
    d = resolve_destination("dual:18080", "demo-to", services, pods, family=6)
    assert (d.kind, d.host, d.authority) == ("service", "fd00:96::5", "dual.demo-to:18080")
    assert d.candidates[0].ips == ["10.20.0.77", "fd00:10:20::77"]
    assert d.candidates[0].ip_of(6) == "fd00:10:20::77"
    pod = resolve_destination("[fd00:10:20::77]:18080", "demo-to", services, pods)
    assert (pod.kind, pod.host, pod.authority) == ("pod", "fd00:10:20::77",
                                                   "[fd00:10:20::77]:18080")
    pod = resolve_destination("srv", "demo-to", services, pods, family=6)
    assert (pod.host, pod.port) == ("fd00:10:20::77", 18080)


def test_a_family_the_service_has_not_is_one_line() -> None:
    pods, services = _dual_objects()
    services[0]["spec"]["clusterIPs"] = ["172.16.0.5"]
    with pytest.raises(RemoraError, match="has no IPv6 ClusterIP"):
        resolve_destination("dual", "demo-to", services, pods, family=6)
    with pytest.raises(UsageError, match="is an IPv4 address and --family asks for IPv6"):
        resolve_destination("172.16.0.5:18080", "demo-to", services, pods, family=6)


def test_an_ipv6_address_with_a_port_needs_brackets() -> None:
    # `fd00:10:20::79:18080` would silently be address + port: refuse it, as a URL does
    with pytest.raises(UsageError, match=r"needs brackets") as err:
        split_to("fd00:10:20::79:18080")
    assert err.value.fix == "write --to [fd00:10:20::79]:18080"


def test_a_dual_stack_service_dialled_over_the_other_family_walks_the_real_path() -> None:
    from remora.diagnose.evidence.lab import _real_family
    from remora.diagnose.evidence.target import lab_pod
    pods, services = _dual_objects()
    client = lab_pod({**pods[0], "metadata": {"name": "cli", "namespace": "demo-from"}})
    dest = resolve_destination("dual.demo-to:18080", "demo-from", services, pods, family=6)
    assert dest.host == "fd00:96::5"
    notes: list[str] = []
    _real_family(dest, client, notes)
    # the sidecars reach the server at its primary (IPv4) address: walk that, say so
    assert dest.host == "172.16.0.5"
    assert "IPv6 is not the path the traffic takes" in notes[0]
    assert "[fd00:96::5]:18080" in notes[0] and "10.20.0.77 over IPv4" in notes[0]
    # without a client sidecar the app's own IPv6 connection goes to the pod: unchanged
    plain = lab_pod({**pods[0], "spec": {"containers": [{"name": "demo"}]}})
    dest = resolve_destination("dual.demo-to:18080", "demo-from", services, pods, family=6)
    _real_family(dest, plain, notes := [])
    assert (dest.host, notes) == ("fd00:96::5", [])


def test_a_deployment_or_pod_in_another_namespace_is_named() -> None:
    # a forgotten -n: not "has no pods", but not found here, and where it is
    with pytest.raises(RemoraError) as err:
        find_pod(PODS, "deploy/simple-client", "default")
    assert err.value.problem == ('deployments.apps "simple-client" not found in namespace '
                                 "'default' (it is in demo-from)")
    assert err.value.fix == "did you mean -n demo-from?"
    deps = [{"metadata": {"name": "simple-client", "namespace": "demo-from"}},
            {"metadata": {"name": "idle", "namespace": "default"}}]
    with pytest.raises(RemoraError) as err:
        find_pod(PODS, "deploy/simple-client", "default", deployments=deps)
    assert err.value.fix == "did you mean -n demo-from?"
    with pytest.raises(RemoraError, match="'idle' has no pods in namespace 'default'"):
        find_pod(PODS, "deploy/idle", "default", deployments=deps)
    with pytest.raises(RemoraError, match="not found in namespace 'default' \\(it is in "
                                          "demo-to\\)") as err:
        find_pod(PODS, "simple-server-def34-uvw56", "default")
    assert err.value.fix == "did you mean -n demo-to?"
