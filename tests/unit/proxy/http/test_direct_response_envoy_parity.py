"""A route's direct_response held to a real Envoy 1.40 on loopback: a 201 or 3xx one gets
a location header, the request's own URL (Envoy's router adds Http::Utility::newUri of the
request for these, RFC 7231 7.1.2), built from the request's scheme (an HTTP/2 client's
:scheme; on HTTP/1.1 the absolute-form target's, x-forwarded-proto, or the connection's),
its host and its (normalized) path; other statuses get none.

One config (the reference sidecar HCM with direct_response routes only), run once by
`envoy` and once by `remora proxy`, the same HTTP/1.1 and HTTP/2 (h2c) requests to both,
the response heads compared with dates and lengths masked. Needs the envoy binary (marker
`envoy`); no root, loopback only."""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import free_port, hcm_bootstrap, static_cluster

pytestmark = pytest.mark.envoy

STATUSES = (200, 201, 300, 301, 302, 304, 307, 399, 404)

# HTTP/1.1 requests by name (each sent with Connection: close)
H1 = {
    "201-query": b"GET /s201/x?q=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    "301-port-80": b"GET /s301 HTTP/1.1\r\nHost: a:80\r\n\r\n",
    "302-xfp-https-443": b"GET /s302 HTTP/1.1\r\nHost: a:443\r\nX-Forwarded-Proto: https\r\n\r\n",
    "302-xfp-HTTPS-443": b"GET /s302 HTTP/1.1\r\nHost: a:443\r\nX-Forwarded-Proto: HTTPS\r\n\r\n",
    "307-xfp-https-80": b"GET /s307 HTTP/1.1\r\nHost: a:80\r\nX-Forwarded-Proto: https\r\n\r\n",
    "302-xfp-other": b"GET /s302 HTTP/1.1\r\nHost: a:80\r\nX-Forwarded-Proto: foo\r\n\r\n",
    "304-ipv6-host": b"GET /s304 HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    "300": b"GET /s300 HTTP/1.1\r\nHost: a\r\n\r\n",
    "399": b"GET /s399 HTTP/1.1\r\nHost: a\r\n\r\n",
    "200": b"GET /s200 HTTP/1.1\r\nHost: a\r\n\r\n",
    "404": b"GET /s404 HTTP/1.1\r\nHost: a\r\n\r\n",
    "301-normalized": b"GET /s301/a/../b//c HTTP/1.1\r\nHost: a\r\n\r\n",
    "301-absolute": b"GET http://b:8080/s301/p HTTP/1.1\r\nHost: a\r\n\r\n",
    "302-absolute-https": b"GET https://b:443/s302/p HTTP/1.1\r\nHost: a\r\n\r\n",
    "301-headers-to-add": b"GET /add HTTP/1.1\r\nHost: a\r\n\r\n",
}

# HTTP/2 requests by name: (:authority, :scheme, path, more headers)
H2 = {
    "h2-302-https": ("a:443", "https", "/s302", []),
    "h2-302-https-xfp-http": ("a:443", "https", "/s302", [("x-forwarded-proto", "http")]),
    "h2-302-http-xfp-https": ("a:80", "http", "/s302", [("x-forwarded-proto", "https")]),
    "h2-201": ("a", "http", "/s201?x", []),
    "h2-200": ("a", "http", "/s200", []),
}


def _h2_head(port: int, authority: str, scheme: str, path: str,
             more: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One HTTP/2 request on a fresh h2c connection: its response head without date."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        c = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        c.initiate_connection()
        c.send_headers(1, [(":method", "GET"), (":path", path), (":authority", authority),
                           (":scheme", scheme), *more], end_stream=True)
        s.sendall(c.data_to_send())
        while data := s.recv(65536):
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    return [(str(n), str(v)) for n, v in ev.headers or [] if n != "date"]
            s.sendall(c.data_to_send())
    raise AssertionError("no response")


def _config(template: dict[str, Any], port: int, admin: int) -> dict[str, Any]:
    hcm = copy.deepcopy(template)
    tc = hcm["typed_config"]
    tc["access_log"] = []
    routes: list[dict[str, Any]] = [
        {"match": {"path": "/add"}, "direct_response": {"status": 301},
         "response_headers_to_add": [{"header": {"key": "x-added", "value": "1"}}]}]
    routes += [{"match": {"prefix": f"/s{status}"},
                "direct_response": {"status": status, "body": {"inline_string": "hi"}}}
               for status in STATUSES]
    tc["route_config"]["virtual_hosts"][0]["routes"] = routes
    return hcm_bootstrap(hcm, port, admin, [static_cluster("unused", 9)])


@pytest.fixture(scope="module")
def outcomes(data_dir: Path, tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[dict[str, dict[str, Any]]]:
    ref = json.loads((data_dir / "reference/envoy-sidecar/server-redirect.json").read_text())
    template = ref["static_resources"]["listeners"][0]["filter_chains"][1]["filters"][0]
    tmp = tmp_path_factory.mktemp("direct")
    found: dict[str, dict[str, Any]] = {}
    for kind in ph.KINDS:
        port, admin = free_port(), free_port()
        cfg = tmp / f"{kind}.json"
        cfg.write_text(json.dumps(_config(template, port, admin)))
        with lp.loopback_proxy(kind, cfg, port):
            got: dict[str, Any] = {
                name: lp.exchange_closed(port, request, lp.VOLATILE_MASKS)
                for name, request in H1.items()}
            got.update({name: _h2_head(port, *args) for name, args in H2.items()})
            found[kind] = got
    yield found


@pytest.mark.parametrize("case", [*H1, *H2])
def test_direct_response_same_as_envoy(outcomes: dict[str, dict[str, Any]], case: str) -> None:
    assert outcomes["remora"][case] == outcomes["envoy"][case]


def test_what_envoy_does(outcomes: dict[str, dict[str, Any]]) -> None:
    """The answers the parity above is about."""
    envoy = outcomes["envoy"]
    assert b"\r\nlocation: http://a/s201/x?q=1\r\n" in envoy["201-query"]
    assert b"\r\nlocation: http://a:80/s301\r\n" in envoy["301-port-80"]
    assert b"\r\nlocation: https://a:443/s302\r\n" in envoy["302-xfp-https-443"]
    assert b"\r\nlocation: https://a/s302\r\n" in envoy["302-xfp-HTTPS-443"]
    assert b"\r\nlocation: http://a/s301/b//c\r\n" in envoy["301-normalized"]
    assert b"\r\nlocation: http://b:8080/s301/p\r\n" in envoy["301-absolute"]
    assert envoy["301-headers-to-add"].startswith(
        b"HTTP/1.1 301 Moved Permanently\r\nlocation: http://a/add\r\nx-added: 1\r\n")
    for name in ("200", "404"):
        assert b"location" not in envoy[name]
    assert ("location", "https://a:443/s302") in envoy["h2-302-https-xfp-http"]
    assert ("location", "http://a:80/s302") in envoy["h2-302-http-xfp-https"]
    assert not any(n == "location" for n, _ in envoy["h2-200"])
