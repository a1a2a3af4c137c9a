"""The load balancer decides every request, not only every new upstream connection, held to
a real Envoy 1.40 on loopback: one bootstrap, run by `envoy` and by `remora proxy`
(concurrency 1 both).

Envoy's router asks the cluster for a host per request (chooseHost) and then for a
connection in that host's pool, so a client's sequential requests on one kept-alive
downstream connection are spread over the endpoints even though every upstream connection
stays open. remora kept one pool per cluster and reused its idle connection without asking
the load balancer, so all those requests went to the host of the first connection.

Each case sends its requests one after another on one downstream connection (HTTP/1.1 with
keep-alive, or HTTP/2 with one stream at a time: `h2load -c 1 -m 1`) and reads which host
served each from the access log (%UPSTREAM_HOST%):
- ROUND_ROBIN over three HTTP/1.1 hosts: a rotation, each host 4 of 12;
- load_balancing_weight 3:1 (Envoy's EDF schedule): 40 requests, the light host 10 of them,
  give or take one (each proxy starts its schedule at a random point);
- LEAST_REQUEST over two hosts (P2C among hosts with no request in flight): both serve;
- ROUND_ROBIN over two HTTP/2 upstreams (http2_protocol_options): alternating;
- the same rotation for an HTTP/2 downstream.
Needs the envoy binary (marker `envoy`) and h2load; no root."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.http2 import upstream_setup as h2up
from tests.unit.proxy.proxy_helpers import free_port

pytestmark = pytest.mark.envoy

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
      "HttpConnectionManager"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name: str, ports: list[tuple[int, int]], policy: str = "ROUND_ROBIN",
             **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "2s", "lb_policy": policy,
            **extra,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _addr(port)}, "load_balancing_weight": weight}
                for port, weight in ports]}]}}


def _bootstrap(listen: int, admin: int, log: Path, h1: list[int],
               h2: list[int]) -> dict[str, Any]:
    routes = [{"match": {"prefix": f"/{name}"}, "route": {"cluster": name}}
              for name in ("rr", "w", "lr", "h2")]
    hcm = {"@type": HCM, "stat_prefix": "lb", "codec_type": "AUTO",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                               "routes": routes}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
           "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
               "@type": FILE_LOG, "path": str(log),
               "log_format": {"text_format_source": {
                   "inline_string": "%REQ(:PATH)% %UPSTREAM_HOST%\n"}}}}]}
    return {"admin": {"address": _addr(admin)},
            "static_resources": {
                "listeners": [{"name": "http", "address": _addr(listen),
                               "filter_chains": [{"filters": [
                                   {"name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm}]}]}],
                "clusters": [
                    _cluster("rr", [(p, 1) for p in h1]),
                    _cluster("w", [(h1[0], 3), (h1[1], 1)]),
                    _cluster("lr", [(p, 1) for p in h1[:2]], "LEAST_REQUEST"),
                    _cluster("h2", [(p, 1) for p in h2],
                             typed_extension_protocol_options=h2up.h2_options())]}}


def _sequential_h1(port: int, paths: list[str]) -> None:
    """PATHS one after another on one kept-alive HTTP/1.1 connection, each answered 200."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        for path in paths:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: lb.test\r\n\r\n".encode())
            status = f.readline()
            assert status.split()[1] == b"200", (path, status)
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            f.read(length)


def _sequential_h2(port: int, path: str, n: int) -> None:
    """N requests for PATH on one HTTP/2 connection, one stream at a time."""
    out = subprocess.run(["h2load", "-n", str(n), "-c", "1", "-m", "1",
                          f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"{n} succeeded" in out and "2xx" in out, out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, list[str]]]]:
    """kind -> path prefix -> the upstream host of each request, in order."""
    if shutil.which("h2load") is None:
        pytest.fail("h2load is missing (apt package nghttp2-client; scripts/install has it)")
    tmp = tmp_path_factory.mktemp("load-balancing")
    found: dict[str, dict[str, list[str]]] = {}
    with ExitStack() as stack:
        h1 = [stack.enter_context(lp.echo_backend()) for _ in range(3)]
        h2 = [free_port(), free_port()]
        for port in h2:
            stack.enter_context(h2up.backend(port))
        for kind in ph.KINDS:
            listen, admin = free_port(), free_port()
            log, cfg = tmp / f"{kind}.log", tmp / f"{kind}.json"
            cfg.write_text(json.dumps(_bootstrap(listen, admin, log, h1, h2)))
            with lp.loopback_proxy(kind, cfg, listen):
                _sequential_h1(listen, ["/rr"] * 12 + ["/w"] * 40 + ["/lr"] * 20
                               + ["/h2"] * 8)
                _sequential_h2(listen, "/rr/h2down", 12)
                lines = lp.wait_lines(log, 12 + 40 + 20 + 8 + 12)
            by_path: dict[str, list[str]] = {}
            for line in lines:
                path, host = line.split()
                by_path.setdefault(path, []).append(host)
            found[kind] = by_path
    yield found


def _hosts(served: dict[str, dict[str, list[str]]], kind: str, path: str) -> list[str]:
    return served[kind][path]


@pytest.mark.parametrize("kind", ph.KINDS)
def test_round_robin_per_request_on_one_kept_alive_connection(
        served: dict[str, dict[str, list[str]]], kind: str) -> None:
    hosts = _hosts(served, kind, "/rr")
    assert len(hosts) == 12
    assert sorted(Counter(hosts).values()) == [4, 4, 4], hosts
    # a rotation: every three consecutive requests went to three different hosts
    assert all(len(set(hosts[i:i + 3])) == 3 for i in range(10)), hosts


@pytest.mark.parametrize("kind", ph.KINDS)
def test_weights_per_request_on_one_kept_alive_connection(
        served: dict[str, dict[str, list[str]]], kind: str) -> None:
    hosts = _hosts(served, kind, "/w")
    counts = Counter(hosts)
    assert len(counts) == 2 and sum(counts.values()) == 40, counts
    assert 9 <= min(counts.values()) <= 11, counts  # weight 1 of 4: ~10 of 40


@pytest.mark.parametrize("kind", ph.KINDS)
def test_least_request_spreads_sequential_requests(
        served: dict[str, dict[str, list[str]]], kind: str) -> None:
    counts = Counter(_hosts(served, kind, "/lr"))
    # P2C over two idle hosts picks each with probability 1/2: all 20 on one host
    # happens once in 2**19 runs
    assert len(counts) == 2 and sum(counts.values()) == 20, counts


@pytest.mark.parametrize("kind", ph.KINDS)
def test_round_robin_over_http2_upstreams(
        served: dict[str, dict[str, list[str]]], kind: str) -> None:
    hosts = _hosts(served, kind, "/h2")
    assert len(hosts) == 8 and len(set(hosts)) == 2, hosts
    assert all(a != b for a, b in pairwise(hosts)), hosts


@pytest.mark.parametrize("kind", ph.KINDS)
def test_round_robin_for_an_http2_downstream(
        served: dict[str, dict[str, list[str]]], kind: str) -> None:
    hosts = _hosts(served, kind, "/rr/h2down")
    assert len(hosts) == 12
    assert sorted(Counter(hosts).values()) == [4, 4, 4], hosts
