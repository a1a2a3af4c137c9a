"""Admin ``GET /clusters`` (text and ``?format=json``) held to a real Envoy 1.40 on loopback:
one bootstrap run by `envoy` and by `remora proxy`, the same traffic through both, then the
whole output compared -- thresholds of both priorities, added_via_api, and per host the
stats (real counts: a success, a 503, connect failures with a retry, a TCP connection),
hostname, locality, weight, priority and health. Needs the envoy binary; no root."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import TCP_PROXY, addr, free_port

pytestmark = pytest.mark.envoy

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _answering(status: bytes) -> socket.socket:
    """An HTTP/1.1 upstream answering every request with STATUS, then closing."""
    def answer(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
            data += chunk
        conn.sendall(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\n"
                     b"connection: close\r\n\r\nok")

    return lp.thread_server(answer)


def _cluster(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": addr("127.0.0.1", port)}}]}]},
            **extra}


def _bootstrap(ports: dict[str, int]) -> dict[str, Any]:
    routes = [{"match": {"prefix": f"/{name}"}, "route": {"cluster": name, **extra}}
              for name, extra in (("ok", {}), ("err", {}), ("dead", {"retry_policy": {
                  "retry_on": "connect-failure", "num_retries": 1}}))]
    hcm = {"@type": HCM, "stat_prefix": "h",
           "route_config": {"name": "r", "virtual_hosts": [
               {"name": "v", "domains": ["*"], "routes": routes}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": ROUTER}}]}
    ok = _cluster("ok", ports["ok"], circuit_breakers={"thresholds": [
        {"max_connections": 7, "max_retries": 2},
        {"priority": "HIGH", "max_requests": 9, "max_pending_requests": 11}]})
    # a host with a hostname, a locality, a weight and priority 0 of two levels
    ok["load_assignment"]["endpoints"] = [
        {"locality": {"region": "r1", "zone": "z1", "sub_zone": "s1"}, "lb_endpoints": [
            {"endpoint": {"address": addr("127.0.0.1", ports["ok"]), "hostname": "ok.example"},
             "load_balancing_weight": 5}]},
        {"priority": 1, "lb_endpoints": [
            {"endpoint": {"address": addr("127.0.0.1", ports["spare"])},
             "health_status": "UNHEALTHY"}]}]
    return {
        "admin": {"address": addr("127.0.0.1", ports["admin"])},
        "static_resources": {
            "listeners": [
                {"name": "web", "address": addr("127.0.0.1", ports["web"]),
                 "filter_chains": [{"filters": [{
                     "name": "envoy.filters.network.http_connection_manager",
                     "typed_config": hcm}]}]},
                {"name": "tcp", "address": addr("127.0.0.1", ports["tcp"]),
                 "filter_chains": [{"filters": [{
                     "name": "envoy.filters.network.tcp_proxy",
                     "typed_config": {"@type": TCP_PROXY, "stat_prefix": "t",
                                      "cluster": "raw"}}]}]}],
            "clusters": [ok, _cluster("err", ports["err"]), _cluster("dead", ports["dead"]),
                         _cluster("raw", ports["ok"]),
                         {"name": "od", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                          "connect_timeout": "1s"}]}}


def _get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(5)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out.split(b"\r\n", 1)[0]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("admin-clusters")
    ok, err = _answering(b"200 OK"), _answering(b"503 Service Unavailable")
    found: dict[str, dict[str, Any]] = {}
    try:
        for kind in ph.KINDS:
            ports = {n: free_port() for n in ("web", "tcp", "admin", "dead", "spare")}
            ports["ok"], ports["err"] = ok.getsockname()[1], err.getsockname()[1]
            cfg = tmp / f"{kind}.json"
            cfg.write_text(json.dumps(_bootstrap(ports)))
            with lp.loopback_proxy(kind, cfg, ports["web"]):
                statuses = [_get(ports["web"], p) for p in ("/ok", "/ok", "/err", "/dead")]
                with socket.create_connection(("127.0.0.1", ports["tcp"])) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                    s.settimeout(5)
                    s.recv(100)
                    open_text = lp.admin_text(ports["admin"], "/clusters")  # TCP one active
                time.sleep(0.5)  # closes reach the proxy and its pool
                text = lp.admin_text(ports["admin"], "/clusters")
                js = lp.admin_text(ports["admin"], "/clusters?format=json")
            for name, port in ports.items():
                text, js, open_text = (t.replace(f":{port}:", f":{name.upper()}:")
                                       .replace(f": {port}\n", f': "{name.upper()}"\n')
                                       for t in (text, js, open_text))
            found[kind] = {"statuses": statuses, "text": text, "json": json.loads(js),
                           "open": [ln for ln in open_text.splitlines()
                                    if ln.startswith("raw::") and "::rq_" in ln]}
        yield found
    finally:
        ok.close()
        err.close()


def _by_name(js: dict[str, Any]) -> dict[str, Any]:
    return {c["name"]: c for c in js["cluster_statuses"]}


def test_clusters_text_same_as_envoy(outputs: dict[str, dict[str, Any]]) -> None:
    envoy, remora = outputs["envoy"], outputs["remora"]
    assert envoy["statuses"] == [b"HTTP/1.1 200 OK"] * 2 + [
        b"HTTP/1.1 503 Service Unavailable"] * 2
    assert remora["statuses"] == envoy["statuses"]
    lines = set(envoy["text"].splitlines())
    # the counts the traffic made, so the comparison below is not of zeros
    assert {"ok::127.0.0.1:OK::rq_success::2", "ok::127.0.0.1:OK::rq_total::2",
            "err::127.0.0.1:ERR::rq_error::1", "dead::127.0.0.1:DEAD::rq_error::2",
            "dead::127.0.0.1:DEAD::cx_connect_fail::2", "raw::127.0.0.1:OK::rq_total::1",
            "ok::high_priority::max_requests::9", "ok::127.0.0.1:OK::hostname::ok.example",
            "ok::127.0.0.1:SPARE::health_flags::/failed_eds_health"} <= lines
    assert sorted(remora["text"].splitlines()) == sorted(envoy["text"].splitlines())
    assert "raw::127.0.0.1:OK::rq_active::1" in envoy["open"]
    assert remora["open"] == envoy["open"]


def test_clusters_json_same_as_envoy(outputs: dict[str, dict[str, Any]]) -> None:
    assert _by_name(outputs["remora"]["json"]) == _by_name(outputs["envoy"]["json"])
