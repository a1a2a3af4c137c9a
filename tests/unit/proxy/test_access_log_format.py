"""Access-log formatting: Istio's default text line (checked against the seed's own
lines), Envoy's TCP lines, json_format typing, and config errors naming the field."""

from __future__ import annotations

import calendar
import json
import time
from pathlib import Path

import pytest

from remora.controlplane.envoy_common import ACCESS_LOG_FORMAT
from remora.proxy import access_log
from remora.proxy.access_log.format import JsonFormat, TextFormat, render_text
from remora.proxy.config.strict import ConfigError
from remora.proxy.stream_info import StreamInfo
from tests.unit.proxy.proxy_helpers import FILE_LOG

SEED_LINE = (
    '[2022-12-17T09:30:39.883Z] "GET /common/sauth HTTP/1.1" 200 - via_upstream - "-" 0 60 0 0 '
    '"-" "Go-http-client/1.1" "57dd8171-f8e0-9ffc-bfc4-cdf4d9f5ee0f" '
    '"simple-server-svc.demo-to:18080" "10.20.0.77:18080" inbound|18080|| 127.0.0.6:44213 '
    "10.20.0.77:18080 10.20.0.78:33204 "
    "outbound_.18080_._.simple-server-svc.demo-to.svc.cluster.local default"
)


def _at(stamp: str) -> float:
    whole, frac = stamp.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(frac) / 1000 + 1e-4


def seed_info() -> StreamInfo:
    info = StreamInfo(
        start_time=_at("2022-12-17T09:30:39.883Z"), start_monotonic=100.0,
        end_monotonic=100.0,
        downstream_local_address="10.20.0.77:18080",
        downstream_remote_address="10.20.0.78:33204",
        requested_server_name="outbound_.18080_._.simple-server-svc.demo-to.svc.cluster.local",
        protocol="HTTP/1.1",
        request_headers={":method": "GET", ":path": "/common/sauth",
                         ":authority": "simple-server-svc.demo-to:18080",
                         "user-agent": "Go-http-client/1.1",
                         "x-request-id": "57dd8171-f8e0-9ffc-bfc4-cdf4d9f5ee0f"},
        response_headers={"x-envoy-upstream-service-time": "0"},
        response_code=200, response_code_details="via_upstream", route_name="default",
        bytes_received=0, bytes_sent=60, upstream_cluster="inbound|18080||",
        upstream_host="10.20.0.77:18080", upstream_local_address="127.0.0.6:44213",
    )
    return info


def test_istio_default_line_reproduces_the_seed(data_dir: Path) -> None:
    seed = (data_dir / "seed" / "000_1398f3c2bea01311.txt").read_text()
    assert SEED_LINE in seed  # the expectation is the seed's own line, field for field
    line = TextFormat(ACCESS_LOG_FORMAT, "f").render(seed_info())
    assert line == SEED_LINE + "\n"
    assert line.split() == SEED_LINE.split()


def test_reference_config_format_is_istios(data_dir: Path) -> None:
    doc = json.loads((data_dir / "reference/envoy-sidecar/server-redirect.json").read_text())
    chain = doc["static_resources"]["listeners"][0]["filter_chains"][2]
    fmt = chain["filters"][0]["typed_config"]["access_log"][0]["typed_config"]["log_format"]
    assert fmt["text_format_source"]["inline_string"] == ACCESS_LOG_FORMAT


def test_tcp_lines_as_envoy_140_prints_them() -> None:
    # Observed from envoy 1.40 (tcp_proxy, refused upstream; then a good connection).
    fmt = TextFormat(ACCESS_LOG_FORMAT, "f")
    info = StreamInfo(start_time=_at("2026-11-23T23:14:43.295Z"), start_monotonic=5.0,
                      end_monotonic=5.0, downstream_local_address="127.0.0.1:19901",
                      downstream_remote_address="127.0.0.1:41816", upstream_cluster="c1",
                      upstream_host="127.0.0.1:19902",
                      upstream_transport_failure_reason="delayed connect error: "
                                                        "Connection refused")
    # in the order tcp_proxy sets them: the failed attempt (UF), then attempts exhausted (URX)
    info.set_flag("UF")
    info.set_flag("URX")
    assert fmt.render(info) == (
        '[2026-11-23T23:14:43.295Z] "- - -" 0 UF,URX - - '
        '"delayed_connect_error:_Connection_refused" 0 0 0 - "-" "-" "-" "-" "127.0.0.1:19902" '
        'c1 - 127.0.0.1:19901 127.0.0.1:41816 - -\n')


def test_json_format_types_nulls_nesting_and_sorted_keys() -> None:
    fmt = JsonFormat({"code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%",
                      "br": "%BYTES_RECEIVED%", "p": "%PROTOCOL%", "m": "%REQ(:METHOD)%",
                      "mix": "x %UPSTREAM_HOST% y", "nested": {"a": "%UPSTREAM_CLUSTER%"},
                      "n": 7}, "json_format")
    info = StreamInfo(bytes_received=5, upstream_host="127.0.0.1:19902", upstream_cluster="c1")
    out = fmt.render(info)
    assert out.endswith("\n")
    assert json.loads(out) == {"br": 5, "code": 0, "flags": "-", "m": None, "p": None,
                               "mix": "x 127.0.0.1:19902 y", "nested": {"a": "c1"}, "n": 7}
    assert list(json.loads(out)) == sorted(json.loads(out))


def test_operators_alternatives_truncation_and_percent() -> None:
    info = StreamInfo(request_headers={":path": "/a/very/long/path", "x-envoy-original-path": "/o"})
    assert TextFormat("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "f").render(info) == "/o"
    info.request_headers = {":path": "/a/very/long/path"}
    assert TextFormat("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):6% 100%%", "f").render(info) == \
        "/a/ver 100%"
    info.downstream_remote_address = "[fd00::1]:80"
    assert TextFormat("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "f").render(info) == "fd00::1"
    info.start_time = _at("2022-12-17T09:30:39.883Z")
    assert TextFormat("%START_TIME(%Y/%m/%d %s)%", "f").render(info) == "2022/12/17 1671269439"


def test_unknown_operator_rejected_with_field_path() -> None:
    cfg = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": "/dev/null",
        "log_format": {"text_format_source": {"inline_string": "%NO_SUCH_THING%"}}}}]
    with pytest.raises(ConfigError) as err:
        access_log.build(cfg, "tcp.access_log")
    assert err.value.path == "tcp.access_log[0].typed_config.log_format.text_format_source." \
                             "inline_string"
    assert "NO_SUCH_THING" in err.value.problem
    cfg[0]["typed_config"]["flush_interval"] = "1s"  # type: ignore[index]
    with pytest.raises(ConfigError) as err:
        access_log.build(cfg, "x")
    assert err.value.path == "x[0].typed_config.flush_interval"


def test_file_logger_writes_lines_and_response_flag_filter(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    cfg = [{"name": "envoy.access_loggers.file",
            "filter": {"response_flag_filter": {"flags": ["UF"]}},
            "typed_config": {
                "@type": FILE_LOG, "path": str(path),
                "format": "%UPSTREAM_CLUSTER% %RESPONSE_FLAGS%\n"}}]
    (logger,) = access_log.build(cfg, "al")
    ok = StreamInfo(upstream_cluster="a")
    bad = StreamInfo(upstream_cluster="b")
    bad.set_flag("UF")
    logger.log(ok)
    logger.log(bad)
    assert path.read_text() == "b UF\n"


def test_header_present_but_empty_prints_empty_absent_prints_dash() -> None:
    """Envoy 1.40 prints a request/response header that is present with an empty value
    as the empty string (text and json_format), an absent one as ``-`` / null; other
    operators still print ``-`` for an empty value (tests/unit/proxy/
    test_local_reply_envoy_parity.py checks the same lines against Envoy)."""
    info = StreamInfo(request_headers={"x-empty": "", ":path": "/p"},
                      response_headers={"x-r": ""}, route_name="")
    fmt = '"%REQ(X-EMPTY)%" "%REQ(X-EMPTY):3%" "%REQ(X-ABSENT)%" "%RESP(X-R)%" ' \
          '"%REQ(X-EMPTY?:PATH)%" "%REQ(X-ABSENT?:PATH)%" "%ROUTE_NAME%"'
    want = '"" "" "-" "" "" "/p" "-"'
    text = TextFormat(fmt, "f")
    assert text.render(info) == want
    assert render_text(text.parts, info) == want
    out = JsonFormat({"e": "%REQ(X-EMPTY)%", "a": "%REQ(X-ABSENT)%", "r": "%RESP(X-R)%",
                      "mix": "[%REQ(X-EMPTY)%]", "route": "%ROUTE_NAME%"},
                     "json_format").render(info)
    assert json.loads(out) == {"e": "", "a": None, "r": "", "mix": "[]", "route": None}


def test_omit_empty_values_prints_nothing_for_absent_values_in_text() -> None:
    """SubstitutionFormatString.omit_empty_values on a text format: an absent value prints
    as nothing instead of "-" (observed on Envoy 1.40 with %REQ(X-FOO)% absent)."""
    fmt = "[%REQ(X-FOO)%] [%REQ(X-BAR)%] [%UPSTREAM_HOST%] [%RESPONSE_CODE%]\n"
    info = StreamInfo(request_headers={"x-bar": "b"}, response_code=200)
    assert TextFormat(fmt, "f", omit_empty=True).render(info) == "[] [b] [] [200]\n"
    assert TextFormat(fmt, "f").render(info) == "[-] [b] [-] [200]\n"
