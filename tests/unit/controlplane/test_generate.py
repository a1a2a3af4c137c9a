import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane.files import write_config
from remora.controlplane.generate import generate, static_bootstrap
from remora.controlplane.model import Workload
from tests import proxyharness as ph
from tests.unit.controlplane.seed import CLIENT_IP, CLUSTER_IP, SERVER_IP, seed

FQDN = "simple-server-svc.demo-to.svc.cluster.local"
OUTBOUND = f"outbound|18080||{FQDN}"


def by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(i for i in items if i["name"] == name)


def test_server_virtual_inbound_has_seed_chains_and_127_0_0_6_cluster() -> None:
    snap, server, _ = seed()
    cfg = generate(snap, server, SERVER_IP, "/run/remora/server")
    vi = by_name(cfg.listeners, "virtualInbound")
    assert vi["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 15006}
    assert [f["name"] for f in vi["listener_filters"]] == [
        "envoy.filters.listener.original_dst", "envoy.filters.listener.http_inspector"]
    assert "transparent" not in vi
    names = [c.get("name") for c in vi["filter_chains"]]
    assert names == ["virtualInbound-blackhole", "virtualInbound-catchall-http", "virtualInbound",
                     "0.0.0.0_18080", "0.0.0.0_18080"]
    blackhole = vi["filter_chains"][0]
    assert blackhole["filter_chain_match"] == {"destination_port": 15006}
    assert blackhole["filters"][0]["typed_config"]["cluster"] == "BlackHoleCluster"
    http, tcp = vi["filter_chains"][3:]
    # unnamed port 18080: sniffed, HTTP and TCP chains (seed's listener table)
    assert http["filter_chain_match"] == {"destination_port": 18080,
                                          "transport_protocol": "raw_buffer",
                                          "application_protocols": ["http/1.0", "http/1.1", "h2c"]}
    hcm = http["filters"][0]["typed_config"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    assert route["name"] == "default" and route["route"]["cluster"] == "inbound|18080||"
    assert hcm["use_remote_address"] is False
    assert hcm["access_log"][0]["typed_config"]["path"] == "/dev/stdout"
    assert tcp["filter_chain_match"] == {"destination_port": 18080,
                                         "transport_protocol": "raw_buffer"}
    assert tcp["filters"][0]["typed_config"]["cluster"] == "inbound|18080||"
    assert tcp["filters"][0]["typed_config"]["stat_prefix"] == "inbound|18080||"

    cluster = by_name(cfg.clusters, "inbound|18080||")
    assert cluster["type"] == "ORIGINAL_DST" and cluster["lb_policy"] == "CLUSTER_PROVIDED"
    assert cluster["connect_timeout"] == "10s"
    assert cluster["upstream_bind_config"] == {"source_address": {"address": "127.0.0.6",
                                                                  "port_value": 0}}
    assert cluster["circuit_breakers"]["thresholds"][0] == {
        "max_connections": 4294967295, "max_pending_requests": 4294967295,
        "max_requests": 4294967295, "max_retries": 4294967295, "track_remaining": True}
    assert cluster["metadata"]["filter_metadata"]["istio"]["services"] == [
        {"host": FQDN, "name": "simple-server-svc", "namespace": "demo-to"}]
    passthrough = by_name(cfg.clusters, "InboundPassthroughCluster")
    assert passthrough["upstream_bind_config"]["source_address"]["address"] == "127.0.0.6"
    assert by_name(cfg.clusters, "BlackHoleCluster") == {
        "name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"}
    assert "upstream_bind_config" not in by_name(cfg.clusters, "PassthroughCluster")


def test_client_routes_service_to_outbound_cluster_with_server_endpoint() -> None:
    snap, _, client = seed()
    cfg = generate(snap, client, CLIENT_IP, "/run/remora/client")
    vo = by_name(cfg.listeners, "virtualOutbound")
    assert vo["use_original_dst"] is True
    assert [c["name"] for c in vo["filter_chains"]] == ["virtualOutbound-blackhole",
                                                        "virtualOutbound-catchall-tcp"]
    assert vo["filter_chains"][1]["filters"][0]["typed_config"]["cluster"] == "PassthroughCluster"
    svc_listener = by_name(cfg.listeners, f"{CLUSTER_IP}_18080")
    assert svc_listener["bind_to_port"] is False
    http, tcp = svc_listener["filter_chains"]
    routes = http["filters"][0]["typed_config"]["route_config"]
    vhost = next(v for v in routes["virtual_hosts"] if "simple-server-svc.demo-to:18080"
                 in v["domains"])
    assert vhost["routes"][0]["route"]["cluster"] == OUTBOUND
    assert {FQDN, "simple-server-svc.demo-to", "simple-server-svc.demo-to.svc", CLUSTER_IP,
            f"{CLUSTER_IP}:18080"} <= set(vhost["domains"])
    assert "simple-server-svc" not in vhost["domains"]  # other namespace: no short name
    assert tcp["filters"][0]["typed_config"]["cluster"] == OUTBOUND
    cluster = by_name(cfg.clusters, OUTBOUND)
    assert cluster["type"] == "EDS"
    eds_path = cluster["eds_cluster_config"]["eds_config"]["path_config_source"]["path"]
    assert eds_path.startswith("/run/remora/client/eds/")
    eds = cfg.files[eds_path.removeprefix("/run/remora/client/")]
    cla = eds["resources"][0]
    assert cla["@type"].endswith("ClusterLoadAssignment") and cla["cluster_name"] == OUTBOUND
    addr = cla["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert addr == {"address": SERVER_IP, "port_value": 18080}
    boot = cfg.files["bootstrap.json"]
    assert boot["admin"]["address"]["socket_address"] == {"address": "127.0.0.1",
                                                          "port_value": 15000}
    assert boot["dynamic_resources"]["lds_config"]["path_config_source"]["path"] == \
        "/run/remora/client/lds.json"
    assert boot["node"]["id"].startswith(f"sidecar~{CLIENT_IP}~simple-client-")


def test_tproxy_adds_original_src_and_transparent() -> None:
    snap, server, _ = seed(tproxy=True)
    cfg = generate(snap, server, SERVER_IP, "/d")
    vi = by_name(cfg.listeners, "virtualInbound")
    assert vi["transparent"] is True
    assert by_name(cfg.listeners, "virtualOutbound")["transparent"] is True
    filters = vi["listener_filters"]
    assert filters[0]["name"] == "envoy.filters.listener.original_dst"
    assert filters[1] == {"name": "envoy.filters.listener.original_src", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_src.v3"
                 ".OriginalSrc", "mark": 1337}}
    # clusters keep their 127.0.0.6 bind in TPROXY (original_src overrides it at runtime)
    assert by_name(cfg.clusters, "inbound|18080||")["upstream_bind_config"]


def test_protocol_selection_named_ports_and_named_target_port() -> None:
    snap, server, client = seed()
    (svc,) = snap.services
    from remora.resources.objects import ContainerPort, ServicePort
    web = replace(svc, metadata=replace(svc.metadata, name="web"), clusterIP="172.16.0.10",
                  ports=(ServicePort(port=80, targetPort="http-main", name="http"),
                         ServicePort(port=5432, targetPort=5432, name="tcp-db"),
                         ServicePort(port=53, targetPort=53, name="dns", protocol="UDP")))
    app = replace(server.spec.containers[0],
                  ports=(ContainerPort(containerPort=8080, name="http-main"),))
    server2 = replace(server, spec=replace(server.spec,
                                           containers=(app, *server.spec.containers[1:])))
    snap2 = replace(snap, services=(*snap.services, web),
                    workloads=(Workload(server2, SERVER_IP), snap.workloads[1]))
    cfg = generate(snap2, client, CLIENT_IP, "/d")
    names = {listener["name"] for listener in cfg.listeners}
    assert {"0.0.0.0_80", "172.16.0.10_5432"} <= names
    assert not any(n.endswith("_53") for n in names)
    tcp_only = by_name(cfg.listeners, "172.16.0.10_5432")
    assert len(tcp_only["filter_chains"]) == 1 and "listener_filters" not in tcp_only
    http80 = by_name(cfg.listeners, "0.0.0.0_80")
    assert http80["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["name"] == "80"
    cla = cfg.endpoints["outbound|80||web.demo-to.svc.cluster.local"]
    ep = cla["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert ep == {"address": SERVER_IP, "port_value": 8080}  # named targetPort resolved
    inbound = generate(snap2, server2, SERVER_IP, "/d")
    vi = by_name(inbound.listeners, "virtualInbound")
    chains = {(c.get("name"), json.dumps(c["filter_chain_match"], sort_keys=True))
              for c in vi["filter_chains"]}
    assert sum(1 for n, _ in chains if n == "0.0.0.0_8080") == 1  # HTTP only: one chain
    assert sum(1 for n, _ in chains if n == "0.0.0.0_5432") == 1


def test_endpoint_change_rewrites_only_its_eds_file(tmp_path: Path) -> None:
    snap, _, client = seed()
    d = str(tmp_path / "client")
    first = write_config(generate(snap, client, CLIENT_IP, d))
    assert set(first) >= {"bootstrap.json", "lds.json", "cds.json"}
    assert write_config(generate(snap, client, CLIENT_IP, d)) == []
    server_w = snap.workloads[0]
    moved = replace(snap, workloads=(replace(server_w, ip="10.20.0.90"), snap.workloads[1]))
    changed = write_config(generate(moved, client, CLIENT_IP, d))
    assert changed == ["eds/outbound_18080__simple-server-svc.demo-to.svc.cluster.local.json"]
    text = (tmp_path / "client" / changed[0]).read_text()
    assert "10.20.0.90" in text and "10.20.0.77" not in text
    assert not list((tmp_path / "client").rglob(".*"))  # no temp files left behind


def _keys(value: Any, out: set[str]) -> set[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(k)
            if k not in ("filter_metadata",):
                _keys(v, out)
    elif isinstance(value, list):
        for v in value:
            _keys(v, out)
    return out


def test_only_fields_of_the_proxy_subset(data_dir: Path) -> None:
    allowed: set[str] = set()
    for f in (data_dir / "reference" / "envoy-sidecar").glob("*.json"):
        _keys(json.loads(f.read_text()), allowed)
    # path-based xDS, EDS, and what issue 3 names (http_inspector ALPN matching, metadata)
    allowed |= {"dynamic_resources", "lds_config", "cds_config", "path_config_source", "path",
                "resource_api_version", "eds_cluster_config", "service_name", "eds_config",
                "version_info", "resources", "metadata", "filter_metadata",
                "transport_protocol", "application_protocols", "direct_response", "status",
                # a sniffed port's clusters follow the downstream protocol (Istio's
                # setUseDownstreamProtocol; remora proxy reads the block)
                "typed_extension_protocol_options",
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "use_downstream_protocol_config", "http_protocol_options",
                "http2_protocol_options"}
    for tproxy in (False, True):
        snap, server, client = seed(tproxy)
        for pod, ip in ((server, SERVER_IP), (client, CLIENT_IP)):
            cfg = generate(snap, pod, ip, "/d")
            used = set()
            for body in cfg.files.values():
                _keys(body, used)
            assert used - allowed == set()


@pytest.mark.envoy
@pytest.mark.parametrize("tproxy", [False, True])
def test_real_envoy_validates_generated_config(tmp_path: Path, tproxy: bool) -> None:
    snap, server, client = seed(tproxy)
    for pod, ip in ((server, SERVER_IP), (client, CLIENT_IP)):
        d = tmp_path / pod.metadata.name
        cfg = generate(snap, pod, ip, str(d))
        write_config(cfg)
        static = tmp_path / f"{pod.metadata.name}-static.json"
        static.write_text(json.dumps(static_bootstrap(cfg)))
        ph.assert_envoy_accepts(static, d / "bootstrap.json")


def test_bootstrap_has_istio_health_and_stats_listeners() -> None:
    snap, server, _ = seed()
    cfg = generate(snap, server, SERVER_IP, "/d")
    static = cfg.bootstrap["static_resources"]
    by_port = {lst["address"]["socket_address"]["port_value"]: lst for lst in static["listeners"]}
    assert set(by_port) == {15021, 15090}
    health = by_port[15021]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    route = health["virtual_hosts"][0]["routes"][0]
    assert route == {"match": {"prefix": "/healthz/ready"}, "direct_response": {"status": 200}}
    stats = by_port[15090]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    assert stats["virtual_hosts"][0]["routes"][0]["route"]["cluster"] == "prometheus_stats"
    (prom,) = static["clusters"]
    assert prom["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] \
        == {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}
    # the injected sidecar's readiness probe is that listener
    probe = server.spec.containers[-1].readinessProbe
    assert probe is not None and probe["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    # the static bootstrap keeps them next to the xDS resources
    names = [lst["name"] for lst in static_bootstrap(cfg)["static_resources"]["listeners"]]
    assert names[:2] == ["0.0.0.0_15090", "0.0.0.0_15021"] and "virtualInbound" in names


def rich_snapshot() -> tuple[Any, Any, Any]:
    """The seed plus: an HTTP service on a named targetPort, a TCP and a UDP port, a
    second HTTP service on the same port in another namespace, two server replicas."""
    from remora.resources.objects import ContainerPort, ObjectMeta, ServicePort
    snap, server, client = seed()
    (svc,) = snap.services
    web = replace(svc, metadata=replace(svc.metadata, name="web"), clusterIP="172.16.0.10",
                  ports=(ServicePort(port=80, targetPort="http-main", name="http"),
                         ServicePort(port=5432, targetPort=5432, name="tcp-db"),
                         ServicePort(port=53, targetPort=53, name="dns", protocol="UDP")))
    other = replace(svc, metadata=ObjectMeta(name="web", namespace="demo-from"),
                    selector={"web": "client"}, clusterIP="172.16.0.11",
                    ports=(ServicePort(port=80, targetPort=8080, name="http-web",
                                       appProtocol="http"),))
    app = replace(server.spec.containers[0],
                  ports=(ContainerPort(containerPort=8080, name="http-main"),))
    server2 = replace(server, spec=replace(server.spec,
                                           containers=(app, *server.spec.containers[1:])))
    replica = replace(server2, metadata=replace(server2.metadata, name="simple-server-x-2"))
    snap2 = replace(snap, services=(svc, web, other),
                    workloads=(Workload(server2, SERVER_IP), Workload(replica, "10.20.0.79"),
                               snap.workloads[1]))
    return snap2, server2, client


def test_rich_snapshot_shapes() -> None:
    snap, _, client = rich_snapshot()
    cfg = generate(snap, client, CLIENT_IP, "/d")
    http80 = by_name(cfg.listeners, "0.0.0.0_80")
    vhosts = http80["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"]
    assert [v["name"] for v in vhosts] == ["web.demo-to.svc.cluster.local:80",
                                           "web.demo-from.svc.cluster.local:80", "allow_any"]
    assert "web" in vhosts[1]["domains"] and "web" not in vhosts[0]["domains"]
    domains = [d for v in vhosts for d in v["domains"]]
    assert len(domains) == len(set(domains))  # Envoy rejects duplicate domains
    cla = cfg.endpoints["outbound|18080||simple-server-svc.demo-to.svc.cluster.local"]
    ips = [e["endpoint"]["address"]["socket_address"]["address"]
           for e in cla["endpoints"][0]["lb_endpoints"]]
    assert ips == ["10.20.0.77", "10.20.0.79"]


@pytest.mark.envoy
def test_real_envoy_validates_rich_config(tmp_path: Path) -> None:
    snap, server, client = rich_snapshot()
    for pod, ip in ((server, SERVER_IP), (client, CLIENT_IP)):
        path = tmp_path / f"{pod.metadata.name}.json"
        path.write_text(json.dumps(static_bootstrap(generate(snap, pod, ip, str(tmp_path)))))
        ok, said = ph.envoy_validate(path)
        assert ok, said
