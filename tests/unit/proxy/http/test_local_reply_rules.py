"""The pure rules behind Envoy's gRPC local replies and the upstream's expected-timeout
header (tests/unit/proxy/test_local_reply_envoy_parity.py holds the same behaviour to
Envoy 1.40 end to end)."""

from __future__ import annotations

import pytest

from remora.proxy.http.stream import grpc_message, http_to_grpc_status, is_grpc_content_type
from remora.proxy.http.upstream_request import expected_timeout_ms


@pytest.mark.parametrize(("status", "code"), [
    (400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (502, 14), (503, 14), (504, 14),
    (408, 2), (500, 2), (418, 2), (426, 2), (431, 2)])
def test_http_to_grpc_status(status: int, code: int) -> None:
    assert http_to_grpc_status(status) == code


@pytest.mark.parametrize(("content_type", "grpc"), [
    ("application/grpc", True), ("application/grpc+proto", True),
    ("application/grpc+json", True), ("application/grpc-web", False),
    ("application/grpc-web+proto", False), ("application/grpcx", False),
    ("Application/grpc", False), ("text/plain", False), (None, False)])
def test_grpc_content_type(content_type: str | None, grpc: bool) -> None:
    assert is_grpc_content_type(content_type) is grpc


def test_grpc_message_percent_encoding() -> None:
    assert grpc_message(b"upstream request timeout") == "upstream request timeout"
    assert grpc_message("café ~ 100% }\t\x7f {|}\n".encode()) == \
        "caf%C3%A9 %7E 100%25 }%09%7F {|}%0A"
    assert grpc_message(b"") == ""


@pytest.mark.parametrize(("route", "per_try", "elapsed", "want"), [
    (10.0, 0.0, 0, 10000),    # the whole route timeout on the first attempt
    (0.3, 0.0, 0, 300),
    (0.57, 0.0, 0, 570),      # no float truncation to 569
    (15.0, 0.1, 0, 100),      # the per-try timeout when shorter
    (15.0, 0.0, 20, 14980),   # a retry: what is left
    (15.0, 0.1, 14950, 50),   # per-try capped by what is left
    (1.0, 0.0, 1000, 1),      # all spent: 1, never 0
    (1.0, 0.0, 5000, 1),
    (0.0, 0.2, 300, 200),     # no route timeout: the per-try one, uncapped
    (0.0, 0.0, 0, 0),         # neither: no header
])
def test_expected_timeout_ms(route: float, per_try: float, elapsed: int, want: int) -> None:
    assert expected_timeout_ms(route, per_try, elapsed) == want
