"""Loading Envoy v3 bootstraps: what is accepted, and every rejection names its field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from remora.errors import PrivilegeError
from remora.proxy import registry
from remora.proxy.config.bootstrap import parse_bootstrap
from remora.proxy.config.strict import ConfigError
from remora.proxy.server.runtime import Server
from remora.proxy.server.sockets import has_net_admin
from tests.unit.proxy.proxy_helpers import TCP_PROXY, static_cluster, tcp_listener

REFS = ("server-redirect.json", "server-tproxy.json", "client-redirect.json")
HCM = "envoy.filters.network.http_connection_manager"


def load(doc: dict[str, Any], path: str = "bootstrap.json") -> Server:
    server = Server(parse_bootstrap(doc, path))
    server.load()
    return server


def error_path(doc: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        load(doc)
    return err.value.path


def base() -> dict[str, Any]:
    return {"static_resources": {"listeners": [tcp_listener("l", 15001, "c")],
                                 "clusters": [static_cluster("c", 8080)]}}


def tcp_only(doc: dict[str, Any]) -> dict[str, Any]:
    """The reference config with each http_connection_manager swapped for a tcp_proxy to
    the route's cluster (what the core alone can serve)."""
    doc = copy.deepcopy(doc)
    for listener in doc["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for i, filt in enumerate(chain["filters"]):
                if filt["name"] == HCM:
                    cluster = filt["typed_config"]["route_config"]["virtual_hosts"][0][
                        "routes"][0]["route"]["cluster"]
                    chain["filters"][i] = {"name": "envoy.filters.network.tcp_proxy",
                                           "typed_config": {"@type": TCP_PROXY,
                                                            "stat_prefix": cluster,
                                                            "cluster": cluster}}
    return doc


@pytest.mark.parametrize("name", REFS)
def test_reference_configs_load(data_dir: Path, name: str) -> None:
    doc = json.loads((data_dir / "reference/envoy-sidecar" / name).read_text())
    if HCM not in registry.names("network"):
        doc = tcp_only(doc)  # the HTTP side registers the HCM; until then, the rest
    if "tproxy" in name and not has_net_admin():
        with pytest.raises(PrivilegeError, match="CAP_NET_ADMIN"):
            load(doc)
        return
    server = load(doc)
    assert set(server.listeners) >= {"virtualOutbound"}
    assert server.max_connections == 2147483647
    assert server.cluster_manager.get("BlackHoleCluster") is not None
    if name.startswith("server"):
        inbound = server.listeners["virtualInbound"].config
        assert inbound.listener_filter_names[0] == "envoy.filters.listener.original_dst"
        assert [c.name for c in inbound.filter_chains] == [
            "virtualInbound-blackhole", "0.0.0.0_18080", "virtualInbound"]
        cluster = server.cluster_manager.get("inbound|18080||")
        assert cluster is not None and cluster.config.source_address is not None
        assert cluster.config.source_address.ip == "127.0.0.6"
        assert cluster.config.thresholds["max_connections"] == 4294967295
        assert inbound.transparent == ("tproxy" in name)
    else:
        out = server.listeners["virtualOutbound"].config
        # use_original_dst adds the original_dst listener filter implicitly, as Envoy does
        assert out.listener_filter_names == ["envoy.filters.listener.original_dst"]
        assert server.listeners["0.0.0.0_18080"].config.bind_to_port is False


def test_unknown_fields_are_rejected_with_their_path() -> None:
    doc = base()
    doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["weighted_clusters"] = {}
    assert error_path(doc) == \
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.weighted_clusters"
    doc = base()
    doc["static_resources"]["clusters"][0]["outlier_detection"] = {}
    assert error_path(doc) == "static_resources.clusters[0].outlier_detection"
    doc = base()
    doc["stats_flush_interval"] = "5s"
    assert error_path(doc) == "stats_flush_interval"
    doc = base()
    doc["static_resources"]["listeners"][0]["socketOptions"] = []
    assert error_path(doc) == "static_resources.listeners[0].socket_options"
    doc = base()
    doc["static_resources"]["listeners"][0]["listener_filters"] = [
        {"name": "envoy.filters.listener.proxy_protocol", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3."
                     "ProxyProtocol"}}]
    assert error_path(doc) == "static_resources.listeners[0].listener_filters[0].typed_config"


def test_semantic_errors() -> None:
    doc = base()
    doc["static_resources"]["clusters"].append({"name": "od", "type": "ORIGINAL_DST",
                                                "lb_policy": "ROUND_ROBIN"})
    assert error_path(doc) == "static_resources.clusters[1].lb_policy"
    doc = base()
    doc["static_resources"]["clusters"].append(static_cluster("c", 1))
    assert error_path(doc) == "static_resources.clusters"
    doc = base()
    doc["static_resources"]["clusters"][0]["type"] = "STRICT_DNS"
    assert error_path(doc) == "static_resources.clusters[0].type"
    doc = base()
    doc["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] = "localhost"
    assert error_path(doc) == "static_resources.listeners[0].address.socket_address.address"


def test_original_dst_use_http_header_is_refused_not_ignored() -> None:
    # Envoy would connect where the request's x-envoy-original-dst-host says; remora only
    # to the connection's original destination, so the option is an error, by its path
    od = {"name": "od", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
          "original_dst_lb_config": {"use_http_header": True}}
    doc = base()
    doc["static_resources"]["clusters"].append(od)
    with pytest.raises(ConfigError) as err:
        load(doc)
    assert err.value.path == "static_resources.clusters[1].original_dst_lb_config.use_http_header"
    assert "not implemented" in str(err.value)
    doc = base()
    doc["static_resources"]["clusters"].append(
        {**od, "original_dst_lb_config": {"use_http_header": False,
                                          "http_header_name": "x-dst"}})
    load(doc)  # false (Envoy's default) loads, with or without a header name


def test_dynamic_resources_from_files(tmp_path: Path) -> None:
    lds = tmp_path / "lds.yaml"
    cds = tmp_path / "cds.json"
    eds = tmp_path / "eds.json"
    lds.write_text(yaml.safe_dump({"version_info": "v1", "resources": [{
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        **tcp_listener("dyn", 15099, "e")}]}))
    cds.write_text(json.dumps({"version_info": "c1", "resources": [{
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "e",
        "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {
            "service_name": "svc", "eds_config": {"path_config_source": {"path": str(eds)},
                                                  "resource_api_version": "V3"}}}]}))
    eds.write_text(json.dumps({"version_info": "e1", "resources": [{
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": "svc", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1",
                                                         "port_value": 80}}}},
            {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2",
                                                         "port_value": 80}}},
             "health_status": "UNHEALTHY"}]}]}]}))
    server = load({"dynamic_resources": {
        "lds_config": {"path_config_source": {"path": str(lds)}, "resource_api_version": "V3"},
        "cds_config": {"path": str(cds)}}})
    assert list(server.listeners) == ["dyn"]
    assert server.versions == {"lds": "v1", "cds": "c1"}
    cluster = server.cluster_manager.get("e")
    assert cluster is not None
    assert [(h.key, h.healthy) for h in cluster.hosts] == [("10.0.0.1:80", True),
                                                           ("10.0.0.2:80", False)]
    assert server.stats.counters["listener_manager.lds.update_success"] == 1


def test_bad_dynamic_file_at_start_is_counted_not_fatal(tmp_path: Path) -> None:
    lds = tmp_path / "lds.json"
    lds.write_text(json.dumps({"resources": [{
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "x",
        "bogus": 1}]}))
    server = load({"dynamic_resources": {"lds_config": {"path": str(lds)}}})
    assert server.listeners == {}
    assert server.stats.counters["listener_manager.lds.update_rejected"] == 1


def test_http_protocol_options_parsed_strictly() -> None:
    key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    opts = {"@type": "type.googleapis.com/" + key,
            "common_http_protocol_options": {"idle_timeout": "3600s",
                                             "max_requests_per_connection": 100},
            "use_downstream_protocol_config": {"http_protocol_options": {},
                                               "http2_protocol_options": {}}}
    doc = base()
    doc["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = {key: opts}
    cluster = load(doc).cluster_manager.get("c")
    assert cluster is not None
    hpo = cluster.config.http_protocol_options
    assert (hpo.idle_timeout, hpo.max_requests_per_connection, hpo.protocol) == (
        3600.0, 100, "downstream")
    opts["common_http_protocol_options"]["max_headers_count"] = 5  # type: ignore[index]
    assert error_path(doc) == ("static_resources.clusters[0].typed_extension_protocol_options."
                               f"{key}.common_http_protocol_options.max_headers_count")
