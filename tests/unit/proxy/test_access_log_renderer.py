"""The compiled text renderer (operators inlined when the listener loads) prints exactly
what the plain per-part rendering prints, for every operator, alternatives, truncation and
the missing, empty and zero values that print as ``-`` or ``0`` (and the header present
but empty that prints empty)."""

from __future__ import annotations

import pytest

from remora.proxy.access_log.format import SIMPLE, TextFormat, render_text
from remora.proxy.stream_info import StreamInfo

EVERY_OPERATOR = " ".join(
    [f"%{name}%" for name in sorted(SIMPLE)]
    + ["%START_TIME%", "%START_TIME(%Y/%m/%dT%H:%M:%E3S)%", "%REQ(:METHOD)%",
       "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "%REQ(USER-AGENT):3%", "%REQ(X-EMPTY?:PATH)%",
       "%REQ(X-MISSING?:AUTHORITY):4%", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
       "%RESP(SERVER?DATE)%", "%TRAILER(GRPC-STATUS)%", "%DYNAMIC_METADATA(ns:key)%"]
) + " 100%% [%PROTOCOL%]\n"


def _infos() -> list[StreamInfo]:
    empty = StreamInfo(start_time=1_700_000_000.25)
    full = StreamInfo(
        start_time=1_700_000_001.999, downstream_local_address="10.0.0.1:80",
        downstream_remote_address="[fd00::1]:3", downstream_direct_remote_address="1.2.3.4:5",
        requested_server_name="sni.example", listener_name="l", filter_chain_name="fc",
        protocol="HTTP/1.1", response_code=503, response_code_details="upstream reset a b",
        route_name="default", connection_termination_details="x y",
        upstream_cluster="inbound|80||", upstream_host="10.0.0.2:80",
        upstream_local_address="127.0.0.6:4", upstream_transport_failure_reason="conn refused",
        upstream_request_attempt_count=2, bytes_received=10, bytes_sent=0,
        request_headers={":method": "GET", ":path": "/p", "user-agent": "curl/8",
                         "x-empty": "", ":authority": "a.example"},
        response_headers={"x-envoy-upstream-service-time": "3", "date": "d"},
        response_trailers={"grpc-status": "0"},
        dynamic_metadata={"ns": {"key": {"a": 1}}})
    full.set_flag("UF")
    full.set_flag("URX")
    full.finish()
    blank = StreamInfo(start_time=1_700_000_002.0, protocol="", route_name="",
                       response_code=0, request_headers={}, response_headers={},
                       response_code_details="")
    return [empty, full, blank]


@pytest.mark.parametrize("index", range(3))
def test_compiled_renderer_prints_what_render_text_prints(index: int) -> None:
    fmt = TextFormat(EVERY_OPERATOR, "f")
    info = _infos()[index]
    assert fmt.render(info) == render_text(fmt.parts, info)


def test_compiled_renderer_values() -> None:
    fmt = TextFormat("%REQ(X-EMPTY?:PATH)% %REQ(USER-AGENT):3% %RESPONSE_FLAGS% "
                     "%RESPONSE_CODE_DETAILS% %BYTES_SENT% %RESPONSE_CODE% %ROUTE_NAME%", "f")
    # x-empty is present but empty: printed empty, the alternative not consulted (Envoy's
    # HeaderFormatter falls back only when the first header is absent)
    assert fmt.render(_infos()[1]) == " cur UF,URX upstream_reset_a_b 0 503 default"
    assert fmt.render(_infos()[0]) == "- - - - 0 0 -"


def test_compiled_start_time_matches_operator_across_seconds() -> None:
    """The compiled %START_TIME% keeps the last second's text: lines within that second,
    in the next one, back in an earlier one and on millisecond edges print what the
    operator prints."""
    fmt = TextFormat("[%START_TIME%] %DURATION%\n", "f")
    base = 1_700_000_000.0
    times = [base + 0.25, base + 0.999, base + 0.0005, base + 0.9999999, base + 1.0,
             base + 1.001, base - 0.001, base + 0.5, base + 86_400.123456, base + 2.9995]
    times += [base + i * 0.0371 for i in range(200)]
    for t in times:
        info = StreamInfo(start_time=t)
        assert fmt.render(info) == render_text(fmt.parts, info), t
        info.finish()
        assert fmt.render(info) == render_text(fmt.parts, info), t


def test_compiled_renderer_literals_need_no_escaping() -> None:
    fmt = TextFormat('{x} \\n "q" \'%REQ(:PATH)%\' {{%PROTOCOL%}} 100%%\n', "f")
    info = StreamInfo(protocol="HTTP/1.1", request_headers={":path": "/{a}"})
    assert fmt.render(info) == '{x} \\n "q" \'/{a}\' {{HTTP/1.1}} 100%\n'


@pytest.mark.parametrize("number", [0, 7, 200, 1023, 1024, 65536, 10**12])
def test_compiled_renderer_integers_small_and_large(number: int) -> None:
    """Integers below and past the renderer's table of small decimals (status codes, byte
    counts, attempt counts, durations in ms) print as str() prints them."""
    fmt = TextFormat("%RESPONSE_CODE% %BYTES_RECEIVED% %BYTES_SENT% "
                     "%UPSTREAM_REQUEST_ATTEMPT_COUNT% %DURATION%", "f")
    info = StreamInfo(start_time=1_700_000_000.5, start_monotonic=100.0,
                      end_monotonic=100.0 + number / 1000 + 0.0004, response_code=number,
                      bytes_received=number, bytes_sent=number,
                      upstream_request_attempt_count=number)
    line = fmt.render(info)
    assert line == render_text(fmt.parts, info)
    assert line.split(" ")[:4] == [str(number)] * 4


@pytest.mark.parametrize("operators", [14, 15, 29, 30, 31, 45, 70])
def test_compiled_renderer_long_formats(operators: int) -> None:
    """Formats of more parts than one BUILD_STRING takes (Envoy's default line has 31,
    Istio's 49) are joined in nested levels and print every part in order."""
    fmt = TextFormat(" ".join(f"<{n}>%BYTES_SENT%" for n in range(operators)) + "\n", "f")
    info = StreamInfo(bytes_sent=5)
    line = fmt.render(info)
    assert line == render_text(fmt.parts, info)
    assert line == " ".join(f"<{n}>5" for n in range(operators)) + "\n"
