"""%UPSTREAM_PROTOCOL% and %GRPC_STATUS% as pure functions of StreamInfo (the loopback
and Envoy parity tests check them end to end): where the gRPC status comes from, its
three spellings, and what counts as a gRPC request."""

from __future__ import annotations

import pytest

from remora.proxy.access_log.format import compile_text, render_text
from remora.proxy.config.strict import ConfigError
from remora.proxy.stream_info import StreamInfo


def render(fmt: str, info: StreamInfo) -> str:
    return render_text(compile_text(fmt, "f"), info)


def grpc_info(**kw: object) -> StreamInfo:
    info = StreamInfo(protocol="HTTP/1.1", response_code=200)
    info.request_headers = {"content-type": "application/grpc"}
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def test_trailers_first_then_headers_then_the_http_status() -> None:
    fmt = "%GRPC_STATUS% %GRPC_STATUS(NUMBER)% %GRPC_STATUS(SNAKE_STRING)%"
    info = grpc_info(response_trailers={"grpc-status": "1"},
                     response_headers={"grpc-status": "5"})
    assert render(fmt, info) == "Canceled 1 CANCELLED"
    assert render(fmt, grpc_info(response_headers={"grpc-status": "5"})) == (
        "NotFound 5 NOT_FOUND")
    assert render(fmt, grpc_info(response_headers={})) == "Unknown 2 UNKNOWN"
    assert render(fmt, grpc_info(response_code=503)) == "Unavailable 14 UNAVAILABLE"
    assert render(fmt, grpc_info(response_code=404)) == "Unimplemented 12 UNIMPLEMENTED"


def test_unknown_codes_print_as_numbers() -> None:
    assert render("%GRPC_STATUS%", grpc_info(response_trailers={"grpc-status": "17"})) == "17"
    assert render("%GRPC_STATUS%", grpc_info(response_trailers={"grpc-status": "x"})) == "-1"


@pytest.mark.parametrize(("content_type", "grpc"), [
    ("application/grpc", True), ("application/grpc+proto", True),
    ("application/grpc;charset=utf-8", False), ("application/grpc-web", False),
    ("application/grpcx", False), ("application/json", False), (None, False)])
def test_only_grpc_requests(content_type: str | None, grpc: bool) -> None:
    info = grpc_info(response_headers={"grpc-status": "0"})
    info.request_headers = {} if content_type is None else {"content-type": content_type}
    assert render("%GRPC_STATUS%", info) == ("OK" if grpc else "-")


def test_bad_grpc_status_argument_refused() -> None:
    with pytest.raises(ConfigError) as err:
        compile_text("%GRPC_STATUS(LOUD)%", "log_format")
    assert "CAMEL_STRING, SNAKE_STRING or NUMBER" in err.value.one_line()


def test_upstream_protocol() -> None:
    info = StreamInfo(protocol="HTTP/1.1")
    assert render("%UPSTREAM_PROTOCOL%", info) == "-"  # no upstream reached
    info.upstream_local_address = "127.0.0.1:5"
    assert render("%UPSTREAM_PROTOCOL%", info) == "HTTP/1.1"
    info.upstream_protocol = "HTTP/2"
    assert render("%UPSTREAM_PROTOCOL%", info) == "HTTP/2"
    tcp = StreamInfo(upstream_local_address="127.0.0.1:5")  # tcp_proxy: no HTTP
    assert render("%UPSTREAM_PROTOCOL%", tcp) == "-"
