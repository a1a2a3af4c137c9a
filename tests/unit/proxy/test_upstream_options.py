"""Pure tests of the upstream options the parity test (test_upstream_options_envoy_parity)
holds to Envoy: auto_sni / auto_san_validation's host, Envoy's dnsNameMatch, the EDF
schedule of weighted round robin, tcp_keepalive's socket options."""

from __future__ import annotations

import socket
import ssl
from collections import Counter

from remora.proxy.config.address import parse_socket_address
from remora.proxy.config.strict import Fields
from remora.proxy.stats import StatsStore
from remora.proxy.transport.tls import failure_reason
from remora.proxy.upstream.auto_host import dns_name_match, parse_authority, tls_override
from remora.proxy.upstream.cluster import ClusterImpl
from remora.proxy.upstream.config import Host, HttpProtocolOptions, parse_cluster
from remora.proxy.upstream.connect import set_keepalive
from remora.proxy.upstream.edf import EdfScheduler

OPTS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def test_parse_authority_drops_port_and_brackets() -> None:
    assert parse_authority("a.example:8443") == ("a.example", False)
    assert parse_authority("a.example") == ("a.example", False)
    assert parse_authority("127.0.0.1:80") == ("127.0.0.1", True)
    assert parse_authority("[::1]:80") == ("::1", True)
    assert parse_authority("::1") == ("::1", True)


def test_tls_override_as_envoys_router() -> None:
    both = HttpProtocolOptions(auto_sni=True, auto_san_validation=True,
                               override_auto_sni_header="x-sni")
    ov = tls_override(both, "A.example:1", {})
    assert ov is not None and (ov.sni, ov.sans, ov.key) == ("A.example", ("A.example",),
                                                            "\0a.example")
    ip = tls_override(both, "10.0.0.1:80", {})
    assert ip is not None and (ip.sni, ip.sans) == (None, ("10.0.0.1",))  # no SNI for an IP
    other = tls_override(both, "a.example", {"x-sni": "b.example"})
    assert other is not None and other.sni == "b.example"
    empty = tls_override(both, "a.example", {"x-sni": ""})
    assert empty is not None and empty.sni == "a.example"
    sni_only = tls_override(HttpProtocolOptions(auto_sni=True), "a.example", {})
    assert sni_only is not None and sni_only.sans == ()
    assert tls_override(HttpProtocolOptions(), "a.example", {}) is None


def test_dns_name_match() -> None:
    assert dns_name_match("Backend.Local", "backend.local")
    assert dns_name_match("a.example.com", "*.example.com")
    assert not dns_name_match("a.b.example.com", "*.example.com")
    assert not dns_name_match("example.com", "*.example.com")
    assert not dns_name_match("evil.example", "backend.local")


def test_cluster_parses_upstream_http_protocol_options() -> None:
    cfg = parse_cluster({"name": "c", "typed_extension_protocol_options": {OPTS: {
        "@type": "type.googleapis.com/" + OPTS, "upstream_http_protocol_options": {
            "auto_sni": True, "auto_san_validation": True,
            "override_auto_sni_header": "X-SNI"}}},
        "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 17}}}, "c")
    opts = cfg.http_protocol_options
    assert (opts.auto_sni, opts.auto_san_validation, opts.override_auto_sni_header) == (
        True, True, "x-sni")
    assert cfg.keepalive == (17, None, None)


def test_edf_picks_by_weight_in_envoys_order() -> None:
    sched: EdfScheduler[str] = EdfScheduler.create_with_picks(
        ["a", "b"], {"a": 9.0, "b": 1.0}.__getitem__, 0)
    picks = [sched.pick_and_add({"a": 9.0, "b": 1.0}.__getitem__) for _ in range(20)]
    # deadlines a: 1/9, 2/9, ... (summed in doubles, as Envoy's current_time_ + 1/weight:
    # the ninth is 1.0000000000000002), b: 1.0: a eight times, b, then a
    assert picks[:10] == ["a"] * 8 + ["b", "a"]
    assert Counter(picks) == {"a": 18, "b": 2}


def _host(port: int, weight: int) -> Host:
    return Host(parse_socket_address(Fields({"address": "127.0.0.1", "port_value": port}, "a")),
                weight)


def test_cluster_weighted_round_robin() -> None:
    cfg = parse_cluster({"name": "w"}, "w")
    cfg.hosts = [_host(1, 9), _host(2, 1)]
    cluster = ClusterImpl(cfg, StatsStore())
    picks = Counter(cluster._pick(cluster.hosts).address.port for _ in range(100))
    assert picks == {1: 90, 2: 10}


def test_cluster_equal_weights_keep_the_rotation() -> None:
    cfg = parse_cluster({"name": "e"}, "e")
    cfg.hosts = [_host(1, 2), _host(2, 2)]
    cluster = ClusterImpl(cfg, StatsStore())
    assert not cluster._weighted
    assert [cluster._pick(cluster.hosts).address.port for _ in range(4)] == [2, 1, 2, 1]


def test_set_keepalive_sets_envoys_options() -> None:
    with socket.socket() as s:
        set_keepalive(s, (17, 3, 2))
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 17
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 2


def test_verify_failure_reason_in_boringssl_words() -> None:
    err = ssl.SSLCertVerificationError()
    err.verify_message = "self-signed certificate"
    reason, stat = failure_reason(err)
    assert "at depth 0: self signed certificate:TLS_error_end" in reason
    assert stat == "fail_verify_error"
