"""Istio's protocol selection (Istio's own test tables) and the HTTP/2 config it leads to:
a `grpc` port gets an HTTP/2 upstream on both sides, an inbound HCM with
http2_protocol_options, ALPN istio-h2 over mTLS; Envoy validates the files and
`remora proxy --mode validate` refuses them naming the HTTP/2 field."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane import envoy_common as e
from remora.controlplane import protocol as p
from remora.controlplane.ca import CertificateAuthority
from remora.controlplane.files import write_config
from remora.controlplane.generate import SidecarConfig, generate, static_bootstrap
from remora.controlplane.model import Snapshot
from remora.proxy.config.bootstrap import parse_bootstrap
from remora.proxy.config.strict import ConfigError
from remora.proxy.server.runtime import Server
from remora.resources.objects import Pod, ServicePort
from tests import proxyharness as ph
from tests.datafiles import data_path
from tests.unit.controlplane.seed import CLIENT_IP, SERVER_IP, seed

CASES = json.loads(data_path("protocol", "istio_cases.json").read_text())
H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
FQDN = "simple-server-svc.demo-to.svc.cluster.local"


@pytest.mark.parametrize("case", CASES["parse"], ids=lambda c: c["name"] or "[empty]")
def test_parse_like_istio(case: dict[str, str]) -> None:
    assert p.parse(case["name"]) == case["expected"]


@pytest.mark.parametrize("case", CASES["convert"], ids=lambda c: c["name"])
def test_convert_protocol_like_istio(case: dict[str, Any]) -> None:
    assert p.convert_protocol(case["port"], case["portName"], case["proto"] or "TCP",
                              case["appProto"]) == case["expected"]


@pytest.mark.parametrize(("port", "name", "app", "proto", "expected"), [
    (18080, "", "", "TCP", p.UNSUPPORTED),        # the seed's unnamed port: sniffed
    (80, "http", "", "TCP", p.HTTP),
    (80, "http-web", "", "TCP", p.HTTP),
    (80, "HTTP2-api", "", "TCP", p.HTTP2),
    (80, "grpc", "", "TCP", p.GRPC),
    (80, "grpc-api", "", "TCP", p.GRPC),
    (80, "GRPC-Web-x", "", "TCP", p.GRPC_WEB),
    (80, "grpc-webx", "", "TCP", p.GRPC_WEB),      # the prefix test has no hyphen after it
    (80, "grpcweb", "", "TCP", p.UNSUPPORTED),
    (80, "https-x", "", "TCP", p.HTTPS),
    (80, "tls", "", "TCP", p.TLS),
    (80, "tcp-db", "", "TCP", p.TCP),
    (80, "mongo", "", "TCP", p.MONGO),
    (80, "redis-cache", "", "TCP", p.REDIS),
    (80, "mysql", "", "TCP", p.MYSQL),
    (80, "h2c", "", "TCP", p.UNSUPPORTED),          # not a name Istio parses
    (80, "thrift", "", "TCP", p.UNSUPPORTED),
    (80, "web", "", "TCP", p.UNSUPPORTED),
    (25, "web", "", "TCP", p.TCP),                  # well-known ports: not sniffed
    (53, "", "", "TCP", p.TCP),
    (27017, "", "", "TCP", p.TCP),
    (80, "tcp", "http", "TCP", p.HTTP),             # appProtocol wins over the name ...
    (80, "http", "foo", "TCP", p.UNSUPPORTED),      # ... even when Istio does not know it
    (80, "grpc", "kubernetes.io/h2c", "TCP", p.HTTP2),
    (80, "", "kubernetes.io/ws", "TCP", p.HTTP),
    (80, "", "kubernetes.io/wss", "TCP", p.HTTPS),
    (80, "", "Kubernetes.io/h2c", "TCP", p.UNSUPPORTED),  # exact case only
    (80, "", "grpc", "TCP", p.GRPC),
    (53, "dns", "", "UDP", p.UDP),
    (80, "http", "", "UDP", p.UDP),
])
def test_port_protocol(port: int, name: str, app: str, proto: str, expected: str) -> None:
    sp = ServicePort(port=port, targetPort=port, name=name, protocol=proto, appProtocol=app)
    assert p.port_protocol(sp) == expected


def test_classes_like_istio() -> None:
    assert [x for x in (p.GRPC, p.GRPC_WEB, p.HTTP, p.HTTP_PROXY, p.HTTP2) if p.is_http(x)] \
        == [p.GRPC, p.GRPC_WEB, p.HTTP, p.HTTP_PROXY, p.HTTP2]
    assert {x for x in vars(p).values() if isinstance(x, str) and p.is_http2(x)} == {
        p.HTTP2, p.GRPC, p.GRPC_WEB}
    assert not p.is_tcp(p.UDP) and p.is_tcp(p.MONGO) and p.is_sniffed(p.UNSUPPORTED)


def grpc_seed(name: str = "grpc", app: str = "") -> tuple[Snapshot, Pod, Pod]:
    """The seed with its service port named NAME (appProtocol APP)."""
    snap, server, client = seed()
    svc = snap.services[0]
    port = replace(svc.ports[0], name=name, appProtocol=app)
    return replace(snap, services=(replace(svc, ports=(port,)),)), server, client


def cluster(cfg: SidecarConfig, name: str) -> dict[str, Any]:
    return next(c for c in cfg.clusters if c["name"] == name)


def listener(cfg: SidecarConfig, name: str) -> dict[str, Any]:
    return next(x for x in cfg.listeners if x["name"] == name)


def inbound_chains(cfg: SidecarConfig, port: int) -> list[dict[str, Any]]:
    return [c for c in listener(cfg, "virtualInbound")["filter_chains"]
            if c.get("filter_chain_match", {}).get("destination_port") == port]


def hcm(chain: dict[str, Any]) -> dict[str, Any]:
    typed: dict[str, Any] = chain["filters"][-1]["typed_config"]
    return typed


@pytest.mark.parametrize(("name", "app"), [("grpc", ""), ("http2-web", ""), ("grpc-web", ""),
                                           ("", "kubernetes.io/h2c"), ("tcp", "grpc")])
def test_h2_port_gets_http2_on_both_sides(name: str, app: str) -> None:
    snap, server, client = grpc_seed(name, app)
    out = generate(snap, client, CLIENT_IP, "/c", certs_dir="/certs")
    # outbound: the shared HTTP listener 0.0.0.0_18080 (no sniffing TCP chain for the
    # service), the cluster explicitly HTTP/2, ALPN istio-h2 first over mTLS
    names = [x["name"] for x in out.listeners]
    assert "0.0.0.0_18080" in names and "172.16.234.188_18080" not in names
    oc = cluster(out, f"outbound|18080||{FQDN}")
    assert oc["typed_extension_protocol_options"] == H2
    tls = oc["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["alpn_protocols"] == ["istio-h2", "istio", "h2"]
    assert list(oc).index("typed_extension_protocol_options") == \
        list(oc).index("circuit_breakers") + 1  # cluster.proto order, as istioctl prints
    # inbound: the served port's cluster is HTTP/2 too, its HCM has http2_protocol_options
    # and codec AUTO (unset); chains accept istio-h2 over mTLS and plain text (h2c)
    inc = generate(snap, server, SERVER_IP, "/s", certs_dir="/certs")
    assert cluster(inc, "inbound|18080||")["typed_extension_protocol_options"] == H2
    chains = inbound_chains(inc, 18080)
    matches = [(c["filter_chain_match"].get("transport_protocol"),
                c["filter_chain_match"].get("application_protocols")) for c in chains]
    assert matches == [("tls", ["istio-http/1.0", "istio-http/1.1", "istio-h2"]),
                       ("raw_buffer", None)]
    for c in chains:
        assert hcm(c)["http2_protocol_options"] == {}
        assert "codec_type" not in hcm(c)
    assert chains[0]["transport_socket"]["typed_config"]["common_tls_context"][
        "alpn_protocols"] == ["h2", "http/1.1"]
    # a grpc-web port also gets Envoy's grpc_web filter, first (listener_builder.go)
    filters = [f["name"] for f in hcm(chains[0])["http_filters"]]
    web = ["envoy.filters.http.grpc_web"] if name == "grpc-web" else []
    assert filters == [*web, "envoy.filters.http.fault", "envoy.filters.http.cors",
                       "envoy.filters.http.router"]


DOWNSTREAM = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "use_downstream_protocol_config": {"http_protocol_options": {},
                                       "http2_protocol_options": {}}}}


def test_http1_tcp_and_sniffed_ports_get_no_explicit_http2() -> None:
    """http and tcp ports: clusters without protocol options (HTTP/1.1); a sniffed port:
    clusters that follow the downstream (Istio's setUseDownstreamProtocol), so an h2c
    client of an unnamed port goes on as HTTP/2. No port of these gets explicit HTTP/2,
    http2_protocol_options on an HCM, or the istio-h2 ALPN first."""
    for name, want in (("http", None), ("", DOWNSTREAM), ("tcp", None)):
        snap, server, client = grpc_seed(name)
        out = generate(snap, client, CLIENT_IP, "/c", certs_dir="/certs")
        inc = generate(snap, server, SERVER_IP, "/s", certs_dir="/certs")
        assert cluster(out, f"outbound|18080||{FQDN}").get(
            "typed_extension_protocol_options") == want
        assert cluster(inc, "inbound|18080||").get("typed_extension_protocol_options") == want
        for cfg in (out, inc):
            text = json.dumps(cfg.files)
            assert "explicit_http_config" not in text and "istio-h2\", \"istio\"" not in text
            for x in cfg.listeners:
                for chain in x.get("filter_chains", []):
                    assert "http2_protocol_options" not in json.dumps(chain["filters"])
            # Istio's passthroughHttpProtocolOptions, whatever the ports
            for c in (e.PASSTHROUGH, e.INBOUND_PASSTHROUGH):
                assert cluster(cfg, c)["typed_extension_protocol_options"] == DOWNSTREAM
    # the seed itself: its sniffed port's inbound cluster has the block the seed's own
    # `istioctl proxy-config cluster` shows (Istio 1.11.3, whose HTTP/2 options also held
    # max_concurrent_streams: 1073741824); over mTLS its cluster offers the HTTP chain's
    # istio-http/1.1 but no plain http/1.1 or h2, so the server negotiates no codec and
    # tells HTTP/1.1 from h2c by the preface (a named http port keeps http/1.1)
    snap, server, client = seed()
    oc = cluster(generate(snap, client, CLIENT_IP, "/c", certs_dir="/certs"),
                 f"outbound|18080||{FQDN}")
    assert oc["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"] \
        == ["istio-http/1.1", "istio"]
    assert oc["typed_extension_protocol_options"] == DOWNSTREAM
    snap, server, client = grpc_seed("http")
    oc = cluster(generate(snap, client, CLIENT_IP, "/c", certs_dir="/certs"),
                 f"outbound|18080||{FQDN}")
    assert oc["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"] \
        == ["istio-http/1.1", "istio", "http/1.1"]


def test_udp_port_gets_nothing() -> None:
    snap, _, client = grpc_seed("dns")
    svc = snap.services[0]
    snap = replace(snap, services=(replace(svc, ports=(replace(svc.ports[0],
                                                                protocol="UDP"),)),))
    cfg = generate(snap, client, CLIENT_IP, "/c")
    assert not [c for c in cfg.clusters if c["name"].startswith("outbound|")]
    assert [x["name"] for x in cfg.listeners] == ["virtualOutbound", "virtualInbound"]


@pytest.mark.envoy
@pytest.mark.parametrize("mtls", [True, False])
def test_real_envoy_validates_h2_config(tmp_path: Path, mtls: bool) -> None:
    snap, server, client = grpc_seed("grpc-web")  # HTTP/2 and the grpc_web filter
    for pod, ip in ((server, SERVER_IP), (client, CLIENT_IP)):
        d = tmp_path / pod.metadata.name
        certs = tmp_path / "certs" / pod.metadata.name
        if mtls:
            CertificateAuthority(tmp_path / "ca").ensure_workload(certs, pod.metadata.namespace)
        cfg = generate(snap, pod, ip, str(d), certs_dir=str(certs) if mtls else None)
        write_config(cfg)
        static = tmp_path / f"{pod.metadata.name}-static.json"
        static.write_text(json.dumps(static_bootstrap(cfg)))
        ph.assert_envoy_accepts(static, d / "bootstrap.json")


def remora_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "remora", "proxy", "-c", str(path),
                           "--mode", "validate"], capture_output=True, text=True, timeout=60)


def test_remora_proxy_validates_the_grpc_seed_configs(tmp_path: Path) -> None:
    """remora proxy serves HTTP/2 both ways (issue 11): the gRPC seed's server config
    (inbound HCM with http2_protocol_options, an explicitly HTTP/2 inbound cluster) and the
    client's (an outbound HTTP/2 cluster) validate, as the seed's HTTP/1.1 config does."""
    snap, server, client = grpc_seed("grpc")
    for pod, ip in ((server, SERVER_IP), (client, CLIENT_IP)):
        static = tmp_path / f"{pod.metadata.name}.json"
        static.write_text(json.dumps(static_bootstrap(generate(snap, pod, ip, str(tmp_path)))))
        out = remora_validate(static)
        assert out.returncode == 0, out.stdout + out.stderr
    snap, server, _ = seed()
    static = tmp_path / "seed.json"
    static.write_text(json.dumps(static_bootstrap(generate(snap, server, SERVER_IP,
                                                           str(tmp_path)))))
    assert remora_validate(static).returncode == 0


@pytest.mark.parametrize("value", [
    {"http2_protocol_options": {"max_concurrent_streams": 100}},
    {"codec_type": "HTTP2"},
    {"http2ProtocolOptions": {}},
])
def test_hcm_h2_fields_are_read_since_http2_downstream(tmp_path: Path,
                                                       value: dict[str, Any]) -> None:
    """The inbound HCM's HTTP/2 fields are implemented (proxy/http2/); a subfield remora
    does not implement is still refused by its path."""
    snap, server, _ = seed()
    boot = static_bootstrap(generate(snap, server, SERVER_IP, str(tmp_path)))
    vi = next(x for x in boot["static_resources"]["listeners"] if x["name"] == "virtualInbound")
    chain = next(c for c in vi["filter_chains"]
                 if c["filters"][-1]["name"] == "envoy.filters.network.http_connection_manager")
    chain["filters"][-1]["typed_config"].update(value)
    Server(parse_bootstrap(boot, "b.json")).load()
    chain["filters"][-1]["typed_config"]["http2_protocol_options"] = {"allow_connect": True}
    with pytest.raises(ConfigError) as err:
        Server(parse_bootstrap(boot, "b.json")).load()
    assert err.value.path.endswith("typed_config.http2_protocol_options.allow_connect")
