"""One parser of ``envoy.config.core.v3.Http2ProtocolOptions`` (proxy/http2/options.py) for
both places Envoy reads the message: the HTTP connection manager accepts every field remora
implements, a cluster only what the upstream HTTP/2 pool implements (the stream limit and
the windows); either refuses the rest by path, and a value out of Envoy's range gets the
same one-line error with the range to use from both. The HCM's bounds of every field are
held to Envoy 1.40's `--mode validate` (the cluster's are, in
tests/unit/proxy/http2/test_upstream_config.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http2.options import (
    DEFAULT_H2,
    DOWNSTREAM_FIELDS,
    UPSTREAM_FIELDS,
    Http2Options,
    parse_http2_options,
)
from remora.proxy.upstream.config import parse_cluster
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import addr

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _cluster(http2: dict[str, Any]) -> dict[str, Any]:
    """A STATIC cluster with the deprecated cluster-level http2_protocol_options."""
    return {"name": "c", "type": "STATIC", "http2_protocol_options": http2}


def _error(call: Any) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        call()
    return err.value


@pytest.mark.parametrize(("name", "value", "bounds"), [
    ("max_concurrent_streams", 0, "from 1 to 2147483647"),
    ("initial_stream_window_size", 65534, "from 65535 to 2147483647"),
    ("initial_connection_window_size", 2147483648, "from 65535 to 2147483647"),
])
def test_out_of_range_reads_the_same_from_the_hcm_and_a_cluster(
        name: str, value: int, bounds: str) -> None:
    hcm = _error(lambda: parse_http2_options(Fields({name: value}, "p")))
    cluster = _error(lambda: parse_cluster(_cluster({name: value}), "p"))
    assert hcm.path == f"p.{name}"
    assert cluster.path == f"p.http2_protocol_options.{name}"
    assert hcm.one_line() == (f"p.{name}: {value} is out of range "
                              f"(fix: give a value {bounds} (Envoy's bounds))")
    assert cluster.one_line().removeprefix("p.http2_protocol_options.") == \
        hcm.one_line().removeprefix("p.")


@pytest.mark.parametrize("name", sorted(DOWNSTREAM_FIELDS - UPSTREAM_FIELDS))
def test_a_cluster_refuses_what_only_the_hcm_implements(name: str) -> None:
    value: Any = True if name == "use_oghttp2_codec" else 1
    assert parse_http2_options(Fields({name: value}, "hcm")) is not None
    err = _error(lambda: parse_cluster(_cluster({name: value}), "c"))
    assert err.path == f"c.http2_protocol_options.{name}"
    assert "unknown or unsupported field" in err.message


def test_values_and_defaults() -> None:
    every = {"max_concurrent_streams": 7, "initial_stream_window_size": 65535,
             "initial_connection_window_size": 1048576, "hpack_table_size": 0,
             "max_outbound_control_frames": 5,
             "max_consecutive_inbound_frames_with_empty_payload": 3}
    hcm = parse_http2_options(Fields(every, "hcm"))
    assert [getattr(hcm, k) for k in every] == list(every.values())
    assert parse_http2_options(None) == parse_http2_options(Fields({}, "h")) == DEFAULT_H2
    # (connection_keepalive, a message, is covered by test_keepalive_envoy_parity.py)
    windows = {k: every[k] for k in sorted(UPSTREAM_FIELDS) if k in every}
    cluster = parse_cluster(_cluster(windows), "c").http_protocol_options
    assert cluster.protocol == "http2"
    # what a cluster does not accept keeps Envoy's default
    assert cluster.http2 == Http2Options(**windows)
    assert cluster.http2.hpack_table_size == DEFAULT_H2.hpack_table_size == 4096


@pytest.mark.envoy
@pytest.mark.skipif(shutil.which("envoy") is None, reason="needs envoy")
def test_envoy_agrees_on_the_hcm_ranges(tmp_path: Path) -> None:
    """Each field's bounds on the HCM: what remora accepts Envoy 1.40 accepts, what
    remora refuses as out of range Envoy's proto validation refuses too."""
    cases = [({"max_concurrent_streams": 2147483647, "initial_stream_window_size": 65535,
               "initial_connection_window_size": 2147483647, "hpack_table_size": 0,
               "max_outbound_control_frames": 1,
               "max_consecutive_inbound_frames_with_empty_payload": 0}, True),
             ({"hpack_table_size": 4294967295,
               "max_consecutive_inbound_frames_with_empty_payload": 4294967295}, True),
             ({"max_concurrent_streams": 0}, False),
             ({"max_concurrent_streams": 2147483648}, False),
             ({"initial_stream_window_size": 65534}, False),
             ({"initial_connection_window_size": 2147483648}, False),
             ({"max_outbound_control_frames": 0}, False)]
    for http2, ok in cases:
        try:
            parse_http2_options(Fields(http2, "h"))
            remora_ok = True
        except ConfigError:
            remora_ok = False
        hcm = {"@type": HCM, "stat_prefix": "x", "http2_protocol_options": http2,
               "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                   {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
               "http_filters": [{"name": "envoy.filters.http.router",
                                 "typed_config": {"@type": ROUTER}}]}
        listener = {"name": "l", "address": addr("127.0.0.1", 10000), "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": hcm}]}]}
        envoy_ok, said = lp.envoy_validates({"static_resources": {"listeners": [listener]}},
                                            tmp_path / "b.json")
        assert (remora_ok, envoy_ok) == (ok, ok), (http2, said)
