"""The seed's scenario as a control-plane snapshot: client in demo-from, server in demo-to."""

from __future__ import annotations

from dataclasses import replace

from remora.controlplane.injection import inject
from remora.controlplane.model import Snapshot, Workload
from remora.resources.loader import load_file
from remora.resources.naming import pod_from_deployment
from remora.resources.objects import Deployment, Namespace, ObjectMeta, Pod, Service
from remora.resources.patch import apply_patch
from tests.datafiles import data_path

DATA = data_path("resources")
SERVER_IP, CLIENT_IP, CLUSTER_IP = "10.20.0.77", "10.20.0.78", "172.16.234.188"
TPROXY_PATCH = ('{"spec":{"template":{"metadata":{"annotations":'
                '{"sidecar.istio.io/interceptionMode":"TPROXY"}}}}}')


def ns(name: str) -> Namespace:
    return Namespace(ObjectMeta(name=name, labels={"istio-injection": "enabled"}))


def seed(tproxy: bool = False) -> tuple[Snapshot, Pod, Pod]:
    """(snapshot, server pod, client pod), both injected."""
    server_dep, svc = load_file(DATA / "server.yaml").objects
    (client_dep,) = load_file(DATA / "client.yaml").objects
    assert isinstance(server_dep, Deployment) and isinstance(client_dep, Deployment)
    assert isinstance(svc, Service)
    if tproxy:
        patched, _ = apply_patch(server_dep, TPROXY_PATCH)
        assert isinstance(patched, Deployment)
        server_dep = patched
    server = inject(pod_from_deployment(server_dep), ns("demo-to"))
    client = inject(pod_from_deployment(client_dep), ns("demo-from"))
    snap = Snapshot(services=(replace(svc, clusterIP=CLUSTER_IP),),
                    workloads=(Workload(server, SERVER_IP), Workload(client, CLIENT_IP)),
                    namespaces=(ns("demo-from"), ns("demo-to")))
    return snap, server, client


# Dual stack: the seed's pods and service with a ULA IPv6 address each (a /64 on the veth,
# a service range of its own), as Kubernetes lists them (status.podIPs, spec.clusterIPs).
SERVER_IP6, CLIENT_IP6, CLUSTER_IP6 = "fd00:10:20::77", "fd00:10:20::78", "fd00:96::1:bc"
FQDN = "simple-server-svc.demo-to.svc.cluster.local"


def dual(tproxy: bool = False, v6_primary: bool = False) -> tuple[Snapshot, Pod, Pod]:
    snap, server, client = seed(tproxy)
    svc = snap.services[0]
    ips = (CLUSTER_IP6, CLUSTER_IP) if v6_primary else (CLUSTER_IP, CLUSTER_IP6)
    snap = replace(snap, services=(replace(svc, clusterIP=ips[0]),),
                   workloads=(Workload(server, SERVER_IP, ips=(SERVER_IP, SERVER_IP6)),
                              Workload(client, CLIENT_IP, ips=(CLIENT_IP, CLIENT_IP6))),
                   cluster_ips={FQDN: ips})
    return snap, server, client


def v6_only(tproxy: bool = False) -> tuple[Snapshot, Pod, Pod]:
    snap, server, client = seed(tproxy)
    snap = replace(snap, services=(replace(snap.services[0], clusterIP=CLUSTER_IP6),),
                   workloads=(Workload(server, SERVER_IP6), Workload(client, CLIENT_IP6)))
    return snap, server, client
