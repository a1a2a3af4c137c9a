"""Local replies, the router's cluster stats and the access log's empty header values held
to a real Envoy 1.40 on loopback (no root): one bootstrap (an HCM with codec_type AUTO in
front of a grpcio service, an HTTP/1.1 backend and a closed port) run by `envoy` and by
`remora proxy`, the same requests sent to both, and compared:

- gRPC requests the proxy answers itself (no route, refused upstream, route timeout,
  direct response) over HTTP/2 (grpcio's client and a raw h2 client) and HTTP/1.1: a
  trailers-only 200 with grpc-status mapped from the HTTP status and grpc-message the
  percent-encoded body; application/grpc-web is not gRPC;
- the request the HTTP/1.1 upstream gets: x-envoy-expected-rq-timeout-ms 10000 for a 10 s
  route, before the transfer-encoding the codec adds;
- the clusters' upstream_rq_* counters and their hosts' rq_* counters (/clusters) after
  refused connections, route and per-try timeouts, a retry that ends in a status its
  policy does not retry;
- access-log lines: %RESPONSE_CODE% 200 for a gRPC local reply, a header present but
  empty printed empty (text and json), an absent one ``-`` / null.

Dates, request ids and durations are masked. Needs the envoy binary (marker `envoy`)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.http2 import grpc_harness as gh
from tests.unit.proxy.http2.h2client import H2Client
from tests.unit.proxy.proxy_helpers import free_port, static_cluster

pytestmark = pytest.mark.envoy

SPECIAL_BODY = "caf\u00e9 ~ 100% }\ttab\x7f {|}\n"
TEXT_FORMAT = ("%REQ(X-CASE)% code=%RESPONSE_CODE% grpc=%GRPC_STATUS% "
               "details=%RESPONSE_CODE_DETAILS% flags=%RESPONSE_FLAGS% "
               "attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT% sent=%BYTES_SENT% "
               'empty="%REQ(X-EMPTY)%" empty3="%REQ(X-EMPTY):3%" absent="%REQ(X-ABSENT)%" '
               'resp_empty="%RESP(X-EMPTY-RESP)%" up_empty="%RESP(X-EMPTY-UP)%"\n')
JSON_FORMAT = {"case": "%REQ(X-CASE)%", "code": "%RESPONSE_CODE%", "empty": "%REQ(X-EMPTY)%",
               "absent": "%REQ(X-ABSENT)%", "resp_empty": "%RESP(X-EMPTY-RESP)%",
               "mixed": "[%REQ(X-EMPTY)%]"}
STATS = ["upstream_rq_total", "upstream_rq_completed", "upstream_rq_2xx", "upstream_rq_200",
         "upstream_rq_5xx", "upstream_rq_500", "upstream_rq_503", "upstream_rq_504",
         "upstream_rq_timeout", "upstream_rq_per_try_timeout", "upstream_rq_retry",
         "upstream_rq_retry_success", "upstream_rq_retry_limit_exceeded",
         "upstream_rq_retry_backoff_exponential"]
CLUSTERS = ["grpc", "backend", "refused"]
HOST_STATS = ["rq_total", "rq_success", "rq_error", "rq_timeout", "rq_active"]


ISTIO_MSD = {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}


def _config(port: int, admin: int, log: Path, grpc_port: int, backend: int,
            refused: int) -> dict[str, Any]:
    def file_log(path: Path, fmt: dict[str, Any]) -> dict[str, Any]:
        return {"name": "envoy.access_loggers.file", "typed_config": {
            "@type": gh.FILE_LOG, "path": str(path), "log_format": fmt}}
    svc = gh.SERVICE
    routes = [
        {"match": {"prefix": f"/{svc}/Sleep"}, "route": {"cluster": "grpc", "timeout": "0.3s"}},
        {"match": {"prefix": f"/{svc}/"}, "route": {"cluster": "grpc", "timeout": "0s"}},
        {"match": {"prefix": "/refused"}, "route": {"cluster": "refused"}},
        {"match": {"prefix": "/direct"},
         "direct_response": {"status": 403, "body": {"inline_string": "nope"}},
         "response_headers_to_add": [{"header": {"key": "x-route-resp", "value": "r"}}]},
        {"match": {"prefix": "/special"},
         "direct_response": {"status": 401, "body": {"inline_string": SPECIAL_BODY}}},
        # a per-try timeout resets the attempt: retried under retry_on reset too
        {"match": {"prefix": "/slowreset"}, "route": {"cluster": "backend", "retry_policy": {
            "retry_on": "reset", "num_retries": 1, "per_try_timeout": "0.1s"}}},
        # a response that started before the per-try timeout is not cut off by it
        {"match": {"prefix": "/drip"}, "route": {"cluster": "backend", "retry_policy": {
            "retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.1s"}}},
        # Istio's max_stream_duration (every route it generates): grpc-timeout is the
        # stream's max duration, and goes upstream in milliseconds
        {"match": {"prefix": "/slowmsd"}, "route": {"cluster": "backend", "timeout": "0s",
                                                     "max_stream_duration": ISTIO_MSD}},
        {"match": {"prefix": "/echomsd"}, "route": {"cluster": "backend", "timeout": "0s",
                                                     "max_stream_duration": ISTIO_MSD}},
        {"match": {"prefix": "/slowdur"}, "route": {
            "cluster": "backend", "max_stream_duration": {"max_stream_duration": "0.2s"}}},
        {"match": {"prefix": "/slowtry"}, "route": {"cluster": "backend", "retry_policy": {
            "retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.1s"}}},
        {"match": {"prefix": "/slow"}, "route": {"cluster": "backend", "timeout": "0.3s"}},
        {"match": {"prefix": "/flaky"}, "route": {"cluster": "backend", "retry_policy": {
            "retry_on": "retriable-status-codes", "retriable_status_codes": [503],
            "num_retries": 2}}},
        {"match": {"prefix": "/echo"}, "route": {"cluster": "backend", "timeout": "10s"},
         "response_headers_to_add": [{"header": {"key": "x-empty-resp", "value": ""},
                                      "keep_empty_value": True}]},
    ]
    hcm = {"@type": gh.HCM, "stat_prefix": "lr", "codec_type": "AUTO",
           "http2_protocol_options": {},
           "access_log": [
               file_log(log, {"text_format_source": {"inline_string": TEXT_FORMAT}}),
               file_log(log.with_suffix(".jsonl"), {"json_format": JSON_FORMAT})],
           "route_config": {"name": "local", "virtual_hosts": [
               {"name": "nr", "domains": ["nr.example"],
                "routes": [{"match": {"path": "/only"}, "route": {"cluster": "backend"}}]},
               # the router's own replies (direct_response, upstream failures,
               # timeouts) carry the route's response mutations, as its upstream's do
               {"name": "all", "domains": ["*"], "routes": routes,
                "response_headers_to_add": [{"header": {"key": "x-vhost", "value": "v"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": gh.ROUTER}}]}
    explicit_h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": gh.HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": admin}}},
            "static_resources": {
                "listeners": [{"name": "lr", "address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm}]}]}],
                "clusters": [
                    static_cluster("grpc", grpc_port,
                                   typed_extension_protocol_options=explicit_h2),
                    static_cluster("backend", backend), static_cluster("refused", refused)]}}


# -- the clients -------------------------------------------------------------------------
GRPC_CASES = {"g-refused": "/refused.Svc/M", "g-noroute": "/nothing.Svc/M",
              "g-timeout": f"/{gh.SERVICE}/Sleep", "g-direct": "/direct.Svc/M",
              "g-special": "/special.Svc/M"}


def _grpc_outcomes(port: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        for case, method in GRPC_CASES.items():
            try:
                ch.unary_unary(method)(b"hi", metadata=(("x-case", case), ("x-empty", "")),
                                       timeout=5)
                out[case] = "OK"
            except grpc.RpcError as e:
                out[case] = (e.code(), e.details(),  # type: ignore[attr-defined]
                             [(m.key, m.value) for m in e.trailing_metadata()  # type: ignore[attr-defined]
                              if m.key != "date"])
    return out


H2_CASES: dict[str, tuple[str, str, str, str]] = {  # method, path, authority, content-type
    "h2-noroute-grpc": ("POST", "/x", "nr.example", "application/grpc"),
    "h2-noroute-plain": ("GET", "/x", "nr.example", "text/plain"),
    "h2-refused-grpc": ("POST", "/refused", "a", "application/grpc+proto"),
    "h2-special-grpc": ("POST", "/special", "a", "application/grpc"),
    "h2-head-special-grpc": ("HEAD", "/special", "a", "application/grpc"),
    "h2-refused-grpcweb": ("POST", "/refused", "a", "application/grpc-web"),
    "h2-msd-grpc-timeout": ("POST", "/slowmsd", "a", "application/grpc"),
    "h2-msd-grpc-capped-by-none": ("POST", "/echomsd", "a", "application/grpc"),
}
H2_EXTRA = {"h2-msd-grpc-timeout": [("grpc-timeout", "200000u")],
            "h2-msd-grpc-capped-by-none": [("grpc-timeout", "2M")]}


async def _h2_outcomes(port: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case, (method, path, authority, ctype) in H2_CASES.items():
        c = await H2Client.connect(("127.0.0.1", port))
        try:
            r = await c.request(method, path, authority=authority,
                                headers=[("content-type", ctype), ("x-case", case),
                                         *H2_EXTRA.get(case, [])])
            body = r.body
            for pattern, replacement in _MASKS:  # an echoed request's id and date
                body = re.sub(pattern, replacement, body)
            out[case] = {"status": r.status, "body": body, "ended": r.ended,
                         "trailers": r.trailers,
                         "headers": [(n, "D" if n in ("date", "x-envoy-upstream-service-time")
                                      else v) for n, v in r.headers]}
        finally:
            await c.close()
    return out


H1_CASES = {
    "h1-refused-grpc": b"POST /refused/x HTTP/1.1\r\nHost: a\r\ncontent-type: application/grpc"
                       b"\r\ncontent-length: 0\r\n\r\n",
    "h1-noroute-grpc": b"POST /x HTTP/1.1\r\nHost: nr.example\r\n"
                       b"content-type: application/grpc+proto\r\ncontent-length: 0\r\n\r\n",
    "h1-direct-grpc": b"POST /direct HTTP/1.1\r\nHost: a\r\ncontent-type: application/grpc\r\n"
                      b"content-length: 0\r\n\r\n",
    "h1-timeout-grpc": b"POST /slow HTTP/1.1\r\nHost: a\r\ncontent-type: application/grpc\r\n"
                       b"content-length: 0\r\n\r\n",
    "h1-refused-grpcweb": b"POST /refused/x HTTP/1.1\r\nHost: a\r\n"
                          b"content-type: application/grpc-web\r\ncontent-length: 0\r\n\r\n",
    "h1-timeout-plain": b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n",
    "h1-echo-chunked": b"POST /echo HTTP/1.1\r\nHost: a\r\nx-empty: \r\n"
                       b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "h1-echo-length": b"POST /echo HTTP/1.1\r\nHost: a\r\ncontent-length: 3\r\n\r\nabc",
    "h1-flaky-retried": b"GET /flaky HTTP/1.1\r\nHost: a\r\n\r\n",
    "h1-per-try-retried-grpc": b"POST /slowtry HTTP/1.1\r\nHost: a\r\n"
                               b"content-type: application/grpc\r\ncontent-length: 0\r\n\r\n",
    "h1-per-try-reset": b"GET /slowreset HTTP/1.1\r\nHost: a\r\n\r\n",
    "h1-per-try-started": b"GET /drip HTTP/1.1\r\nHost: a\r\n\r\n",
    "h1-msd-grpc-timeout": b"POST /slowmsd HTTP/1.1\r\nHost: a\r\ncontent-type: application/grpc"
                           b"\r\ngrpc-timeout: 200m\r\ncontent-length: 0\r\n\r\n",
    "h1-msd-header-upstream": b"POST /echomsd HTTP/1.1\r\nHost: a\r\n"
                              b"content-type: application/grpc\r\ngrpc-timeout: 5S\r\n"
                              b"content-length: 0\r\n\r\n",
    "h1-msd-plain-no-header": b"GET /echomsd HTTP/1.1\r\nHost: a\r\ngrpc-timeout: 5S\r\n\r\n",
    "h1-msd-route-duration": b"GET /slowdur HTTP/1.1\r\nHost: a\r\n\r\n",
}
_MASKS = [
    (rb"date: [^\r]*", b"date: D"),
    (rb"x-envoy-upstream-service-time: \d+", b"x-envoy-upstream-service-time: N"),
    (rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", b"UUID"),
    # the retry's expected timeout is the 15 s default minus the (jittered) time spent
    # (15000 after a backoff under 1 ms); the first attempt's value (10000 for the 10 s
    # route) is compared exactly
    (rb"x-envoy-expected-rq-timeout-ms: (?:14\d\d\d|15000)\r",
     b"x-envoy-expected-rq-timeout-ms: RETRY\r"),
]


def _h1(port: int, case: str, request: bytes) -> bytes:
    return lp.exchange_closed(port, request, _MASKS, add_headers=b"x-case: " + case.encode()
                              + b"\r\n")


def _stats(admin: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in lp.admin_text(admin, "/stats").splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            found[name] = int(value)
    counters = {f"{c}.{s}": found.get(f"cluster.{c}.{s}", 0) for c in CLUSTERS for s in STATS}
    # the connection manager's count of streams its max duration ended (-1: not listed;
    # Envoy declares its counters, so lists it at 0 before any)
    counters["http.lr.downstream_rq_max_duration_reached"] = found.get(
        "http.lr.downstream_rq_max_duration_reached", -1)
    # the hosts' counters from /clusters (CLUSTER::HOST:PORT::NAME::VALUE), port masked
    for line in lp.admin_text(admin, "/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[2] in HOST_STATS:
            counters[f"{parts[0]}::host::{parts[2]}"] = int(parts[3])
    return counters


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("localreply")
    refused = free_port()
    # the HTTP/1.1 backend (echo_backend.py): /slow answers after 1 s, /flaky 503 then 500
    # (one retry per proxy: Envoy gets 503 then 500, remora the same), anything else echoes
    # the request head and body it received, with an empty x-empty-up header
    # Both proxies at once (the cases mostly wait on timeouts), each with backends of its
    # own: /flaky keeps state between requests
    def run(kind: str) -> dict[str, Any]:
        with lp.echo_backend("--empty-header") as backend, \
                gh.grpc_service() as (grpc_port, _):
            port, admin = free_port(), free_port()
            log = tmp / f"{kind}.log"
            cfg = tmp / f"{kind}.json"
            cfg.write_text(json.dumps(_config(port, admin, log, grpc_port, backend,
                                              refused)))
            with lp.loopback_proxy(kind, cfg, port):
                result: dict[str, Any] = {
                    "grpc": _grpc_outcomes(port),
                    "h2": asyncio.run(_h2_outcomes(port)),
                    "h1": {case: _h1(port, case, req) for case, req in H1_CASES.items()}}
                total = len(GRPC_CASES) + len(H2_CASES) + len(H1_CASES)
                result["log"] = lp.wait_lines(log, total)
                result["json"] = lp.wait_lines(log.with_suffix(".jsonl"), total)
                result["stats"] = _stats(admin)
            return result
    yield lp.each_kind(run)


# -- the comparisons ---------------------------------------------------------------------
@pytest.mark.parametrize("case", list(GRPC_CASES))
def test_grpc_client_sees_what_envoy_gives(outcomes: dict[str, dict[str, Any]],
                                           case: str) -> None:
    theirs = outcomes["envoy"]["grpc"][case]
    assert outcomes["remora"]["grpc"][case] == theirs
    # the proxy's own status and message, not grpcio's "Received http2 header with status"
    assert "http2 header" not in theirs[1]


def test_grpc_status_mapping(outcomes: dict[str, dict[str, Any]]) -> None:
    codes = {case: out[0] for case, out in outcomes["remora"]["grpc"].items()}
    assert codes == {"g-refused": grpc.StatusCode.UNAVAILABLE,
                     "g-noroute": grpc.StatusCode.UNIMPLEMENTED,
                     "g-timeout": grpc.StatusCode.UNAVAILABLE,
                     "g-direct": grpc.StatusCode.PERMISSION_DENIED,
                     "g-special": grpc.StatusCode.UNAUTHENTICATED}
    assert outcomes["remora"]["grpc"]["g-timeout"][1] == "upstream request timeout"


@pytest.mark.parametrize("case", list(H2_CASES))
def test_http2_exchange_same_as_envoy(outcomes: dict[str, dict[str, Any]], case: str) -> None:
    assert outcomes["remora"]["h2"][case] == outcomes["envoy"]["h2"][case]


def test_http2_grpc_local_reply_is_trailers_only(outcomes: dict[str, dict[str, Any]]) -> None:
    r = outcomes["remora"]["h2"]["h2-special-grpc"]
    assert (r["status"], r["body"], r["ended"], r["trailers"]) == (200, b"", True, [])
    assert dict(r["headers"])["grpc-message"] == "caf%C3%A9 %7E 100%25 }%09tab%7F {|}%0A"
    assert "grpc-message" not in dict(outcomes["remora"]["h2"]["h2-head-special-grpc"]
                                      ["headers"])


@pytest.mark.parametrize("case", list(H1_CASES))
def test_http1_exchange_same_as_envoy(outcomes: dict[str, dict[str, Any]], case: str) -> None:
    assert outcomes["remora"]["h1"][case] == outcomes["envoy"]["h1"][case]


def test_http1_upstream_timeout_header_before_framing(
        outcomes: dict[str, dict[str, Any]]) -> None:
    echoed = outcomes["remora"]["h1"]["h1-echo-chunked"]
    assert b"x-envoy-expected-rq-timeout-ms: 10000\r\ntransfer-encoding: chunked\r\n" in echoed
    assert b"x-envoy-expected-rq-timeout-ms: 10000\r\n\r\nabc" in \
        outcomes["remora"]["h1"]["h1-echo-length"]


def test_access_log_lines_same_as_envoy(outcomes: dict[str, dict[str, Any]]) -> None:
    theirs = sorted(outcomes["envoy"]["log"])
    assert len(theirs) == len(GRPC_CASES) + len(H2_CASES) + len(H1_CASES)
    assert sorted(outcomes["remora"]["log"]) == theirs
    assert any(line.startswith("g-refused code=200 grpc=Unavailable") for line in theirs)
    assert any(line.startswith("h1-echo-chunked ") and 'empty=""' in line
               and 'absent="-"' in line for line in theirs)


def test_json_access_log_same_as_envoy(outcomes: dict[str, dict[str, Any]]) -> None:
    theirs = sorted(outcomes["envoy"]["json"])
    assert sorted(outcomes["remora"]["json"]) == theirs
    assert {"absent": None, "case": "h1-echo-chunked", "code": 200, "empty": "",
            "mixed": "[]", "resp_empty": ""} in [json.loads(line) for line in theirs]


def test_cluster_stats_same_as_envoy(outcomes: dict[str, dict[str, Any]]) -> None:
    theirs = outcomes["envoy"]["stats"]
    assert outcomes["remora"]["stats"] == theirs
    # the refused connections are charged as 503s though no request reached a host, the
    # retried 503 that ended in a 500 counts as a retry success
    assert theirs["refused.upstream_rq_503"] > 0 and theirs["refused.upstream_rq_total"] == 0
    assert theirs["backend.upstream_rq_retry_success"] == 1
    # every retry is scheduled by the exponential back-off; the requests that wanted one
    # more than their num_retries count upstream_rq_retry_limit_exceeded
    assert theirs["backend.upstream_rq_retry_backoff_exponential"] == theirs[
        "backend.upstream_rq_retry"] > 0
    assert theirs["backend.upstream_rq_retry_limit_exceeded"] > 0
    # a route timeout each for h1-timeout-grpc and h1-timeout-plain, and the per-try
    # timeouts of h1-per-try-retried-grpc and h1-per-try-reset (each attempt's counted,
    # the last one's 504 charged); none for h1-per-try-started, whose response had begun.
    # The max stream durations are the connection manager's, charged to no cluster
    assert theirs["backend.upstream_rq_504"] == 4 and theirs["grpc.upstream_rq_504"] == 1
    assert theirs["backend.upstream_rq_per_try_timeout"] == 4
    # h1-msd-grpc-timeout, h1-msd-route-duration and h2-msd-grpc-timeout
    assert theirs["http.lr.downstream_rq_max_duration_reached"] == 3
    # per host: the route and per-try timeouts, the refused connections as errors
    assert theirs["backend::host::rq_timeout"] == 6 and theirs["refused::host::rq_error"] > 0
