"""``envoy.config.core.v3.Http2ProtocolOptions``, strictly: the fields remora implements,
each with Envoy's default and range; any other field is refused by its path
(strict.Fields.done). One parser for both places the message appears: the HTTP connection
manager's (every field below) and a cluster's (the upstream HTTP/2 pool implements only the
stream limit, the windows and connection_keepalive: UPSTREAM_FIELDS, the rest refused).
``connection_keepalive`` (http2/keepalive.py): interval, timeout and interval_jitter;
connection_idle_interval (a PING before a new stream on a connection idle that long) is
refused.

Envoy reference: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#config-core-v3-http2protocoloptions
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from remora.proxy.config.strict import ConfigError, Fields

# Envoy 1.40's defaults, as its SETTINGS and first WINDOW_UPDATE show on the wire (checked
# with an h2 client: MAX_CONCURRENT_STREAMS 1024, INITIAL_WINDOW_SIZE 16 MiB, connection
# window 24 MiB; 2^31-1 and 256 MiB, which some API docs give, are older defaults)
MAX_CONCURRENT_STREAMS = 1024
INITIAL_STREAM_WINDOW = 16 * 1024 * 1024
INITIAL_CONNECTION_WINDOW = 24 * 1024 * 1024
MAX_OUTBOUND_CONTROL_FRAMES = 1000
MAX_EMPTY_FRAMES = 1
HPACK_TABLE_SIZE = 4096
_WINDOW_MIN, _WINDOW_MAX = 65535, 2147483647
_UINT32_MAX = 2**32 - 1

# Envoy's range for each field (protocol.proto's validate rules; the stream and window
# bounds are checked against Envoy 1.40's `--mode validate` by
# tests/unit/proxy/http2/test_upstream_config.py), in the order they are read: of several
# bad fields, the first one here is reported
_RANGES: dict[str, tuple[int, int]] = {
    "max_concurrent_streams": (1, 2147483647),
    "initial_stream_window_size": (_WINDOW_MIN, _WINDOW_MAX),
    "initial_connection_window_size": (_WINDOW_MIN, _WINDOW_MAX),
    "hpack_table_size": (0, _UINT32_MAX),
    "max_outbound_control_frames": (1, _UINT32_MAX),
    "max_consecutive_inbound_frames_with_empty_payload": (0, _UINT32_MAX),
}
_KEEPALIVE = "connection_keepalive"
# which HTTP/2 codec library Envoy links (nghttp2 or oghttp2): changes nothing in remora
_CODEC_CHOICE = "use_oghttp2_codec"

# the HTTP connection manager's http2_protocol_options: every field above
DOWNSTREAM_FIELDS = frozenset((*_RANGES, _CODEC_CHOICE, _KEEPALIVE))
# a cluster's (explicit_http_config, use_downstream_protocol_config or the legacy
# cluster-level field): the upstream pool (proxy/http2/upstream.py) implements the stream
# limit per connection, the windows it advertises and keepalive PINGs, nothing else
UPSTREAM_FIELDS = frozenset(("max_concurrent_streams", "initial_stream_window_size",
                             "initial_connection_window_size", _KEEPALIVE))


@dataclass(frozen=True)
class Http2Options:
    """The parsed options; a field the caller does not accept keeps Envoy's default."""

    max_concurrent_streams: int = MAX_CONCURRENT_STREAMS
    initial_stream_window_size: int = INITIAL_STREAM_WINDOW
    initial_connection_window_size: int = INITIAL_CONNECTION_WINDOW
    hpack_table_size: int = HPACK_TABLE_SIZE
    # flood limits (Envoy's max_outbound_control_frames and
    # max_consecutive_inbound_frames_with_empty_payload): the connection is closed beyond
    max_outbound_control_frames: int = MAX_OUTBOUND_CONTROL_FRAMES
    max_consecutive_inbound_frames_with_empty_payload: int = MAX_EMPTY_FRAMES
    # connection_keepalive (seconds; timeout 0: no keepalive, interval 0: no PINGs)
    keepalive_interval: float = 0.0
    keepalive_timeout: float = 0.0
    keepalive_jitter: float = 15.0  # percent of the interval (Envoy's default)


DEFAULT_H2 = Http2Options()  # Envoy's defaults


def parse_http2_options(f: Fields | None,
                        accepted: frozenset[str] = DOWNSTREAM_FIELDS) -> Http2Options:
    """The options block at F (None: absent, Envoy's defaults), reading the ACCEPTED
    fields (DOWNSTREAM_FIELDS or UPSTREAM_FIELDS) and refusing any other by its path."""
    if f is None:
        return DEFAULT_H2
    values: dict[str, int] = {}
    for name, (low, high) in _RANGES.items():
        if name not in accepted:
            continue
        value = f.integer(name)
        if value is None:
            continue
        if not low <= value <= high:
            raise ConfigError(f.at(name), f"{value} is out of range",
                              f"give a value from {low} to {high} (Envoy's bounds)")
        values[name] = int(value)
    if _CODEC_CHOICE in accepted:
        f.ignore(_CODEC_CHOICE)
    opts = Http2Options(**values)
    if _KEEPALIVE in accepted:
        ka = f.fields(_KEEPALIVE, "KeepaliveSettings")
        if ka is not None:
            interval, timeout, jitter = _keepalive(ka)
            opts = replace(opts, keepalive_interval=interval, keepalive_timeout=timeout,
                           keepalive_jitter=jitter)
    f.done()
    return opts


def _keepalive(ka: Fields) -> tuple[float, float, float]:
    """Envoy's KeepaliveSettings: timeout required; interval and connection_idle_interval
    at least 1 ms when given; interval_jitter a Percent (0-100, default 15)."""
    if ka.raw("connection_idle_interval") is not None:
        raise ConfigError(ka.at("connection_idle_interval"), "is not implemented by remora",
                          "remove it (interval and timeout keepalive PINGs are implemented)")
    timeout = ka.duration("timeout")
    if timeout is None:
        raise ConfigError(ka.at("timeout"), "required field is missing",
                          "give how long to wait for a PING ACK, e.g. \"5s\" (1ms or more)")
    interval = ka.duration("interval")
    for name, value in (("timeout", timeout), ("interval", interval)):
        if value is not None and value < 0.001:
            raise ConfigError(ka.at(name), f"{value}s is out of range",
                              "give 1ms or more (Envoy's bound)")
    jitter = 15.0
    pj = ka.fields("interval_jitter", "Percent")
    if pj is not None:
        raw = pj.raw("value", 0.0)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= 100:
            raise ConfigError(pj.at("value"), f"{raw!r} is not a percentage",
                              "give a number from 0 to 100")
        jitter = float(raw)
        pj.done()
    ka.done()
    return float(interval or 0.0), float(timeout), jitter
