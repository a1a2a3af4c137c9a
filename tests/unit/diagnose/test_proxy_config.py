import json
import re
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane.generate import generate, static_bootstrap
from remora.diagnose.proxy_config.dump import (
    camel,
    from_xds_files,
    parse_config_dump,
    snake,
)
from remora.diagnose.proxy_config.render import (
    cluster_table,
    describe_route_domains,
    endpoint_table,
    listener_table,
    render,
    route_table,
)
from remora.diagnose.proxy_config.table import tabwrite
from tests.unit.controlplane.seed import CLIENT_IP, SERVER_IP, seed

ADMIN = "type.googleapis.com/envoy.admin.v3."


def seed_block(data_dir: Path, command: str) -> str:
    """The output lines printed after `command` in the seed, up to the closing fence."""
    text = (data_dir / "seed" / "000_1398f3c2bea01311.txt").read_text()
    after = text[text.index(command) + len(command):]
    body = after[:after.index("```")].strip("\n")
    return body + "\n"


def tcp(cluster: str) -> dict[str, Any]:
    return {"name": "envoy.filters.network.tcp_proxy",
            "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.network"
                                     ".tcp_proxy.v3.TcpProxy",
                            "statPrefix": cluster, "cluster": cluster}}


def hcm(cluster: str) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                 "http_connection_manager.v3.HttpConnectionManager",
        "routeConfig": {"name": cluster, "virtualHosts": [{
            "name": "inbound|http|0", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}}}


def istio_111_virtual_inbound() -> dict[str, Any]:
    """virtualInbound of Istio 1.11 with mTLS chains, in istioctl's camelCase JSON."""
    chains: list[dict[str, Any]] = [{"name": "virtualInbound-blackhole",
                                     "filterChainMatch": {"destinationPort": 15006},
                                     "filters": [tcp("BlackHoleCluster")]}]
    for where, cluster in (({"prefixRanges": [{"addressPrefix": "0.0.0.0", "prefixLen": 0}]},
                            "InboundPassthroughClusterIpv4"),
                           ({"destinationPort": 18080}, "inbound|18080||")):
        chains += [
            {"filterChainMatch": {**where, "transportProtocol": "tls", "applicationProtocols": [
                "istio-http/1.0", "istio-http/1.1", "istio-h2"]}, "filters": [hcm(cluster)]},
            {"filterChainMatch": {**where, "transportProtocol": "raw_buffer",
                                  "applicationProtocols": ["http/1.0", "http/1.1", "h2c"]},
             "filters": [hcm(cluster)]},
            {"filterChainMatch": {**where, "transportProtocol": "tls",
                                  "applicationProtocols": ["istio-peer-exchange", "istio"]},
             "filters": [tcp(cluster)]},
            {"filterChainMatch": {**where, "transportProtocol": "raw_buffer"},
             "filters": [tcp(cluster)]},
            {"filterChainMatch": {**where, "transportProtocol": "tls"}, "filters": [tcp(cluster)]},
        ]
    return {"name": "virtualInbound", "address": {"socketAddress": {"address": "0.0.0.0",
                                                                    "portValue": 15006}},
            "filterChains": chains}


def test_listener_table_matches_the_seed_byte_for_byte(data_dir: Path) -> None:
    dump = parse_config_dump({"configs": [{"@type": ADMIN + "ListenersConfigDump",
                                           "dynamicListeners": [{"activeState": {
                                               "listener": istio_111_virtual_inbound()}}]}]})
    expected = seed_block(data_dir, "simple-server-86b499d4dd-bjrjz --port=15006\n\n")
    assert listener_table(dump, port=15006) == expected


def test_cluster_table_matches_the_seed_byte_for_byte(data_dir: Path) -> None:
    cluster = json.loads(seed_block(data_dir, '--fqdn "inbound|18080||"  -ojson\n\n'))[0]
    dump = parse_config_dump({"configs": [{"@type": ADMIN + "ClustersConfigDump",
                                           "dynamicActiveClusters": [{"cluster": cluster}]}]})
    expected = seed_block(data_dir, '--fqdn "inbound|18080||" \n')
    assert cluster_table(dump, fqdn="inbound|18080||") == expected
    # -o json gives istioctl's layout back, metadata keys untouched
    assert json.loads(render(dump, "cluster", fqdn="inbound|18080||", fmt="json")) == [cluster]


def generated_dump(tproxy: bool = False, server: bool = True) -> Any:
    snap, server_pod, client_pod = seed(tproxy)
    pod, ip = (server_pod, SERVER_IP) if server else (client_pod, CLIENT_IP)
    return from_xds_files(generate(snap, pod, ip, "/d").files)


def norm(table: str) -> list[str]:
    return [re.sub(r" +", " ", line).strip() for line in table.splitlines()]


def test_generated_server_config_reads_like_the_seed() -> None:
    table = norm(listener_table(generated_dump(), port=15006))
    assert table == [
        "ADDRESS PORT MATCH DESTINATION",
        "0.0.0.0 15006 Addr: *:15006 Non-HTTP/Non-TCP",
        "0.0.0.0 15006 Trans: raw_buffer; App: HTTP; Addr: 0.0.0.0/0 InboundPassthroughCluster",
        "0.0.0.0 15006 Trans: raw_buffer; Addr: 0.0.0.0/0 InboundPassthroughCluster",
        "0.0.0.0 15006 Trans: raw_buffer; App: HTTP; Addr: *:18080 Cluster: inbound|18080||",
        "0.0.0.0 15006 Trans: raw_buffer; Addr: *:18080 Cluster: inbound|18080||",
    ]
    assert norm(listener_table(generated_dump(), port=15001)) == [
        "ADDRESS PORT MATCH DESTINATION",
        "0.0.0.0 15001 ALL PassthroughCluster",
        "0.0.0.0 15001 Addr: *:15001 Non-HTTP/Non-TCP",
    ]
    clusters = norm(cluster_table(generated_dump()))
    assert clusters[0] == "SERVICE FQDN PORT SUBSET DIRECTION TYPE DESTINATION RULE"
    assert "18080 - inbound ORIGINAL_DST" in clusters
    assert "simple-server-svc.demo-to.svc.cluster.local 18080 - outbound EDS" in clusters
    assert "BlackHoleCluster - - - STATIC" in clusters
    assert "PassthroughCluster - - - ORIGINAL_DST" in clusters


def test_client_endpoints_and_routes() -> None:
    dump = generated_dump(server=False)
    assert norm(endpoint_table(dump)) == [
        "ENDPOINT STATUS OUTLIER CHECK CLUSTER",
        "127.0.0.1:15000 HEALTHY OK prometheus_stats",
        "10.20.0.77:18080 HEALTHY OK outbound|18080||simple-server-svc.demo-to.svc.cluster.local"]
    assert endpoint_table(dump, port=9999) == "ENDPOINT     STATUS     OUTLIER CHECK     CLUSTER\n"
    routes = norm(route_table(dump))
    assert routes[0] == "NAME VHOST NAME DOMAINS MATCH VIRTUAL SERVICE"
    assert ("simple-server-svc.demo-to.svc.cluster.local:18080 "
            "simple-server-svc.demo-to.svc.cluster.local:18080 "
            "simple-server-svc.demo-to, 172.16.234.188 /*") in routes
    assert not any("allow_any" in r for r in routes)  # passthrough routes are not listed
    listeners = norm(listener_table(dump, port=18080))
    assert listeners[-1] == ("172.16.234.188 18080 ALL "
                             "Cluster: outbound|18080||simple-server-svc.demo-to.svc.cluster.local")


def test_json_output_is_camel_case_with_map_keys_kept() -> None:
    out = json.loads(render(generated_dump(tproxy=True), "listener", port=15006, fmt="json"))
    (vi,) = out
    assert vi["name"] == "virtualInbound" and vi["transparent"] is True
    assert vi["address"] == {"socketAddress": {"address": "0.0.0.0", "portValue": 15006}}
    assert vi["listenerFilters"][1]["typedConfig"]["mark"] == 1337
    assert vi["filterChains"][0]["filterChainMatch"] == {"destinationPort": 15006}
    clusters = json.loads(render(generated_dump(), "cluster", fqdn="inbound|18080||", fmt="json"))
    assert clusters[0]["upstreamBindConfig"]["sourceAddress"]["address"] == "127.0.0.6"
    assert clusters[0]["metadata"]["filterMetadata"]["istio"]["services"][0]["host"] == \
        "simple-server-svc.demo-to.svc.cluster.local"
    whole = json.loads(render(generated_dump(), "all", fmt="json"))
    assert whole["configs"][2]["dynamicListeners"][0]["activeState"]["listener"]["name"]


def test_snake_and_camel_round_trip() -> None:
    body = {"typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3."
                                              "HttpProtocolOptions": {"useDownstreamProtocolConfig":
                                                                      {}}},
            "filterMetadata": {"istio": {"someKey": 1}}, "@type": "x"}
    s = snake(body)
    assert s == {"typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions":
            {"use_downstream_protocol_config": {}}},
        "filter_metadata": {"istio": {"someKey": 1}}, "@type": "x"}
    assert camel(s) == body


def test_envoy_layout_static_sections_and_errors() -> None:
    snap, server, _ = seed()
    boot = static_bootstrap(generate(snap, server, SERVER_IP, "/d"))
    raw = {"configs": [
        {"@type": ADMIN + "ListenersConfigDump", "static_listeners": [
            {"listener": {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **x},
             "last_updated": "2022-12-17T09:30:39Z"}
            for x in boot["static_resources"]["listeners"]]},
        {"@type": ADMIN + "ClustersConfigDump", "static_clusters": [
            {"cluster": c} for c in boot["static_resources"]["clusters"]]},
    ]}
    dump = parse_config_dump(json.dumps(raw))
    assert len(dump.listeners) == len(boot["static_resources"]["listeners"])
    # without an endpoints section, inline load assignments give the endpoints
    assert "10.20.0.77:18080" in endpoint_table(dump)
    from remora.errors import RemoraError
    with pytest.raises(RemoraError, match="not JSON"):
        parse_config_dump("{")
    with pytest.raises(RemoraError, match="configs"):
        parse_config_dump("[]")
    with pytest.raises(RemoraError, match="unknown proxy-config type"):
        render(dump, "secret")
    with pytest.raises(RemoraError, match="unknown output format"):
        render(dump, "listener", fmt="xml")


def test_filters() -> None:
    dump = generated_dump()
    assert norm(render(dump, "cluster", direction="inbound"))[1:] == [
        "18080 - inbound ORIGINAL_DST"]
    assert len(norm(render(dump, "listener", listener_type="HTTP"))) == 3  # 15021, 15090
    assert norm(render(dump, "endpoint", status="unhealthy")) == [
        "ENDPOINT STATUS OUTLIER CHECK CLUSTER"]
    assert norm(render(dump, "route", name="nope")) == [
        "NAME VHOST NAME DOMAINS MATCH VIRTUAL SERVICE"]


def test_tabwriter_like_go() -> None:
    assert tabwrite(["a\tbb\tc", "ccc\td\te"], padding=1) == "a   bb c\nccc d  e\n"
    # a line with fewer cells ends the column block
    assert tabwrite(["a\tb", "x", "long\tc"], padding=2) == "a  b\nx\nlong  c\n"


def test_route_domains_like_istioctl() -> None:
    assert describe_route_domains(["*"]) == "*"
    domains = ["a.ns.svc.cluster.local", "a.ns.svc.cluster.local:80", "a.ns.svc", "a.ns",
               "a", "10.0.0.1"]
    assert describe_route_domains(domains) == "a.ns, a + 1 more..."


def test_json_fields_in_istioctl_order(data_dir: Path) -> None:
    seed_cluster = json.loads(seed_block(data_dir, '--fqdn "inbound|18080||"  -ojson\n\n'))[0]
    ours = json.loads(render(generated_dump(), "cluster", fqdn="inbound|18080||", fmt="json"))[0]
    # same fields in the same order, the sniffed port's HTTP protocol options included:
    # the downstream's protocol upstream; the seed's Istio 1.11 also capped HTTP/2's
    # concurrent streams, which current Istio (and remora) leave at Envoy's default
    assert list(ours) == list(seed_cluster)
    options = seed_cluster["typedExtensionProtocolOptions"]
    del options[next(iter(options))]["useDownstreamProtocolConfig"]["http2ProtocolOptions"][
        "maxConcurrentStreams"]
    assert ours["typedExtensionProtocolOptions"] == options
    assert ours["circuitBreakers"] == seed_cluster["circuitBreakers"]
    assert ours["upstreamBindConfig"] == seed_cluster["upstreamBindConfig"]
    assert ours["metadata"] == seed_cluster["metadata"]
    vo = json.loads(render(generated_dump(tproxy=True), "listener", port=15001, fmt="json"))[0]
    assert list(vo) == ["name", "address", "filterChains", "useOriginalDst", "transparent",
                        "trafficDirection"]  # the seed's order
    assert list(vo["filterChains"][0]) == ["filterChainMatch", "filters", "name"]
