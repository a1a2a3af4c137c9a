"""Istio's IPv6 and dual-stack sidecar config for the seed's pods.

What istiod generates for a proxy by its IP mode (pilot/pkg/networking/core
listener_address.go, listener_builder.go buildVirtualOutboundListener, listener_inbound.go
buildInboundListener, cluster_builder.go buildInboundPassthroughCluster): the first
wildcard is the listener address and the other family's is an additional address; the
inbound binds are 127.0.0.6 and/or ::6 (``extra_source_addresses`` in dual stack). The
IPv4 output is unchanged (the other controlplane tests hold it byte for byte); here it
is also checked that naming the IPv4 address explicitly changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane.adapters import snapshot_from_dicts
from remora.controlplane.files import write_config
from remora.controlplane.generate import SidecarConfig, generate, static_bootstrap
from remora.controlplane.model import endpoints
from remora.proxy.config.bootstrap import parse_bootstrap
from remora.proxy.server.runtime import Server
from tests import proxyharness as ph
from tests.unit.controlplane.seed import (
    CLIENT_IP,
    CLIENT_IP6,
    CLUSTER_IP,
    CLUSTER_IP6,
    FQDN,
    SERVER_IP,
    SERVER_IP6,
    dual,
    seed,
    v6_only,
)

OUTBOUND = f"outbound|18080||{FQDN}"

def listener(cfg: SidecarConfig, name: str) -> dict[str, Any]:
    return next(x for x in cfg.listeners if x["name"] == name)


def cluster(cfg: SidecarConfig, name: str) -> dict[str, Any]:
    return next(x for x in cfg.clusters if x["name"] == name)


def sa(ip: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": ip, "port_value": port}}


def test_ipv4_output_unchanged_when_the_address_is_named() -> None:
    snap, server, _ = seed()
    assert generate(snap, server, SERVER_IP, "/d").files == \
        generate(snap, server, SERVER_IP, "/d", ips=(SERVER_IP,)).files


@pytest.mark.parametrize("tproxy", [False, True])
def test_dual_stack_server(tproxy: bool) -> None:
    snap, server, _ = dual(tproxy)
    cfg = generate(snap, server, SERVER_IP, "/d")
    for name, port in (("virtualInbound", 15006), ("virtualOutbound", 15001)):
        lst = listener(cfg, name)
        assert lst["address"] == sa("0.0.0.0", port)
        assert lst["additional_addresses"] == [{"address": sa("::", port)}]
        assert list(lst)[-1] == "additional_addresses"  # proto field order (33 is last)
        assert lst.get("transparent", False) is tproxy
    inbound = listener(cfg, "virtualInbound")
    passthrough = [c for c in inbound["filter_chains"]
                   if c["name"] in ("virtualInbound", "virtualInbound-catchall-http")]
    assert passthrough
    for chain in passthrough:
        assert chain["filter_chain_match"]["prefix_ranges"] == [
            {"address_prefix": "0.0.0.0", "prefix_len": 0},
            {"address_prefix": "::", "prefix_len": 0}]
    assert [c["name"] for c in inbound["filter_chains"]].count("0.0.0.0_18080") >= 1
    bind = {"source_address": {"address": "127.0.0.6", "port_value": 0},
            "extra_source_addresses": [{"address": {"address": "::6", "port_value": 0}}]}
    assert cluster(cfg, "InboundPassthroughCluster")["upstream_bind_config"] == bind
    assert cluster(cfg, "inbound|18080||")["upstream_bind_config"] == bind
    assert "upstream_bind_config" not in cluster(cfg, "PassthroughCluster")


def test_dual_stack_client_outbound() -> None:
    snap, _, client = dual()
    cfg = generate(snap, client, CLIENT_IP, "/d")
    svc_listener = listener(cfg, f"{CLUSTER_IP}_18080")
    assert svc_listener["address"] == sa(CLUSTER_IP, 18080)
    assert svc_listener["additional_addresses"] == [{"address": sa(CLUSTER_IP6, 18080)}]
    assert svc_listener["bind_to_port"] is False
    vhost = svc_listener["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]
    assert f"[{CLUSTER_IP6}]" in vhost["domains"]
    assert f"[{CLUSTER_IP6}]:18080" in vhost["domains"]
    assert CLUSTER_IP in vhost["domains"]
    # a dual-stack service's dual-stack pod is one endpoint at its status.podIPs, the
    # primary as `address`, the other as `additional_addresses` (istiod with
    # ISTIO_DUAL_STACK: endpointslice.go overrideAddresses, buildEnvoyLbEndpoint)
    cla = cfg.endpoints[OUTBOUND]
    assert [e["endpoint"] for e in cla["endpoints"][0]["lb_endpoints"]] == [
        {"address": sa(SERVER_IP, 18080),
         "additional_addresses": [{"address": sa(SERVER_IP6, 18080)}]}]


def test_ipv6_primary_dual_stack_service_endpoints_follow_the_pod_ips() -> None:
    """ipFamilies [IPv6, IPv4] in an IPv4-first cluster: istiod skips the IPv6
    EndpointSlice and takes the pod's IPs in status.podIPs order, so `address` is still
    the pod's IPv4 one; only the listener's address follows the service's order."""
    snap, _, client = dual(v6_primary=True)
    svc = snap.services[0]
    [ep] = endpoints(snap, svc, svc.ports[0])
    assert (ep.ip, ep.additional) == (SERVER_IP, (SERVER_IP6,))
    cfg = generate(snap, client, CLIENT_IP, "/d")
    lst = listener(cfg, f"{CLUSTER_IP6}_18080")
    assert lst["additional_addresses"] == [{"address": sa(CLUSTER_IP, 18080)}]


def test_single_stack_services_in_a_dual_stack_cluster_keep_their_family() -> None:
    """One ClusterIP: the EndpointSlice of that family alone, no additional address."""
    snap, _, _ = dual()
    svc = snap.services[0]
    for vip, want in ((CLUSTER_IP, SERVER_IP), (CLUSTER_IP6, SERVER_IP6)):
        one = replace(snap, services=(replace(svc, clusterIP=vip),), cluster_ips={FQDN: (vip,)})
        [ep] = endpoints(one, one.services[0], svc.ports[0])
        assert (ep.ip, ep.additional) == (want, ())


def test_ipv6_only_pod() -> None:
    snap, server, client = v6_only()
    cfg = generate(snap, server, SERVER_IP6, "/d")
    for name, port in (("virtualInbound", 15006), ("virtualOutbound", 15001)):
        lst = listener(cfg, name)
        assert lst["address"] == sa("::", port)
        assert "additional_addresses" not in lst
    chains = listener(cfg, "virtualInbound")["filter_chains"]
    assert {"address_prefix": "::", "prefix_len": 0} in chains[1]["filter_chain_match"][
        "prefix_ranges"]
    assert "::_18080" in [c["name"] for c in chains]  # getListenerName(bind, port)
    bind = {"source_address": {"address": "::6", "port_value": 0}}
    assert cluster(cfg, "InboundPassthroughCluster")["upstream_bind_config"] == bind
    assert cfg.bootstrap["node"]["id"].startswith(f"sidecar~{SERVER_IP6}~")
    ccfg = generate(snap, client, CLIENT_IP6, "/d")
    assert listener(ccfg, f"{CLUSTER_IP6}_18080")["address"] == sa(CLUSTER_IP6, 18080)
    cla = ccfg.endpoints[OUTBOUND]
    assert cla["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == \
        sa(SERVER_IP6, 18080)


def test_adapter_reads_pod_ips_and_cluster_ips() -> None:
    snap, server, client = dual()
    svc = snap.services[0].to_dict()
    svc["spec"]["clusterIPs"] = [CLUSTER_IP, CLUSTER_IP6]
    pods = []
    for pod, ips in ((server, (SERVER_IP, SERVER_IP6)), (client, (CLIENT_IP, CLIENT_IP6))):
        body = pod.to_dict()
        body["status"] = {"podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips],
                          "ready": True}
        pods.append(body)
    got = snapshot_from_dicts([n.to_dict() for n in snap.namespaces], [svc], pods)
    assert got.cluster_ips == {FQDN: (CLUSTER_IP, CLUSTER_IP6)}
    assert got.workloads[0].addresses == (SERVER_IP, SERVER_IP6)
    assert generate(got, server, SERVER_IP, "/d").files == \
        generate(snap, server, SERVER_IP, "/d").files


@pytest.mark.parametrize("family", ["dual", "ipv6"])
@pytest.mark.parametrize("tproxy", [False, True])
def test_remora_proxy_loads_dual_stack_config(tmp_path: Path, family: str,
                                              tproxy: bool) -> None:
    snap, server, client = dual(tproxy) if family == "dual" else v6_only(tproxy)
    for pod, ip in ((server, SERVER_IP if family == "dual" else SERVER_IP6),
                    (client, CLIENT_IP if family == "dual" else CLIENT_IP6)):
        d = tmp_path / pod.metadata.name
        cfg = generate(snap, pod, ip, str(d))
        write_config(cfg)
        path = d / "bootstrap.json"
        proxy = Server(parse_bootstrap(json.loads(path.read_text()), str(path)))
        proxy.load()
        inbound = proxy.listeners["virtualInbound"].config
        assert [str(a) for a in inbound.addresses] == (
            ["0.0.0.0:15006", "[::]:15006"] if family == "dual" else ["[::]:15006"])
        passthrough = proxy.cluster_manager.get("InboundPassthroughCluster")
        assert passthrough is not None
        binds = [passthrough.config.source_address,
                 *passthrough.config.extra_source_addresses]
        assert [a.ip for a in binds if a is not None] == (
            ["127.0.0.6", "::6"] if family == "dual" else ["::6"])


@pytest.mark.envoy
@pytest.mark.parametrize("family", ["dual", "ipv6"])
@pytest.mark.parametrize("tproxy", [False, True])
def test_real_envoy_validates_dual_stack_config(tmp_path: Path, family: str,
                                                tproxy: bool) -> None:
    snap, server, client = dual(tproxy) if family == "dual" else v6_only(tproxy)
    for pod, ip in ((server, SERVER_IP if family == "dual" else SERVER_IP6),
                    (client, CLIENT_IP if family == "dual" else CLIENT_IP6)):
        d = tmp_path / pod.metadata.name
        cfg = generate(snap, pod, ip, str(d))
        write_config(cfg)
        static = tmp_path / f"{pod.metadata.name}-static.json"
        static.write_text(json.dumps(static_bootstrap(cfg)))
        ph.assert_envoy_accepts(static, d / "bootstrap.json")
