"""Endpoints with ``additional_addresses`` (istiod's dual-stack endpoints) held to a real
Envoy 1.40 on loopback: one bootstrap, run by `envoy` and by `remora proxy`, a TCP client
through a tcp_proxy listener to each cluster, and the access log's UPSTREAM_HOST and the
family of UPSTREAM_LOCAL_ADDRESS compared.

- ``first``: ``address`` 127.0.0.1 answers, ``additional_addresses`` [::1] too: the
  connection is IPv4 (Happy Eyeballs tries ``address`` first; the other family is only a
  fallback).
- ``fallback``: ``address`` 127.0.0.1 refuses: the connection goes to [::1] at once, and
  UPSTREAM_HOST still names the host by its ``address``.
Needs the envoy binary (marker `envoy`); no root."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import FILE_LOG, TCP_PROXY, addr, free_port

pytestmark = pytest.mark.envoy


def _echo(family: socket.AddressFamily, host: str) -> socket.socket:
    def echo(conn: socket.socket) -> None:
        while chunk := conn.recv(65536):
            conn.sendall(chunk)

    return lp.thread_server(echo, family, host)


def _bootstrap(ports: dict[str, int], log: Path) -> dict[str, Any]:
    def listener(name: str) -> dict[str, Any]:
        return {"name": name, "address": addr("127.0.0.1", ports[name]),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {"@type": TCP_PROXY, "stat_prefix": name, "cluster": name,
                                     "access_log": [{
                                         "name": "envoy.access_loggers.file",
                                         "typed_config": {
                                             "@type": FILE_LOG, "path": str(log),
                                             "log_format": {"text_format_source": {
                                                 "inline_string": f"{name} %UPSTREAM_HOST% "
                                                 "%UPSTREAM_LOCAL_ADDRESS%\n"}}}}]}}]}]}

    def cluster(name: str, port4: int) -> dict[str, Any]:
        return {"name": name, "type": "STATIC", "connect_timeout": "2s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": addr("127.0.0.1", port4),
                                  "additional_addresses": [
                                      {"address": addr("::1", ports["up6"])}]}}]}]}}

    return {"admin": {"address": addr("127.0.0.1", ports["admin"])},
            "static_resources": {
                "listeners": [listener("first"), listener("fallback")],
                "clusters": [cluster("first", ports["up4"]),
                             cluster("fallback", ports["dead"])]}}


def _roundtrip(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"hello")
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(100):
            out += chunk
        return out


def _shape(line: str, ports: dict[str, int]) -> str:
    """`NAME UPSTREAM_HOST LOCAL_FAMILY` with the ports named."""
    name, host, local = line.split()
    for key in ("up4", "dead"):
        host = host.replace(f":{ports[key]}", f":{key.upper()}")
    return f"{name} {host} {'IPv6' if local.startswith('[') else 'IPv4'}"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[str]]]:
    tmp = tmp_path_factory.mktemp("happy-eyeballs")
    up4, up6 = _echo(socket.AF_INET, "127.0.0.1"), _echo(socket.AF_INET6, "::1")
    found: dict[str, list[str]] = {}
    try:
        for kind in ph.KINDS:
            ports = {n: free_port() for n in ("first", "fallback", "admin", "dead")}
            ports["up4"], ports["up6"] = int(up4.getsockname()[1]), int(up6.getsockname()[1])
            log, cfg = tmp / f"{kind}.log", tmp / f"{kind}.json"
            cfg.write_text(json.dumps(_bootstrap(ports, log)))
            with lp.loopback_proxy(kind, cfg, ports["fallback"]):
                assert _roundtrip(ports["first"]) == b"hello"
                assert _roundtrip(ports["fallback"]) == b"hello"
                lines = lp.wait_lines(log, 3)
            found[kind] = sorted(_shape(line, ports) for line in lines)
        yield found
    finally:
        up4.close()
        up6.close()


def test_the_address_first_the_other_family_as_fallback(
        outcomes: dict[str, list[str]]) -> None:
    # (the harness's readiness probe of the fallback listener is a connection too)
    assert set(outcomes["envoy"]) == {"fallback 127.0.0.1:DEAD IPv6", "first 127.0.0.1:UP4 IPv4"}
    assert outcomes["remora"] == outcomes["envoy"]
