"""``envoy.config.core.v3.Http2ProtocolOptions`` as the HTTP connection manager reads it,
strictly: the fields remora implements, each with Envoy's default and range; any other
field is refused by its path (strict.Fields.done).

Envoy reference: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#config-core-v3-http2protocoloptions
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Http2Options:
    max_concurrent_streams: int = MAX_CONCURRENT_STREAMS
    initial_stream_window_size: int = INITIAL_STREAM_WINDOW
    initial_connection_window_size: int = INITIAL_CONNECTION_WINDOW
    hpack_table_size: int = HPACK_TABLE_SIZE
    # flood limits (Envoy's max_outbound_control_frames and
    # max_consecutive_inbound_frames_with_empty_payload): the connection is closed beyond
    max_outbound_control_frames: int = MAX_OUTBOUND_CONTROL_FRAMES
    max_consecutive_inbound_frames_with_empty_payload: int = MAX_EMPTY_FRAMES


def _bounded(f: Fields, name: str, default: int, low: int, high: int) -> int:
    value = int(f.integer(name, default))
    if not low <= value <= high:
        raise ConfigError(f.at(name), f"{value} is out of range",
                          f"give a value from {low} to {high} (Envoy's bounds)")
    return value


def parse_http2_options(f: Fields | None) -> Http2Options:
    """The options block at F (None: absent, Envoy's defaults)."""
    if f is None:
        return Http2Options()
    opts = Http2Options(
        max_concurrent_streams=_bounded(f, "max_concurrent_streams", MAX_CONCURRENT_STREAMS,
                                        1, 2147483647),
        initial_stream_window_size=_bounded(f, "initial_stream_window_size",
                                            INITIAL_STREAM_WINDOW, _WINDOW_MIN, _WINDOW_MAX),
        initial_connection_window_size=_bounded(f, "initial_connection_window_size",
                                                INITIAL_CONNECTION_WINDOW, _WINDOW_MIN,
                                                _WINDOW_MAX),
        hpack_table_size=_bounded(f, "hpack_table_size", HPACK_TABLE_SIZE, 0, 2**32 - 1),
        max_outbound_control_frames=_bounded(f, "max_outbound_control_frames",
                                             MAX_OUTBOUND_CONTROL_FRAMES, 1, 2**32 - 1),
        max_consecutive_inbound_frames_with_empty_payload=_bounded(
            f, "max_consecutive_inbound_frames_with_empty_payload", MAX_EMPTY_FRAMES, 0,
            2**32 - 1),
    )
    # which HTTP/2 codec library Envoy links (nghttp2 or oghttp2) changes nothing here
    f.ignore("use_oghttp2_codec")
    f.done()
    return opts
