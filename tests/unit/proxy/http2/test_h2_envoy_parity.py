"""HTTP/2 downstream held to a real Envoy 1.40 on loopback (no root): one config (an HCM with
codec_type AUTO in front of an HTTP/1.1 echo app), run by `envoy` and by `remora proxy`;
the same HTTP/2 exchanges (raw h2 client with prior knowledge, and curl) sent to both; the
status, response headers, body, stream resets, GOAWAYs and access-log lines compared
(dates, ids, ports and durations masked)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from h2.errors import ErrorCodes

from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.http.test_envoy_parity import ECHO
from tests.unit.proxy.http2.h2client import H2Client
from tests.unit.proxy.proxy_helpers import addr, free_port, static_cluster

pytestmark = pytest.mark.envoy

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
      "HttpConnectionManager"
LOG_FORMAT = ("%PROTOCOL%|%REQ(:METHOD)%|%REQ(:PATH)%|%REQ(:AUTHORITY)%|%RESPONSE_CODE%|"
              "%RESPONSE_FLAGS%|%RESPONSE_CODE_DETAILS%|%BYTES_RECEIVED%|%BYTES_SENT%|"
              "%UPSTREAM_CLUSTER%|%ROUTE_NAME%\n")
_MASKS = [
    (rb"date: [^\r\n]*", b"date: D"),
    (rb"x-envoy-upstream-service-time: \d+", b"x-envoy-upstream-service-time: N"),
    (rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", b"UUID"),
    (rb"127\.0\.0\.1:\d+", b"127.0.0.1:P"),
]


def _config(port: int, admin: int, log: Path, echo: int) -> dict[str, Any]:
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": "in", "codec_type": "AUTO",
        "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                     "FileAccessLog", "path": str(log),
            "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}}}}],
        "route_config": {"virtual_hosts": [
            {"name": "nr", "domains": ["nr.example"], "routes": [
                {"match": {"path": "/only"}, "route": {"cluster": "echo"}}]},
            {"name": "a", "domains": ["*"], "routes": [
                {"name": "to", "match": {"prefix": "/slow"},
                 "route": {"cluster": "echo", "timeout": "0.5s"}},
                {"name": "default", "match": {"prefix": "/"},
                 "route": {"cluster": "echo"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
    return {"admin": {"address": addr("127.0.0.1", admin)},
            "static_resources": {
                "listeners": [{"name": "l", "address": addr("127.0.0.1", port),
                               "filter_chains": [{"filters": [hcm]}]}],
                "clusters": [static_cluster("echo", echo)]}}


def _mask(data: bytes) -> bytes:
    for pattern, repl in _MASKS:
        data = re.sub(pattern, repl, data)
    return data


def _outcome(c: H2Client, sid: int) -> dict[str, Any]:
    r = c.responses[sid]
    body = _mask(r.body)
    headers = [_mask(f"{n}: {v}".encode()).decode() for n, v in r.headers
               if n != "content-length"]
    return {"status": r.status, "headers": headers, "body": body, "reset": r.reset,
            "trailers": r.trailers, "informational": r.informational}


async def _cases(port: int) -> dict[str, Any]:
    target = ("127.0.0.1", port)
    out: dict[str, Any] = {}

    async def one(name: str, method: str, path: str, **kw: Any) -> None:
        c = await H2Client.connect(target)
        sid = c.start(method, path, **kw)
        await asyncio.wait_for(c.responses[sid].done.wait(), 5)
        out[name] = _outcome(c, sid)
        await c.close()

    await one("get", "GET", "/hello", authority="a", headers=[("user-agent", "UA")])
    await one("post-length", "POST", "/p", authority="a",
              headers=[("content-length", "3")], body=b"abc")
    await one("post-no-length", "POST", "/chunky", authority="a", body=b"abcdef")
    await one("head", "HEAD", "/hello", authority="a")
    # HEADERS with END_STREAM and no content-length: Envoy's HTTP/1 codec writes
    # content-length: 0 upstream for a method that may have a body, none for DELETE
    await one("post-bodiless", "POST", "/hello", authority="a")
    await one("delete-bodiless", "DELETE", "/hello", authority="a")
    await one("route-timeout", "GET", "/slow", authority="a")
    await one("no-route", "GET", "/x", authority="nr.example")
    await one("truncated", "GET", "/half", authority="a")
    await one("upstream-reset", "GET", "/reset", authority="a")
    await one("chunked-response", "POST", "/chunked", authority="a", body=b"x")
    await one("te-trailers", "GET", "/te", authority="a", headers=[("te", "trailers")])
    await one("header-overflow", "GET", "/big", authority="a",
              headers=[(f"x-big-{i}", "a" * 8000) for i in range(9)])
    await one("too-many-headers", "GET", "/many", authority="a",
              headers=[(f"x-h{i}", "1") for i in range(101)])

    # repeated fields: Envoy's header map joins an inline one (user-agent, accept,
    # authorization; an empty value adds nothing) into its first field, keeps others
    # (x-custom) separate and joins cookie crumbs with "; " (RFC 9113 8.2.3), last; the
    # echo body shows what the app received (tests/unit/proxy/http/
    # test_header_join_parity.py has every inline name over HTTP/1.1)
    await one("repeated-headers", "GET", "/rep", authority="a", headers=[
        ("user-agent", "u1"), ("cookie", "a=1"), ("x-custom", "c1"), ("accept", "t1"),
        ("user-agent", "u2"), ("cookie", "b=2"), ("x-custom", "c2"), ("accept", ""),
        ("authorization", ""), ("authorization", "z"), ("x-last", "l")])
    await one("expect-100", "POST", "/expect", authority="a",
              headers=[("expect", "100-continue"), ("content-length", "2")], body=b"hi")

    # the client closes the connection while a stream waits for its answer
    c = await H2Client.connect(target)
    c.start("GET", "/slow-closed", authority="a")
    await asyncio.sleep(0.2)
    c.writer.close()
    await asyncio.sleep(0.5)
    await c.close()

    # the client resets its stream before the answer (logged with code 0)
    c = await H2Client.connect(target)
    sid = c.start("GET", "/slow-reset", authority="a")
    await asyncio.sleep(0.2)
    c.conn.reset_stream(sid, ErrorCodes.CANCEL)
    c.flush()
    await asyncio.sleep(0.5)
    out["client-reset"] = {"goaway": c.goaway is not None}
    await c.close()

    # an upper-case header name is malformed (RFC 9113 8.2.1): the connection goes
    c = await H2Client.connect(target)
    c.conn.config.validate_outbound_headers = False
    c.conn.config.normalize_outbound_headers = False
    c.start("GET", "/upper", authority="a", headers=[("X-Upper", "1")])
    await asyncio.wait_for(c.closed.wait(), 5)
    out["invalid-header"] = {"answered": any(r.status for r in c.responses.values())}
    await c.close()

    p = await asyncio.create_subprocess_exec(
        "curl", "-s", "-i", "--http2-prior-knowledge", "--data-binary", "curl-body",
        f"http://127.0.0.1:{port}/curl", stdout=asyncio.subprocess.PIPE)
    data, _ = await asyncio.wait_for(p.communicate(), 10)
    out["curl"] = re.sub(rb"content-length: \d+", b"content-length: L", _mask(data))
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("h2parity")
    echo = free_port()
    server = subprocess.Popen([sys.executable, "-c", ECHO, str(echo)])
    try:
        lp.wait_listening(echo, server, "echo server")

        def run(kind: str) -> dict[str, Any]:
            port, admin = free_port(), free_port()
            log = tmp / f"{kind}.log"
            cfg = tmp / f"{kind}.json"
            cfg.write_text(json.dumps(_config(port, admin, log, echo)))
            with lp.loopback_proxy(kind, cfg, port):
                results = asyncio.run(_cases(port))
                lines = lp.wait_lines(log, 20)
            return {"results": results, "log": lines}
        # both proxies at once (the cases mostly wait on timeouts); the echo backend keeps
        # no state between connections but /flaky's, which no case here asks for
        yield lp.each_kind(run)
    finally:
        lp.stop(server)


CASES = ["get", "post-length", "post-no-length", "head", "post-bodiless", "delete-bodiless",
         "route-timeout", "no-route",
         "truncated", "upstream-reset", "chunked-response", "te-trailers", "header-overflow",
         "too-many-headers", "repeated-headers", "expect-100", "client-reset",
         "invalid-header", "curl"]


@pytest.mark.parametrize("case", CASES)
def test_exchange_same_as_envoy(outcomes: dict[str, dict[str, Any]], case: str) -> None:
    assert outcomes["remora"]["results"][case] == outcomes["envoy"]["results"][case]


def test_access_log_lines_same_as_envoy(outcomes: dict[str, dict[str, Any]]) -> None:
    ours = sorted(_mask(line.encode()).decode() for line in outcomes["remora"]["log"])
    theirs = sorted(_mask(line.encode()).decode() for line in outcomes["envoy"]["log"])
    assert len(theirs) == 20
    assert ours == theirs
