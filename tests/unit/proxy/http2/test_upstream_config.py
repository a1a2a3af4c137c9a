"""A cluster's HTTP/2 upstream settings, parsed strictly: explicit_http_config and
use_downstream_protocol_config of envoy.extensions.upstreams.http.v3.HttpProtocolOptions,
the legacy cluster-level http2_protocol_options, Envoy's defaults and ranges, and a
field remora does not implement refused by its path. The ranges and the precedence of
the typed options over the legacy field were checked against Envoy 1.40 (the last test
runs `envoy --mode validate` on the same clusters)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from remora.proxy.config.strict import ConfigError
from remora.proxy.upstream.config import (
    H2_INITIAL_CONNECTION_WINDOW,
    H2_INITIAL_WINDOW,
    H2_MAX_CONCURRENT_STREAMS,
    HTTP_OPTIONS,
    parse_cluster,
)
from tests.unit.proxy.http2 import upstream_setup as us


def _typed(**config: Any) -> dict[str, Any]:
    return {HTTP_OPTIONS: {"@type": "type.googleapis.com/" + HTTP_OPTIONS, **config}}


def test_explicit_http2_with_envoy_defaults() -> None:
    cfg = parse_cluster(us.cluster("c", 1, typed_extension_protocol_options=us.h2_options()),
                        "c")
    opts = cfg.http_protocol_options
    assert opts.protocol == "http2"
    assert opts.upstream_http2("HTTP/1.1") and opts.upstream_http2("HTTP/2")
    assert (opts.http2.max_concurrent_streams, opts.http2.initial_stream_window_size,
            opts.http2.initial_connection_window_size) == (
        H2_MAX_CONCURRENT_STREAMS, H2_INITIAL_WINDOW, H2_INITIAL_CONNECTION_WINDOW) == (
        1024, 16 * 1024 * 1024, 24 * 1024 * 1024)


def test_explicit_http2_values() -> None:
    raw = us.h2_options(max_concurrent_streams=7, initial_stream_window_size=65535,
                        initial_connection_window_size=1048576)
    opts = parse_cluster(us.cluster("c", 1, typed_extension_protocol_options=raw),
                         "c").http_protocol_options
    assert (opts.http2.max_concurrent_streams, opts.http2.initial_stream_window_size,
            opts.http2.initial_connection_window_size) == (7, 65535, 1048576)


def test_use_downstream_protocol_follows_the_request() -> None:
    raw = _typed(use_downstream_protocol_config={"http_protocol_options": {},
                                                 "http2_protocol_options": {
                                                     "max_concurrent_streams": 3}})
    opts = parse_cluster(us.cluster("c", 1, typed_extension_protocol_options=raw),
                         "c").http_protocol_options
    assert opts.protocol == "downstream"
    assert opts.upstream_http2("HTTP/2")
    assert not opts.upstream_http2("HTTP/1.1")
    assert opts.http2.max_concurrent_streams == 3


def test_explicit_http1_and_no_options_stay_http1() -> None:
    for extra in ({}, {"typed_extension_protocol_options": _typed(
            explicit_http_config={"http_protocol_options": {}})}):
        opts = parse_cluster(us.cluster("c", 1, **extra), "c").http_protocol_options
        assert not opts.upstream_http2("HTTP/2")


def test_legacy_cluster_field() -> None:
    opts = parse_cluster(us.cluster("c", 1, http2_protocol_options={
        "max_concurrent_streams": 9}), "c").http_protocol_options
    assert opts.upstream_http2("HTTP/1.1")
    assert opts.http2.max_concurrent_streams == 9


def test_typed_options_win_over_the_legacy_field() -> None:
    raw = _typed(explicit_http_config={"http_protocol_options": {}})
    opts = parse_cluster(us.cluster("c", 1, http2_protocol_options={},
                                    typed_extension_protocol_options=raw),
                         "c").http_protocol_options
    assert not opts.upstream_http2("HTTP/1.1")


def test_tls_alpn_offered_as_the_pool_speaks() -> None:
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": us.UPSTREAM_TLS, "common_tls_context": {}}}
    configured = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": us.UPSTREAM_TLS, "common_tls_context": {"alpn_protocols": ["istio-h2"]}}}
    downstream = _typed(use_downstream_protocol_config={"http2_protocol_options": {}})
    cases = [({"typed_extension_protocol_options": us.h2_options()}, tls, ("h2",)),
             ({}, tls, ("http/1.1",)),
             ({"typed_extension_protocol_options": downstream}, tls, ()),
             ({"typed_extension_protocol_options": us.h2_options()}, configured,
              ("istio-h2",))]
    for extra, socket, alpn in cases:
        cfg = parse_cluster(us.cluster("c", 1, transport_socket=socket, **extra), "c")
        assert cfg.transport is not None
        assert cfg.transport.alpn == alpn


PREFIX = (f"c.typed_extension_protocol_options.{HTTP_OPTIONS}.explicit_http_config."
          "http2_protocol_options")


@pytest.mark.parametrize(("http2", "path", "message"), [
    ({"hpack_table_size": 4096}, f"{PREFIX}.hpack_table_size", "unknown or unsupported"),
    ({"allow_connect": True}, f"{PREFIX}.allow_connect", "unknown or unsupported"),
    ({"max_concurrent_streams": 0}, f"{PREFIX}.max_concurrent_streams", "out of range"),
    ({"initial_stream_window_size": 100}, f"{PREFIX}.initial_stream_window_size",
     "out of range"),
    ({"initial_connection_window_size": 2147483648},
     f"{PREFIX}.initial_connection_window_size", "out of range"),
])
def test_refused_by_path(http2: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_cluster(us.cluster("c", 1, typed_extension_protocol_options=us.h2_options(
            **http2)), "c")
    assert err.value.path == path
    assert message in err.value.message


def test_legacy_field_refused_by_path_too() -> None:
    with pytest.raises(ConfigError) as err:
        parse_cluster(us.cluster("c", 1, http2_protocol_options={"allow_metadata": True}),
                      "c")
    assert err.value.path == "c.http2_protocol_options.allow_metadata"


@pytest.mark.envoy
@pytest.mark.skipif(shutil.which("envoy") is None, reason="needs envoy")
def test_envoy_agrees_on_the_ranges(tmp_path: Path) -> None:
    """What remora accepts Envoy accepts, what remora refuses as out of range Envoy
    refuses too (proto validation)."""
    cases = [({}, True), ({"max_concurrent_streams": 1,
                           "initial_stream_window_size": 65535,
                           "initial_connection_window_size": 2147483647}, True),
             ({"max_concurrent_streams": 0}, False),
             ({"initial_stream_window_size": 65534}, False),
             ({"initial_connection_window_size": 2147483648}, False)]
    for http2, ok in cases:
        cluster = us.cluster("c", 1, typed_extension_protocol_options=us.h2_options(**http2))
        try:
            parse_cluster(cluster, "c")
            remora_ok = True
        except ConfigError:
            remora_ok = False
        path = tmp_path / "b.json"
        path.write_text(json.dumps({"static_resources": {"clusters": [cluster]}}))
        out = subprocess.run(["envoy", "--mode", "validate", "-c", str(path),
                              "--disable-hot-restart", "-l", "critical"],
                             capture_output=True, text=True, timeout=60)
        assert (remora_ok, out.returncode == 0) == (ok, ok), (http2, out.stdout + out.stderr)
