"""The HTTP side held to a real Envoy 1.40 on loopback: one config (the reference sidecar
HCM with extra routes for the failure cases), run once by `envoy` and once by
`remora proxy`, the same raw requests sent to both, and the responses compared byte for
byte (dates, ids, ports and durations masked) together with the access-log lines.
Needs the envoy binary (marker `envoy`); no root, loopback only."""

from __future__ import annotations

import copy
import json
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import free_port, hcm_bootstrap, static_cluster

pytestmark = pytest.mark.envoy

# the HTTP/1.1 backend (tests/unit/proxy/echo_backend.py), as http2/test_h2_envoy_parity.py
# imports it from here
ECHO = lp.ECHO

CASES = {
    "plain": b"GET /hello HTTP/1.1\r\nHost: a\r\nUser-Agent: UA\r\n\r\n",
    "xff-and-id": b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n"
                  b"x-request-id: abc\r\nx-envoy-retry-on: 5xx\r\nx-envoy-internal: true\r\n\r\n",
    "hop-by-hop": b"GET /hello HTTP/1.1\r\nHost: a\r\nte: trailers\r\nkeep-alive: 5\r\n"
                  b"Connection: x-foo\r\nx-foo: 1\r\nx-forwarded-client-cert: By=x\r\n\r\n",
    "head": b"HEAD /hello HTTP/1.1\r\nHost: a\r\n\r\n",
    "chunked-both-ways": b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                         b"\r\n3\r\nabc\r\n0\r\n\r\n",
    "absolute-form": b"GET http://foo.example/abs HTTP/1.1\r\nHost: a\r\n\r\n",
    "normalize": b"GET /a/../b/./c/%7e HTTP/1.1\r\nHost: a\r\n\r\n",
    "expect": b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n"
              b"\r\nabc",
    "route-timeout": b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n",
    "per-try-timeout-retried": b"GET /slowtry HTTP/1.1\r\nHost: a\r\n\r\n",
    "refused": b"GET /refused HTTP/1.1\r\nHost: a\r\n\r\n",
    "retry-exhausted": b"GET /r503 HTTP/1.1\r\nHost: a\r\n\r\n",
    "retry-one-endpoint-previous-hosts": b"GET /r503-ph HTTP/1.1\r\nHost: a\r\n\r\n",
    "reset": b"GET /reset HTTP/1.1\r\nHost: a\r\n\r\n",
    "truncated": b"GET /half HTTP/1.1\r\nHost: a\r\n\r\n",
    "no-route": b"GET /x HTTP/1.1\r\nHost: nr.example\r\n\r\n",
    "fault": b"GET /fault HTTP/1.1\r\nHost: a\r\n\r\n",
    "cors-preflight": b"OPTIONS / HTTP/1.1\r\nHost: a\r\nOrigin: http://a.example\r\n"
                      b"Access-Control-Request-Method: GET\r\n\r\n",
    "cors-actual": b"GET / HTTP/1.1\r\nHost: a\r\nOrigin: http://a.example\r\n\r\n",
    "upgrade-refused": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",
    # HTTP/1.1 CONNECT has no path: no path or prefix route matches it (Envoy's
    # RouteMatch.connect_matcher is the only way), so it is NR before any upgrade check
    # RFC 9110 5.5: a field value has no trailing whitespace; Envoy's codec strips it
    "trailing-ows": b"GET /hello HTTP/1.1\r\nHost: a \r\nX-Ows: v\t \r\n\r\n",
    "chunked-trailing-ows": b"POST /chunked HTTP/1.1\r\nHost: a\r\n"
                            b"Transfer-Encoding: chunked \r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "connect": b"CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n",
    # a request without a body and without framing: Envoy's HTTP/1 codec writes
    # content-length: 0 upstream unless the method is one that has no body
    **{f"bodiless-{m.lower()}": m.encode() + b" /hello HTTP/1.1\r\nHost: a\r\n\r\n"
       for m in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PURGE")},
    # curl --http2 on an http:// URL: Envoy takes no h2c upgrade and serves HTTP/1.1,
    # without Upgrade, HTTP2-Settings and their Connection tokens upstream
    "h2c-upgrade": b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                   b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    # curl --http2 -d: the same with a body, forwarded as the request's body
    "h2c-upgrade-body": b"POST /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings"
                        b"\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
                        b"Content-Length: 5\r\n\r\nhello",
    "h2c-upgrade-chunked": b"POST /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, "
                           b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: "
                           b"AAMAAABkAAQCAAAAAAIAAAAA\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5\r\nhello\r\n0\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "bad-request-line": b"GARBAGE\r\n\r\n",
    "cl-and-chunked": b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "http10": b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
}
# sent as they are (no Connection: close added), read until the proxy closes (Envoy's
# delayed close lets the client close first for up to a second)
KEPT = {
    # a CONNECT's request never ends on this hop: Envoy answers it 404 NR with
    # connection: close and closes (a later request on the connection is not read)
    "connect-kept": b"CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n",
    "connect-pipelined": b"CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n"
                         b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n",
    # the next request starts right after an h2c request's body
    "h2c-body-pipelined": b"POST /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, "
                          b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: "
                          b"AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 5\r\n\r\nhello"
                          b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    # a CONNECT with a content-length: Envoy's codec refuses it (http1.body_disallowed)
    "connect-with-body": b"CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n"
                         b"Content-Length: 3\r\n\r\nabc",
}
_MASKS = [
    *lp.VOLATILE_MASKS,
    # a retry's expected timeout is the 15 s default minus the (jittered) time spent so far
    # (15000 after a backoff under 1 ms); first attempts' values are compared exactly
    (rb"x-envoy-expected-rq-timeout-ms: (?:14\d\d\d|15000)\r",
     b"x-envoy-expected-rq-timeout-ms: RETRY\r"),
]


def _config(template: dict[str, Any], port: int, admin: int, log: Path, echo: int,
            refused: int) -> dict[str, Any]:
    hcm = copy.deepcopy(template)
    tc = hcm["typed_config"]
    tc["access_log"][0]["typed_config"]["path"] = str(log)
    vh = tc["route_config"]["virtual_hosts"][0]
    cors = {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "allow_origin_string_match": [{"exact": "http://a.example"}],
            "allow_methods": "GET,POST", "expose_headers": "x-bar", "max_age": "100"}
    fault = {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
             "abort": {"http_status": 418, "percentage": {"numerator": 100}}}
    vh["typed_per_filter_config"] = {"envoy.filters.http.cors": cors}
    previous_hosts = [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
                 "PreviousHostsPredicate"}}]
    vh["routes"] = [
        {"name": "retry-ph", "match": {"prefix": "/r503-ph"}, "route": {
            "cluster": "echo", "retry_policy": {
                "retry_on": "retriable-status-codes", "retriable_status_codes": [503],
                "num_retries": 2, "retry_host_predicate": previous_hosts,
                "host_selection_retry_max_attempts": "5"}}},
        {"name": "pertry", "match": {"prefix": "/slowtry"}, "route": {
            "cluster": "echo", "retry_policy": {"retry_on": "5xx", "num_retries": 1,
                                                "per_try_timeout": "0.1s"}}},
        {"name": "to", "match": {"prefix": "/slow"}, "route": {"cluster": "echo",
                                                              "timeout": "0.3s"}},
        {"name": "ref", "match": {"prefix": "/refused"}, "route": {"cluster": "refused"}},
        {"name": "retry", "match": {"prefix": "/r503"}, "route": {
            "cluster": "echo", "retry_policy": {"retry_on": "5xx", "num_retries": 1}}},
        {"name": "fault", "match": {"prefix": "/fault"}, "route": {"cluster": "echo"},
         "typed_per_filter_config": {"envoy.filters.http.fault": fault}},
        {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "echo",
                                                               "timeout": "0s"}},
    ]
    tc["route_config"]["virtual_hosts"].insert(0, {"name": "nr", "domains": ["nr.example"],
                                                   "routes": [{"match": {"path": "/only"},
                                                               "route": {"cluster": "echo"}}]})

    return hcm_bootstrap(hcm, port, admin, [static_cluster("echo", echo),
                                            static_cluster("refused", refused)])


def _exchange(port: int, request: bytes) -> bytes:
    """Send REQUEST with Connection: close added; read until the proxy closes."""
    return lp.exchange_closed(port, request, _MASKS)


def _kept(port: int, request: bytes) -> bytes:
    """Send REQUEST as it is; what arrives until the proxy closes ("<EOF>"), or within
    3 s."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(3)
        s.sendall(request)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
            out += b"<EOF>"
        except TimeoutError:
            pass
        except ConnectionResetError:
            out += b"<EOF>"
    for pattern, repl in _MASKS:
        out = re.sub(pattern, repl, out)
    return out


@pytest.fixture(scope="module")
def outcomes(data_dir: Path, tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[dict[str, dict[str, Any]]]:
    ref = json.loads((data_dir / "reference/envoy-sidecar/server-redirect.json").read_text())
    template = ref["static_resources"]["listeners"][0]["filter_chains"][1]["filters"][0]
    tmp = tmp_path_factory.mktemp("parity")
    refused = free_port()
    with lp.echo_backend() as echo:
        def run(kind: str) -> dict[str, Any]:
            port, admin = free_port(), free_port()
            log = tmp / f"{kind}.log"
            cfg = tmp / f"{kind}.json"
            cfg.write_text(json.dumps(_config(template, port, admin, log, echo, refused)))
            with lp.loopback_proxy(kind, cfg, port), ThreadPoolExecutor(4) as pool:
                # Each case is a connection of its own (Connection: close), so they need
                # not wait for each other; a third of them are Envoy local replies it
                # closes only after its delayed_close_timeout (1 s). Four at a time: with
                # the three retrying cases at once the cluster's default max_retries (3
                # active retries) is never exceeded, so no retry overflows.
                futures = {name: pool.submit(_exchange, port, req)
                           for name, req in CASES.items()}
                responses = {name: f.result() for name, f in futures.items()}
                # the kept-alive cases after them, one at a time
                responses.update({name: _kept(port, req) for name, req in KEPT.items()})
                return {"responses": responses,
                        "log": lp.wait_lines(log, len(CASES) + len(KEPT))}
        # both proxies at once (the cases mostly wait on timeouts); one backend, whose
        # only state between connections is /flaky's, which no case here asks for (and
        # whose port both access logs print)
        yield lp.each_kind(run)


@pytest.mark.parametrize("case", [*CASES, *KEPT])
def test_response_bytes_same_as_envoy(outcomes: dict[str, dict[str, Any]], case: str) -> None:
    assert outcomes["remora"]["responses"][case] == outcomes["envoy"]["responses"][case]


def test_access_log_lines_same_as_envoy(outcomes: dict[str, dict[str, Any]]) -> None:
    def comparable(line: str) -> dict[str, str]:
        f = ph.comparable(ph.parse_access_log(line))
        # the two proxies listen on different ports
        f["downstream_local_address"] = re.sub(r":\d+$", ":*", f["downstream_local_address"])
        return f

    def by_path(lines: list[str]) -> dict[tuple[str, str, str], dict[str, str]]:
        out = {}
        for line in lines:
            f = comparable(line)
            out[(f["method"], f["path"], f["response_code_details"])] = f
        return out
    ours, theirs = by_path(outcomes["remora"]["log"]), by_path(outcomes["envoy"]["log"])
    assert len(theirs) >= len(CASES) - 4  # a few cases share method/path/details
    assert set(ours) == set(theirs)
    for key, envoys in theirs.items():
        mine = ours[key]
        # flags compare exactly: both print them in the order they were set
        differing = {k: (mine.get(k), v) for k, v in envoys.items() if mine.get(k) != v}
        assert not differing, f"{key}: (remora, envoy): {differing}"


def test_what_envoy_does_with_connect(outcomes: dict[str, dict[str, Any]]) -> None:
    envoy = outcomes["envoy"]["responses"]
    for name in ("connect-kept", "connect-pipelined"):
        assert envoy[name].startswith(b"HTTP/1.1 404 Not Found\r\n"), name
        assert b"\r\nconnection: close\r\n" in envoy[name] and envoy[name].endswith(
            b"\r\n\r\n<EOF>"), name
    assert envoy["connect-with-body"].startswith(b"HTTP/1.1 400 Bad Request\r\n")
