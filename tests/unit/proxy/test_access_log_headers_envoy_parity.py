"""%REQ(X)% and %RESP(X)% of a header that came on several lines, held to a real Envoy 1.40
on loopback. Envoy's header map joins a repeated *inline* header (user-agent, vary) into
one entry and keeps any other (x-custom, set-cookie, cookie) as separate entries; the
access log's HeaderFormatter prints ``get(name)[0]``, so the joined value of an inline
one and the *first* value of any other, also where a route's headers_to_add appended a
line to one the request or response already had.

One config (the reference sidecar HCM with two access logs: a text format, which remora
compiles into one function, and a json_format, which it renders operator by operator; a
route adding request and response headers; a backend answering repeated response
headers), run once by `envoy` and once by `remora proxy`, the same HTTP/1.1 and HTTP/2
requests to both, the lines compared. Needs the envoy binary (marker `envoy`); no root,
loopback only."""

from __future__ import annotations

import copy
import json
import socket
import time
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

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
FIELDS = {
    "resp_custom": "%RESP(X-CUSTOM)%", "resp_vary": "%RESP(VARY)%",
    "resp_cookie": "%RESP(SET-COOKIE)%", "resp_empty_first": "%RESP(X-EMPTY)%",
    "resp_added": "%RESP(X-RADDED)%", "resp_alt": "%RESP(X-NONE?X-CUSTOM)%",
    "req_custom": "%REQ(X-R)%", "req_ua": "%REQ(USER-AGENT)%", "req_cookie": "%REQ(COOKIE)%",
    "req_empty_first": "%REQ(X-E)%", "req_added": "%REQ(X-ADDED)%",
    "req_alt": "%REQ(X-NONE?X-R)%", "req_short": "%REQ(X-R):1%",
}
TEXT = " ".join(f"{k}={v}" for k, v in FIELDS.items()) + "\n"

REQUEST_LINES = [("x-r", "r1"), ("user-agent", "u1"), ("x-r", "r2"), ("user-agent", "u2"),
                 ("x-e", ""), ("x-e", "e2"), ("x-added", "1")]
H1_REQUEST = (b"GET /p HTTP/1.1\r\nHost: a\r\n"
              + b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in REQUEST_LINES)
              + b"Cookie: k1\r\nCookie: k2\r\n\r\n")


def _serve(conn: socket.socket) -> None:
    """The backend: each request answered with repeated response headers."""
    conn.settimeout(5)
    for _ in lp.request_heads(conn):
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Custom: c1\r\nVary: v1\r\nX-Custom: c2\r\n"
                         b"Vary: v2\r\nSet-Cookie: s1\r\nSet-Cookie: s2\r\nX-Empty: \r\n"
                         b"X-Empty: e2\r\nX-RAdded: a1\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return


def _h2_request(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        c = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        c.initiate_connection()
        c.send_headers(1, [(":method", "GET"), (":path", "/p"), (":authority", "a"),
                           (":scheme", "http"), *REQUEST_LINES], end_stream=True)
        s.sendall(c.data_to_send())
        while data := s.recv(65536):
            if any(isinstance(ev, h2.events.StreamEnded) for ev in c.receive_data(data)):
                return
            s.sendall(c.data_to_send())
    raise AssertionError("no response")


def _config(template: dict[str, Any], port: int, admin: int, text_log: Path, json_log: Path,
            backend: int) -> dict[str, Any]:
    hcm = copy.deepcopy(template)
    tc = hcm["typed_config"]
    tc["access_log"] = [
        {"name": "text", "typed_config": {"@type": FILE_LOG, "path": str(text_log),
                                          "log_format": {"text_format_source": {
                                              "inline_string": TEXT}}}},
        {"name": "json", "typed_config": {"@type": FILE_LOG, "path": str(json_log),
                                          "log_format": {"json_format": FIELDS}}}]
    route = tc["route_config"]["virtual_hosts"][0]["routes"][0]
    route["route"]["cluster"] = "b"
    route["request_headers_to_add"] = [{"header": {"key": "x-added", "value": "2"}}]
    route["response_headers_to_add"] = [{"header": {"key": "x-radded", "value": "a2"}}]
    return hcm_bootstrap(hcm, port, admin, [static_cluster("b", backend)])


@pytest.fixture(scope="module")
def lines(data_dir: Path, tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[dict[str, dict[str, list[str]]]]:
    ref = json.loads((data_dir / "reference/envoy-sidecar/server-redirect.json").read_text())
    template = ref["static_resources"]["listeners"][0]["filter_chains"][1]["filters"][0]
    tmp = tmp_path_factory.mktemp("log-headers")
    srv = lp.thread_server(_serve, threaded=True)
    try:
        found: dict[str, dict[str, list[str]]] = {}
        for kind in ph.KINDS:
            port, admin = free_port(), free_port()
            text_log, json_log = tmp / f"{kind}.txt", tmp / f"{kind}.json.log"
            cfg = tmp / f"{kind}.json"
            cfg.write_text(json.dumps(_config(template, port, admin, text_log, json_log,
                                              srv.getsockname()[1])))
            with lp.loopback_proxy(kind, cfg, port):
                lp.exchange_closed(port, H1_REQUEST)
                time.sleep(0.2)  # the HTTP/1.1 line first
                _h2_request(port)
                found[kind] = {"text": lp.wait_lines(text_log, 2),
                               "json": lp.wait_lines(json_log, 2)}
        yield found
    finally:
        srv.close()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_header_values_same_as_envoy(lines: dict[str, dict[str, list[str]]], fmt: str) -> None:
    assert len(lines["envoy"][fmt]) == 2
    assert lines["remora"][fmt] == lines["envoy"][fmt]


def test_what_envoy_logs(lines: dict[str, dict[str, list[str]]]) -> None:
    """The values the parity above is about (HTTP/1.1 request, then HTTP/2)."""
    h1, h2_line = (json.loads(line) for line in lines["envoy"]["json"])
    for logged in (h1, h2_line):
        assert logged["resp_custom"] == "c1" and logged["resp_vary"] == "v1,v2"
        assert logged["resp_cookie"] == "s1" and logged["resp_empty_first"] == ""
        assert logged["resp_added"] == "a1" and logged["resp_alt"] == "c1"
        assert logged["req_custom"] == "r1" and logged["req_ua"] == "u1,u2"
        assert logged["req_empty_first"] == "" and logged["req_added"] == "1"
        assert logged["req_alt"] == "r1" and logged["req_short"] == "r"
    assert h1["req_cookie"] == "k1"
