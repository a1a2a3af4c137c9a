"""Istio access-log lines (default text format and JSON) into named fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remora.diagnose.envoy.access_log import parse_access_log, parse_text_line
from remora.errors import RemoraError


def test_seed_text_lines(data: Path) -> None:
    entries = parse_access_log((data / "seed_server_access.log").read_text())
    assert len(entries) == 3  # the `$ kubectl logs` prompt is skipped
    e = entries[0]
    assert (e.method, e.path, e.protocol, e.response_code) == ("GET", "/common/sauth",
                                                                "HTTP/1.1", "200")
    assert e.response_flags is None and e.response_code_details == "via_upstream"
    assert (e.bytes_received, e.bytes_sent, e.duration) == ("0", "60", "0")
    assert e.x_forwarded_for is None and e.user_agent == "Go-http-client/1.1"
    assert e.authority == "simple-server-svc.demo-to:18080"
    assert e.upstream_host == "10.20.0.77:18080" and e.upstream_cluster == "inbound|18080||"
    assert e.upstream_local_address == "127.0.0.6:44213"
    assert e.downstream_local_address == "10.20.0.77:18080"
    assert e.downstream_remote_address == "10.20.0.78:33204"
    assert e.requested_server_name == (
        "outbound_.18080_._.simple-server-svc.demo-to.svc.cluster.local")
    assert e.route_name == "default" and e.direction == "inbound"
    assert [x.request_id for x in entries][2] == "a67101af-e469-91ab-99b0-61bb5abfa108"


def test_seed_pretty_json_with_notes(data: Path) -> None:
    [e] = parse_access_log((data / "seed_server_access_json.txt").read_text())
    assert e.format == "json"
    assert e.upstream_local_address == "127.0.0.6:44213"
    assert e.bytes_sent == "60"  # the seed spells it bytes_send
    assert e.request_id == "a67101af-e469-91ab-99b0-61bb5abfa108"  # x-request-id
    assert e.x_forwarded_for is None


def test_json_lines_and_tcp_and_outbound() -> None:
    lines = [
        json.dumps({"start_time": "t", "upstream_cluster": "outbound|18080||srv.default.svc."
                    "cluster.local", "upstream_local_address": "10.20.0.78:40000",
                    "downstream_remote_address": "10.20.0.78:51000",
                    "downstream_local_address": "172.16.234.188:18080",
                    "x_forwarded_for": None, "protocol": "HTTP/1.1"}),
        '[2024-01-01T00:00:00.000Z] "- - -" 0 - - - "-" 120 80 5 - "-" "-" "-" "-" '
        '"10.20.0.77:3306" inbound|3306|| 10.20.0.78:41000 10.20.0.77:3306 10.20.0.78:52000 '
        "- -",
    ]
    out, tcp = parse_access_log("\n".join(lines))
    assert out.direction == "outbound" and out.downstream_local_address == "172.16.234.188:18080"
    assert tcp.method is None and tcp.protocol is None and tcp.response_code == "0"
    assert tcp.upstream_local_address == "10.20.0.78:41000"  # TPROXY: the client's address
    assert tcp.requested_server_name is None and tcp.bytes_received == "120"


def test_pre_19_format_with_mixer_status() -> None:
    line = ('[2020-01-01T00:00:00.000Z] "GET /headers HTTP/1.1" 200 - "-" "-" 0 519 3 2 "-" '
            '"curl/7.64" "abc" "httpbin:8000" "127.0.0.1:80" inbound|8000|| 127.0.0.1:41854 '
            "10.44.1.27:80 10.44.1.23:37652 outbound_.8000_._.httpbin.foo.svc.cluster.local "
            "default")
    e = parse_text_line(line)
    assert e is not None
    assert e.upstream_local_address == "127.0.0.1:41854" and e.bytes_sent == "519"
    assert e.downstream_remote_address == "10.44.1.23:37652"


def test_truncated_json_entry_is_an_error() -> None:
    with pytest.raises(RemoraError, match="truncated"):
        parse_access_log('{"start_time": "x",\n  "upstream_cluster": "inbound|1||"')


def test_other_lines_are_ignored(data: Path) -> None:
    assert parse_access_log((data / "seed_server_app.log").read_text()) == []


def test_kubectl_prefix_and_timestamps(data: Path) -> None:
    line = (data / "seed_server_access.log").read_text().splitlines()[1]
    for prefixed in (f"2022-12-17T09:30:39.884271Z {line}",
                     f"[pod/simple-server-86b499d4dd-zd4pl/istio-proxy] {line}"):
        e = parse_text_line(prefixed)
        assert e is not None and e.upstream_local_address == "127.0.0.6:44213"
        assert e.start_time == "2022-12-17T09:30:39.883Z"


def test_ipv6_addresses_in_the_text_format_are_one_field_each() -> None:
    """Envoy prints an IPv6 address with its port as ``[::6]:41234``, one field: the
    bracket must not end the token (a line `remora proxy` and Envoy 1.40 write over IPv6)."""
    line = ('[2026-12-04T15:46:38.123Z] "GET /common/sauth HTTP/1.1" 200 - via_upstream - "-" '
            '0 40 1 1 "-" "curl/8" "rid" "simple-server-svc.demo-to:18080" '
            '"[fd00:10:20::77]:18080" inbound|18080|| [::6]:41234 [fd00:10:20::77]:18080 '
            '[fd00:10:20::78]:5555 outbound_.18080_._.simple-server-svc.demo-to.svc.cluster.local '
            'default')
    e = parse_text_line(line)
    assert e is not None and e.start_time == "2026-12-04T15:46:38.123Z"
    assert e.upstream_host == "[fd00:10:20::77]:18080" and e.upstream_cluster == "inbound|18080||"
    assert e.upstream_local_address == "[::6]:41234"
    assert e.downstream_local_address == "[fd00:10:20::77]:18080"
    assert e.downstream_remote_address == "[fd00:10:20::78]:5555"
    assert e.requested_server_name.startswith("outbound_.18080_") and e.route_name == "default"
