"""An endpoint that leaves an EDS cluster takes its pooled upstream connections with it,
held to a real Envoy 1.40 on loopback: one bootstrap, run by `envoy` and by `remora proxy`.

Envoy drains a removed host's connection pools (updateClusterMembership ->
drainOrCloseConnPools): its idle HTTP/1.1 connections are closed at once. remora picks the
host per request, so nothing would ever ask for those connections again; without the drain
they stayed open (to a pod that failed readiness but still runs, for good).

Two endpoints A and B behind ROUND_ROBIN, one kept-alive HTTP/1.1 request to each (both
upstream connections then idle), then the EDS file is replaced by one naming A only: B's
connection is closed by the proxy within a few seconds, A's stays open and serves the next
requests. Needs the envoy binary (marker `envoy`); no root."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import free_port, write_atomic

pytestmark = pytest.mark.envoy

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
      "HttpConnectionManager"
CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cla(version: str, *ports: int) -> dict[str, Any]:
    return {"version_info": version, "resources": [{
        "@type": CLA, "cluster_name": "svc",
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(p)}} for p in ports]}]}]}


def _bootstrap(listen: int, admin: int, eds: Path) -> dict[str, Any]:
    hcm = {"@type": HCM, "stat_prefix": "eds", "codec_type": "AUTO",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "route": {"cluster": "svc"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    # (a file-based EDS config needs the node's id and cluster on Envoy)
    return {"node": {"id": "eds-test", "cluster": "eds-test"},
            "admin": {"address": _addr(admin)},
            "static_resources": {
                "listeners": [{"name": "http", "address": _addr(listen), "filter_chains": [
                    {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                  "typed_config": hcm}]}]}],
                "clusters": [{"name": "svc", "type": "EDS", "connect_timeout": "2s",
                              "eds_cluster_config": {"eds_config": {
                                  "path_config_source": {"path": str(eds)}}}}]}}


class _Backend:
    """A kept-alive HTTP/1.1 upstream that answers its name and records when each of its
    connections was closed by the peer."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.closed: list[float] = []
        self.accepted = 0
        self.srv = lp.thread_server(self._serve, threaded=True)
        self.port = int(self.srv.getsockname()[1])

    def _serve(self, conn: socket.socket) -> None:
        self.accepted += 1
        for _ in lp.request_heads(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(self.name), self.name))
        self.closed.append(time.monotonic())  # the proxy closed it


def _get(s: socket.socket) -> bytes:
    s.sendall(b"GET / HTTP/1.1\r\nhost: eds.test\r\n\r\n")
    f = s.makefile("rb")
    assert f.readline().split()[1] == b"200"
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return f.read(length)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("eds-removed")
    found: dict[str, dict[str, Any]] = {}
    for kind in ph.KINDS:
        a, b = _Backend(b"A"), _Backend(b"B")
        try:
            listen, admin = free_port(), free_port()
            eds, cfg = tmp / f"{kind}-eds.json", tmp / f"{kind}.json"
            write_atomic(eds, _cla("1", a.port, b.port))
            cfg.write_text(json.dumps(_bootstrap(listen, admin, eds)))
            with lp.loopback_proxy(kind, cfg, listen), \
                    socket.create_connection(("127.0.0.1", listen), timeout=10) as s:
                first = {_get(s), _get(s)}  # round robin: one request to each host
                write_atomic(eds, _cla("2", a.port))
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and not b.closed:
                    time.sleep(0.05)
                after = [_get(s) for _ in range(3)]
                found[kind] = {"first": first, "b_closed": bool(b.closed),
                               "a_closed": bool(a.closed), "after": after,
                               "a_accepted": a.accepted}
        finally:
            a.srv.close()
            b.srv.close()
    yield found


@pytest.mark.parametrize("kind", ph.KINDS)
def test_removed_endpoint_connection_is_closed(outcomes: dict[str, dict[str, Any]],
                                               kind: str) -> None:
    got = outcomes[kind]
    assert got["first"] == {b"A", b"B"}, got
    assert got["b_closed"], got  # the proxy closed its idle connection to the removed host
    assert not got["a_closed"] and got["after"] == [b"A"] * 3, got
    assert got["a_accepted"] == 1, got  # A's kept connection served the rest
