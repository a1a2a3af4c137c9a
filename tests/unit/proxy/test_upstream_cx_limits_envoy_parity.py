"""The cluster counters of an upstream connection closed for a limit of its cluster's
common_http_protocol_options -- upstream_cx_max_requests (max_requests_per_connection),
upstream_cx_idle_timeout (idle_timeout), upstream_cx_max_duration_reached
(max_connection_duration) -- and of one the upstream closes with notice,
upstream_cx_close_notify (an HTTP/1.1 Connection: close, an HTTP/2 GOAWAY), held to a real
Envoy 1.40 on loopback, for HTTP/1.1 and HTTP/2 upstreams.

One bootstrap (an HTTP/1.1 listener whose x-cluster header picks the cluster; per
protocol a cluster with each limit), run by `envoy` and by `remora proxy` side by side
(each_kind), the same requests: three in a row (the limit of 2 closes the first
connection), or two 0.7 s apart (the first connection's idle timeout or its age of
0.3 s closes it before the second). The counters are read right after the second
requests: an HTTP/1.1 connection past its idle timeout or age is found and counted by
remora's pool when it next looks at the pool (and an HTTP/2 one past its age when it next
asks it for a stream), where Envoy's timers close and count it at the time, so before the
next request the two agree, not in between. Needs the envoy binary (marker `envoy`); no root,
loopback only."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.http2 import upstream_setup as us
from tests.unit.proxy.proxy_helpers import free_port

pytestmark = pytest.mark.envoy

LIMITS = {"maxrq": {"max_requests_per_connection": 2},
          "idle": {"idle_timeout": "0.3s"},
          "age": {"max_connection_duration": "0.3s"},
          # no limit: the upstream's own close notice (h1-notify answers Connection: close,
          # h2-notify gets /goaway: an answer, then GOAWAY)
          "notify": {}}
STATS = ("upstream_cx_total", "upstream_cx_max_requests", "upstream_cx_idle_timeout",
         "upstream_cx_max_duration_reached", "upstream_cx_close_notify")


def _serve_close(conn: socket.socket) -> None:
    conn.settimeout(5)
    for _ in lp.request_heads(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
        return


def _cluster(name: str, port: int, limit: dict[str, Any], h2: bool) -> dict[str, Any]:
    opts: dict[str, Any] = {"common_http_protocol_options": limit}
    opts["explicit_http_config"] = ({"http2_protocol_options": {}} if h2
                                    else {"http_protocol_options": {}})
    return us.cluster(name, port, typed_extension_protocol_options={us.HPO: {
        "@type": "type.googleapis.com/" + us.HPO, **opts}})


def _bootstrap(port: int, admin: int, h1: int, h2: int, close: int) -> dict[str, Any]:
    names = [f"{proto}-{limit}" for proto in ("h1", "h2") for limit in LIMITS]
    routes = [{"match": {"prefix": "/", "headers": [{"name": "x-cluster",
                                                    "string_match": {"exact": n}}]},
               "route": {"cluster": n}} for n in names]
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": us.HCM, "stat_prefix": "in",
        "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
    clusters = [_cluster(n, h2 if n.startswith("h2") else close if n == "h1-notify" else h1,
                         LIMITS[n.split("-")[1]], n.startswith("h2")) for n in names]
    return {"admin": {"address": us._addr(admin)},
            "static_resources": {
                "listeners": [{"name": "l", "address": us._addr(port),
                               "filter_chains": [{"filters": [hcm]}]}],
                "clusters": clusters}}


def _get(port: int, cluster: str, path: str = "/size/2") -> bytes:
    return lp.exchange_closed(port, f"GET {path} HTTP/1.1\r\nHost: a\r\nx-cluster: {cluster}"
                              f"\r\n\r\n".encode()).split(b"\r\n", 1)[0]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("upstream-cx-limits")

    def story(kind: str) -> dict[str, Any]:
        port, admin, h2 = free_port(), free_port(), free_port()
        cfg = tmp / f"{kind}.json"
        close = lp.thread_server(_serve_close)
        with lp.echo_backend() as h1, us.backend(h2):
            cfg.write_text(json.dumps(_bootstrap(port, admin, h1, h2,
                                                 close.getsockname()[1])))
            with lp.loopback_proxy(kind, cfg, port):
                heads = [_get(port, "h1-notify"), _get(port, "h2-notify", "/goaway")]
                for proto in ("h1", "h2"):
                    heads += [_get(port, f"{proto}-maxrq") for _ in range(3)]
                    for limit in ("idle", "age"):
                        heads.append(_get(port, f"{proto}-{limit}"))
                time.sleep(0.7)
                for proto in ("h1", "h2"):
                    for limit in ("idle", "age"):
                        heads.append(_get(port, f"{proto}-{limit}"))
                time.sleep(0.05)  # (well within the second connections' 0.3 s)
                values = {}
                for line in lp.admin_text(admin, "/stats").splitlines():
                    name, _, value = line.partition(": ")
                    parts = name.split(".")
                    if len(parts) == 3 and parts[0] == "cluster" and parts[2] in STATS:
                        values[name] = int(value)
        close.close()
        return {"heads": heads, "stats": values}

    return lp.each_kind(story)


def test_counted_as_envoy_counts(outcomes: dict[str, dict[str, Any]]) -> None:
    assert outcomes["remora"] == outcomes["envoy"]


def test_what_envoy_counts(outcomes: dict[str, dict[str, Any]]) -> None:
    stats = outcomes["envoy"]["stats"]
    for proto in ("h1", "h2"):
        assert stats[f"cluster.{proto}-maxrq.upstream_cx_max_requests"] == 1
        assert stats[f"cluster.{proto}-maxrq.upstream_cx_total"] == 2
        assert stats[f"cluster.{proto}-idle.upstream_cx_idle_timeout"] == 1
        assert stats[f"cluster.{proto}-age.upstream_cx_max_duration_reached"] == 1
        assert stats[f"cluster.{proto}-notify.upstream_cx_close_notify"] == 1
        assert stats[f"cluster.{proto}-maxrq.upstream_cx_close_notify"] == 0
