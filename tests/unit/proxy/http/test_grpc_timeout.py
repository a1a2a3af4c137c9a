"""grpc-timeout and a route's max_stream_duration, as Envoy's Grpc::Common::getGrpcTimeout /
toGrpcTimeout and ActiveStream::refreshDurationTimeout work them out (the behaviour through
both proxies: tests/unit/proxy/test_local_reply_envoy_parity.py, the h1-msd-*/h2-msd-* cases)."""

from __future__ import annotations

import pytest

from remora.proxy.http.grpc_timeout import (
    StreamDuration,
    format_grpc_timeout,
    parse_grpc_timeout_ms,
    stream_timeout_ms,
)


@pytest.mark.parametrize(("value", "ms"), [
    ("1S", 1000), ("200m", 200), ("2M", 120_000), ("1H", 3_600_000),
    ("1500u", 2), ("1000u", 1), ("1n", 1), ("0S", 0), ("99999999m", 99_999_999),
    ("100000000m", None), ("", None), ("S", None), ("1s", None), ("-1S", None),
    ("1.5S", None), ("１S", None),
])
def test_parse(value: str, ms: int | None) -> None:
    assert parse_grpc_timeout_ms(value) == ms


@pytest.mark.parametrize(("ms", "text"), [
    (1000, "1000m"), (0, "0m"), (99_999_999, "99999999m"), (100_000_000, "100000S"),
])
def test_format(ms: int, text: str) -> None:
    assert format_grpc_timeout(ms) == text


ISTIO = StreamDuration(0.0, 0.0)


def test_istio_routes_take_the_clients_deadline_uncapped() -> None:
    assert stream_timeout_ms(ISTIO, "5S") == 5000
    assert stream_timeout_ms(ISTIO, None) is None  # no deadline: no limit
    assert stream_timeout_ms(ISTIO, "bogus") is None
    assert stream_timeout_ms(ISTIO, "0S") == 0  # fires at once, as Envoy's timer


def test_cap_offset_and_the_routes_own_duration() -> None:
    capped = StreamDuration(None, 1.0, None)
    assert stream_timeout_ms(capped, "5S") == 1000
    assert stream_timeout_ms(capped, "500m") == 500
    offset = StreamDuration(None, 0.0, 0.2)
    assert stream_timeout_ms(offset, "1S") == 800
    assert stream_timeout_ms(offset, "100m") == 0  # offset not smaller: at once
    own = StreamDuration(0.3, None, None)
    assert stream_timeout_ms(own, "5S") == 300  # header ignored without header_max
    assert stream_timeout_ms(StreamDuration(0.0, None, None), None) is None
    assert stream_timeout_ms(StreamDuration(None, None, None), "5S") is None
