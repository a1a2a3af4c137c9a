"""Path normalization with every knob on, held to Envoy 1.40: normalize_path, merge_slashes
and path_with_escaped_slashes_action UNESCAPE_AND_FORWARD, applied in Envoy's order
(ConnectionManagerUtility::maybeNormalizePath: escaped slashes, then normalization, then
merging), so that a %2F unescaped next to a "/" is merged too. The echo backend answers
with the request line it received; both proxies get the same requests."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.http2 import grpc_harness as gh
from tests.unit.proxy.proxy_helpers import free_port, hcm_bootstrap, static_cluster

PATHS = {
    "dots-doubles-escapes": b"/a/../b//c/%2Fd%2fe",
    "escaped-at-start": b"/%2F%2Fx",
    "backslash": b"/a/%5Cb/../c",
    "dot-escaped": b"/a/%2E%2E/b",
    "query-kept": b"/a//b/%2F?x=%2F//",
}


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, bytes]]]:
    tmp = tmp_path_factory.mktemp("pathnorm")
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": gh.HCM, "stat_prefix": "pn", "normalize_path": True, "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "echo", "timeout": "0s"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": gh.ROUTER}}]}}
    with lp.echo_backend() as echo:
        found: dict[str, dict[str, bytes]] = {}
        for kind in ph.KINDS:
            port, admin = free_port(), free_port()
            cfg = tmp / f"{kind}.json"
            cfg.write_text(json.dumps(hcm_bootstrap(hcm, port, admin,
                                                    [static_cluster("echo", echo)])))
            with lp.loopback_proxy(kind, cfg, port):
                found[kind] = {}
                for case, path in PATHS.items():
                    out = lp.exchange_closed(port, b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
                    head, _, body = out.partition(b"\r\n\r\n")
                    found[kind][case] = head.split(b"\r\n")[0] + b" | " + body.split(b"\r\n")[0]
        yield found


@pytest.mark.parametrize("case", list(PATHS))
def test_the_backend_sees_the_path_envoy_forwards(seen: dict[str, dict[str, bytes]],
                                                  case: str) -> None:
    assert seen["remora"][case] == seen["envoy"][case]


def test_an_unescaped_slash_is_merged(seen: dict[str, dict[str, bytes]]) -> None:
    assert seen["envoy"]["dots-doubles-escapes"].endswith(b"GET /b/c/d/e HTTP/1.1")
