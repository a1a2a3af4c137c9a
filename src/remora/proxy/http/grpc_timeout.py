"""A route's max stream duration, and the gRPC ``grpc-timeout`` header it may take it from
(Envoy's ``RouteAction.max_stream_duration``, applied by the connection manager's
``ActiveStream::refreshDurationTimeout``).

Istio writes ``max_stream_duration {max_stream_duration: 0s, grpc_timeout_header_max: 0s}``
on every route it generates: no duration limit of its own, and a gRPC client's deadline
(``grpc-timeout``) becomes the stream's, uncapped. When it passes, Envoy answers itself
(``onStreamMaxDurationReached``: "downstream duration timeout", gRPC DEADLINE_EXCEEDED) and
resets the upstream request. Pure functions; the router arms the timer (router.py).
"""

from __future__ import annotations

from dataclasses import dataclass

# gRPC's PROTOCOL-HTTP2.md: TimeoutValue is a positive integer of at most 8 digits
_MAX_VALUE = 99_999_999
_UNIT_MS = {"H": 3_600_000, "M": 60_000, "S": 1000, "m": 1}


@dataclass(frozen=True)
class StreamDuration:
    """A route's ``max_stream_duration`` message, in seconds; None: the field is absent."""

    max_stream_duration: float | None = None
    grpc_timeout_header_max: float | None = None
    grpc_timeout_header_offset: float | None = None


def parse_grpc_timeout_ms(value: str) -> int | None:
    """``grpc-timeout``'s value in whole milliseconds (Envoy's Grpc::Common::getGrpcTimeout:
    ``u`` and ``n`` rounded up to the next millisecond), or None when it is not
    TimeoutValue TimeoutUnit."""
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or not digits.isascii():
        return None
    n = int(digits)
    if n > _MAX_VALUE:
        return None
    if unit in _UNIT_MS:
        return n * _UNIT_MS[unit]
    if unit == "u":
        return -(-n // 1000)
    if unit == "n":
        return -(-n // 1_000_000)
    return None


def format_grpc_timeout(ms: int) -> str:
    """Envoy's Grpc::Common::toGrpcTimeout: milliseconds, or the next larger unit while the
    value has more than 8 digits (``1S`` goes upstream as ``1000m``)."""
    value, unit = ms, "m"
    for bigger, factor in (("S", 1000), ("M", 60), ("H", 60)):
        if value <= _MAX_VALUE:
            break
        value, unit = value // factor, bigger
    return f"{value}{unit}"


def stream_timeout_ms(d: StreamDuration, grpc_timeout: str | None) -> int | None:
    """The stream's max duration in milliseconds, or None for none (refreshDurationTimeout):
    with a ``grpc-timeout`` header and ``grpc_timeout_header_max`` set, the header's value,
    capped by a non-zero maximum and less the offset (0 when the offset is not smaller);
    otherwise the route's own ``max_stream_duration``, where an explicit 0 means none.
    (Without the route field Envoy falls back to the connection manager's
    common_http_protocol_options.max_stream_duration, which remora does not implement.)"""
    header_ms = parse_grpc_timeout_ms(grpc_timeout) if grpc_timeout is not None else None
    if header_ms is None or d.grpc_timeout_header_max is None:
        if d.max_stream_duration is None or d.max_stream_duration == 0:
            return None
        return round(d.max_stream_duration * 1000)
    timeout = header_ms
    cap = round(d.grpc_timeout_header_max * 1000)
    if cap and timeout > cap:
        timeout = cap
    if timeout and d.grpc_timeout_header_offset is not None:
        offset = round(d.grpc_timeout_header_offset * 1000)
        timeout = timeout - offset if offset < timeout else 0
    return timeout
