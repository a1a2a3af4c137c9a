"""Which Istio version the evidence is from, and what follows for the app's source."""

from __future__ import annotations

import json
from pathlib import Path

from remora.diagnose.envoy.access_log import parse_text_line
from remora.diagnose.evidence import files as ef
from remora.diagnose.pasted import istio_init, istio_version, rule_lines, unframe
from remora.diagnose.source_ip.evidence import Evidence
from remora.diagnose.source_ip.explain import explain_source_ip
from remora.diagnose.source_ip.istio_version import detect
from tests.datafiles import data_path

NAT_REDIRECT = """*nat
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
COMMIT
"""


def _bootstrap(version: str, mode: str = "REDIRECT") -> dict[str, object]:
    return {"configs": [{
        "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
        "bootstrap": {"node": {"id": "sidecar~10.1.1.1~srv-1.ns~ns.svc.cluster.local",
                               "metadata": {"ISTIO_VERSION": version,
                                            "INTERCEPTION_MODE": mode}}}}]}


def _ev(tmp_path: Path, files: dict[str, str]) -> Evidence:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    ev = ef.load_dump_dir(tmp_path)
    ev.target.port = 8080
    return ev


def test_node_metadata_version_decides_127_0_0_1_before_1_10(tmp_path: Path) -> None:
    ev = _ev(tmp_path, {"nat.rules": NAT_REDIRECT,
                        "config_dump.json": json.dumps(_bootstrap("1.9.5"))})
    info = detect(ev)
    assert info.version == (1, 9) and "ISTIO_VERSION 1.9.5" in info.why
    v = explain_source_ip(ev).verdict
    assert (v.app_sees, v.kind) == ("127.0.0.1", "inferred")
    assert "1.9" in v.istio_version


def test_same_rules_on_1_10_give_127_0_0_6(tmp_path: Path) -> None:
    ev = _ev(tmp_path, {"nat.rules": NAT_REDIRECT,
                        "config_dump.json": json.dumps(_bootstrap("1.10.0"))})
    v = explain_source_ip(ev).verdict
    assert (v.app_sees, v.kind) == ("127.0.0.6", "inferred")


def test_option_wins_over_evidence(tmp_path: Path) -> None:
    ev = _ev(tmp_path, {"nat.rules": NAT_REDIRECT,
                        "config_dump.json": json.dumps(_bootstrap("1.9.5"))})
    ev.istio_version = "1.12"
    assert detect(ev).version == (1, 12)
    assert explain_source_ip(ev).verdict.app_sees == "127.0.0.6"


def test_tproxy_interception_mode_from_node_metadata(tmp_path: Path) -> None:
    """No rules: the sidecar's INTERCEPTION_MODE says TPROXY; 1.6 had no original_src."""
    old = explain_source_ip(_ev(tmp_path, {"config_dump.json": json.dumps(
        _bootstrap("1.6.14", "TPROXY"))})).verdict
    assert (old.app_sees, old.kind) == ("127.0.0.1", "inferred")
    assert "istio/istio#23275" in old.basis


def test_v2_type_urls_bound_the_version(tmp_path: Path) -> None:
    listener = {"name": "virtualInbound", "address": {"socket_address": {
        "address": "0.0.0.0", "port_value": 15006}}, "filter_chains": [{"filters": [{
            "name": "envoy.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.config.filter.network.tcp_proxy.v2.TcpProxy",
                "cluster": "InboundPassthroughClusterIpv4"}}]}]}
    ev = _ev(tmp_path, {"listeners.json": json.dumps([listener])})
    info = detect(ev)
    assert info.version is None and info.older_than((1, 10)) is True
    assert "v2 types" in info.why


def test_version_text_forms() -> None:
    # istioctl's own (client) version says nothing about the sidecars: istiod's is the hint
    assert istio_version("client version: 1.21.1\nistiod version: 1.19.3") == (1, 19)
    assert istio_version("client version: 1.21.1\n") is None
    assert istio_version("data plane version: 1.9.0 (9 proxies)\nclient version: 1.21") == (1, 9)
    assert istio_version('version.BuildInfo{Version:"1.1.1", GitRevision:"2b13"}') == (1, 1)
    assert istio_version("Image: docker.io/istio/proxyv2:1.6.0") == (1, 6)
    assert istio_version("nothing here") is None


def test_istio_init_log_variables_and_rules() -> None:
    text = data_path("explain", "istio-28106-init-1.7-no-inbound", "server",
                     "istio-init.log").read_text()
    init = istio_init(text)
    assert init.variables["INBOUND_INTERCEPTION_MODE"] == "REDIRECT"
    assert init.variables["INBOUND_PORTS_INCLUDE"] == ""
    assert init.rules.splitlines()[0] == "* nat" and not init.shell_script
    trace = istio_init(data_path("explain", "istio-16473-trace-1.2-redirect", "server",
                                 "istio-init.log").read_text())
    assert trace.shell_script
    assert "iptables -t nat -A ISTIO_INBOUND -p tcp --dport 6565 -j ISTIO_IN_REDIRECT" in \
        trace.rules


def test_pasted_frames_prefixes_and_headings() -> None:
    framed = "│ -A ISTIO_OUTPUT -o lo -j ACCEPT     │\n│ COMMIT    ns=x │\n"
    assert unframe(framed).splitlines() == ["-A ISTIO_OUTPUT -o lo -j ACCEPT", "COMMIT    ns=x"]
    prefixed = "cni-node-1 *nat\ncni-node-1 -A PREROUTING -p tcp -j ISTIO_INBOUND\n"
    assert unframe(prefixed).splitlines() == ["*nat", "-A PREROUTING -p tcp -j ISTIO_INBOUND"]
    commands = "iptables -t nat -N X\niptables -t nat -A X -j RETURN\n"
    assert unframe(commands) == commands  # a command word is not a prefix
    kept, skipped = rule_lines("Add routing rules.\n-A X -j RETURN\nCOMMIT  trailing\n")
    assert kept.splitlines() == ["-A X -j RETURN", "COMMIT"] and skipped == 1


def test_istio_1_1_access_log_line_reads_every_field() -> None:
    """1.1's default format: a quoted mixer status, no UPSTREAM_TRANSPORT_FAILURE_REASON,
    no ROUTE_NAME; the paste's typographic quotes and backticks are undone."""
    e = parse_text_line('`[2019-04-23T11:02:56.481Z] “- - -” 0 - “-” 129 200 81 - “-” “-” “-” '
                        '“-” “127.0.0.1:8081” inbound|8081|mgmt-8081|mgmtCluster '
                        '127.0.0.1:43756 10.16.118.7:8081 10.16.118.1:60630 -`')
    assert e is not None
    assert (e.bytes_received, e.bytes_sent, e.duration) == ("129", "200", "81")
    assert e.upstream_host == "127.0.0.1:8081"
    assert e.upstream_local_address == "127.0.0.1:43756"
    assert e.downstream_remote_address == "10.16.118.1:60630"
    assert e.requested_server_name is None and e.route_name is None


def test_ztunnel_access_log_fields() -> None:
    from remora.diagnose.source_ip.ztunnel_log import parse_ztunnel_log

    text = data_path("explain", "istio-53696-ztunnel-log-1.24", "server",
                     "ztunnel.log").read_text()
    (e,) = parse_ztunnel_log(text)
    assert (e.src, e.dst, e.direction) == ("192.168.240.64:55909", "192.168.14.30:5050",
                                           "inbound")
    assert e.error is not None and e.error.startswith("connection closed due to policy")


def test_compare_keeps_the_version(tmp_path: Path) -> None:
    """The what-if rows regenerate the rules, not the version: 1.6 has no original_src
    in TPROXY mode, 1.9 forwards to 127.0.0.1, 1.12 binds 127.0.0.6."""
    from remora.diagnose.source_ip.compare import compare_table

    ev = _ev(tmp_path, {"nat.rules": NAT_REDIRECT})
    seen = {}
    for version in ("1.6", "1.9", "1.12"):
        ev.istio_version = version
        rows = compare_table(ev, explain_source_ip(ev))
        seen[version] = [(r.mode, r.remote_addr) for r in rows if r.header_option.startswith(
            "none")]
    client = "192.0.2.10"
    assert seen["1.6"] == [("REDIRECT", "127.0.0.1"), ("TPROXY", "127.0.0.1")]
    assert seen["1.9"] == [("REDIRECT", "127.0.0.1"), ("TPROXY", client)]
    assert seen["1.12"] == [("REDIRECT", "127.0.0.6"), ("TPROXY", client)]
