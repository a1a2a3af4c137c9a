"""Repeated header lines held to a real Envoy 1.40 on loopback: what the app behind the
proxy sees when a request repeats a header, and what the client sees when the upstream's
response does.

Envoy's header map (HeaderMapImpl::insertByKey) keeps one entry for each of its *inline*
headers and appends a repeated one's value to it (appendToHeader: ``,``; nothing for an
empty value, no delimiter after an empty one); any other header repeated stays separate
lines. Which headers are inline is what the binary registers; Envoy 1.40 prints that list at
start ("HTTP header map info", tests/data/envoy-1.40-inline-headers.txt), and the cases
here are every name of it plus a few that are not inline (cookie among them: it is not in
1.40's request map, so its HTTP/1.1 lines stay separate too).

One config (the reference sidecar HCM, a route to the echo backend and one to a backend
that repeats a response header), run once by `envoy` and once by `remora proxy`, the same
raw requests sent to both, the responses compared byte for byte (dates, ids, ports and
lengths masked). The echo backend answers with the request head it received, so a request
case compares the header lines the app saw, in their order. Needs the envoy binary (marker
`envoy`); no root, loopback only."""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import proxyharness as ph
from tests.datafiles import data_path
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import free_port, hcm_bootstrap, static_cluster

pytestmark = pytest.mark.envoy

_MASKS = lp.VOLATILE_MASKS


def _inline(kind: str) -> list[str]:
    """The names Envoy 1.40's KIND ("request" or "response") header map holds inline, as
    the binary printed them (pseudo-headers left out: no HTTP/1.1 line carries one)."""
    for line in data_path("envoy-1.40-inline-headers.txt").read_text().splitlines():
        head, _, names = line.partition(": ")
        if head == f"{kind} header map":
            return [n for n in names.split(",") if not n.startswith(":")]
    raise AssertionError(f"no {kind} header map in envoy-1.40-inline-headers.txt")


# headers no 1.40 header map holds inline: their repeated lines stay separate lines
NOT_INLINE = ["cookie", "x-custom", "accept-language", "forwarded", "x-b3-traceid",
              "set-cookie", "www-authenticate", "link", "warning"]

# A value that a header's own handling leaves alone where "v1"/"v2" would not be (a
# request with two content-lengths still has a body length to agree on).
_VALUES = {
    "content-length": ("0", "0"),
    "transfer-encoding": ("chunked", "chunked"),
    "expect": ("100-continue", "100-continue"),
    "te": ("trailers", "trailers"),
    "connection": ("keep-alive", "keep-alive"),
    "upgrade": ("websocket", "websocket"),
    "x-forwarded-for": ("10.0.0.1", "10.0.0.2"),
    "x-forwarded-port": ("80", "81"),
    "grpc-timeout": ("1S", "2S"),
    "x-envoy-expected-rq-timeout-ms": ("100", "200"),
    "x-envoy-max-retries": ("1", "2"),
    "x-envoy-upstream-rq-timeout-ms": ("1000", "2000"),
    "x-envoy-upstream-rq-per-try-timeout-ms": ("1000", "2000"),
    "x-envoy-upstream-stream-duration-ms": ("1000", "2000"),
    "x-envoy-retry-on": ("5xx", "reset"),
}


def _request_cases() -> dict[str, bytes]:
    cases: dict[str, bytes] = {}
    for name in _inline("request") + NOT_INLINE:
        v1, v2 = _VALUES.get(name, ("v1", "v2"))
        # a header between the two lines: a joined value stays where its first line was
        body = b"0\r\n\r\n" if name == "transfer-encoding" else b""
        cases[f"req-{name}"] = (
            f"GET /echo HTTP/1.1\r\nHost: a\r\n{name}: {v1}\r\nx-mid: m\r\n{name}: {v2}\r\n"
            f"\r\n").encode() + body
    # appendToHeader: an empty value adds nothing, and none is delimited from an empty one
    for name in ("user-agent", "x-custom"):
        cases[f"req-{name}-empty-first"] = (
            f"GET /echo HTTP/1.1\r\nHost: a\r\n{name}:\r\n{name}: v2\r\n\r\n").encode()
        cases[f"req-{name}-empty-last"] = (
            f"GET /echo HTTP/1.1\r\nHost: a\r\n{name}: v1\r\n{name}:\r\n\r\n").encode()
    cases["req-user-agent-three"] = (b"GET /echo HTTP/1.1\r\nHost: a\r\nUser-Agent: a\r\n"
                                     b"Cookie: c=1\r\nuser-agent: b\r\nCOOKIE: d=2\r\n"
                                     b"User-Agent: c\r\n\r\n")
    # what a joined value meets next: TE is kept as "trailers" when it lists it, an
    # Expect other than 100-continue goes on, the router takes out
    # x-envoy-upstream-stream-duration-ms whatever it says
    for value in ("gzip, trailers", "trailers;q=1", "Trailers"):
        cases[f"req-te-{value}"] = f"GET /echo HTTP/1.1\r\nHost: a\r\nte: {value}\r\n\r\n".encode()
    cases["req-expect-other"] = b"GET /echo HTTP/1.1\r\nHost: a\r\nExpect: foo\r\n\r\n"
    cases["req-stream-duration-once"] = (b"GET /echo HTTP/1.1\r\nHost: a\r\n"
                                         b"x-envoy-upstream-stream-duration-ms: 1000\r\n\r\n")
    # Host is :authority, inline: two equal ones join into one that is not a valid
    # authority
    cases["req-host-twice"] = b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"
    return cases


def _response_names() -> list[str]:
    # content-length and transfer-encoding frame the response: their repeats are the
    # codec's business (a request case covers each), not the header map's
    return [n for n in _inline("response") + NOT_INLINE
            if n not in ("content-length", "transfer-encoding", "connection", "upgrade")]


# A route's headers_to_add (HeaderValueOption, append_action APPEND_IF_EXISTS_OR_ADD by
# default) go through the same header map: an inline name already there gets the value
# appended (insertByKey), anything else a line of its own.
_ADDED = [{"header": {"key": k, "value": v}, **({"append_action": a} if a else {})}
          for k, v, a in (("user-agent", "added", None), ("cache-control", "added", None),
                          ("x-custom", "added", None), ("vary", "", None),
                          ("accept", "", None), ("content-type", "added", "ADD_IF_ABSENT"),
                          ("x-custom-2", "a2", "OVERWRITE_IF_EXISTS_OR_ADD"),
                          ("x-gone", "route", None))] + [
    {"header": {"key": "x-empty-kept", "value": ""}, "keep_empty_value": True}]
# the virtual host's level runs after the route's: it removes what the route added
_VHOST_LEVEL = {"request_headers_to_remove": ["x-gone"], "response_headers_to_remove": ["x-gone"],
                "request_headers_to_add": [{"header": {"key": "x-custom", "value": "vhost"}}]}
MUTATION_CASES = {
    "mut-request-absent": b"GET /mut/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "mut-request-present": b"GET /mut/ HTTP/1.1\r\nHost: a\r\nUser-Agent: ua\r\n"
                           b"x-custom: c\r\nAccept: t\r\ncache-control: no-cache\r\n"
                           b"Content-Type: x/y\r\nx-custom-2: old\r\n\r\n",
    # a route with a timeout: Envoy's router sets x-envoy-expected-rq-timeout-ms before
    # the route's and virtual host's headers are added, so they come after it upstream;
    # a route removing it (or overwriting it) acts on the router's value
    "mut-timeout-request-absent": b"GET /mutt/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "mut-timeout-request-present": b"GET /mutt/ HTTP/1.1\r\nHost: a\r\nUser-Agent: ua\r\n"
                                   b"x-custom: c\r\nx-custom-2: old\r\n\r\n",
    "mut-timeout-removed": b"GET /muttrm/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "mut-timeout-overwritten": b"GET /muttow/ HTTP/1.1\r\nHost: a\r\n\r\n",
    **{f"mut-response-{name}": f"GET /mresp/{name} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
       for name in ("cache-control", "vary", "x-custom", "content-type", "user-agent")},
}
REQUEST_CASES = _request_cases()
RESPONSE_CASES = {f"resp-{name}": f"GET /resp/{name} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
                  for name in _response_names()}


def _serve_repeat(conn: socket.socket) -> None:
    """The response backend: for ``GET /resp/NAME`` a 200 with two NAME lines and another
    header between them; one response per connection."""
    conn.settimeout(5)
    head = b""
    try:
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                return
            head += chunk
    except OSError:
        return
    name = head.split(b" ", 2)[1].rpartition(b"/")[2]
    conn.sendall(b"HTTP/1.1 200 OK\r\n" + name + b": r1\r\nx-mid: m\r\n" + name
                 + b": r2\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")


def _config(template: dict[str, Any], port: int, admin: int, echo: int,
            repeat: int) -> dict[str, Any]:
    hcm = copy.deepcopy(template)
    tc = hcm["typed_config"]
    del tc["access_log"]
    tc["route_config"]["virtual_hosts"][0].update(_VHOST_LEVEL)
    tc["route_config"]["virtual_hosts"][0]["routes"] = [
        {"match": {"prefix": "/mut/"}, "route": {"cluster": "echo", "timeout": "0s"},
         "request_headers_to_add": _ADDED, "response_headers_to_add": _ADDED},
        {"match": {"prefix": "/mutt/"}, "route": {"cluster": "echo", "timeout": "10s"},
         "request_headers_to_add": _ADDED},
        {"match": {"prefix": "/muttrm/"}, "route": {"cluster": "echo", "timeout": "10s"},
         "request_headers_to_add": _ADDED,
         "request_headers_to_remove": ["x-envoy-expected-rq-timeout-ms"]},
        {"match": {"prefix": "/muttow/"}, "route": {"cluster": "echo", "timeout": "10s"},
         "request_headers_to_add": [*_ADDED, {
             "header": {"key": "x-envoy-expected-rq-timeout-ms", "value": "7"},
             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]},
        {"match": {"prefix": "/mresp/"}, "route": {"cluster": "repeat", "timeout": "0s"},
         "response_headers_to_add": _ADDED},
        {"match": {"prefix": "/resp/"}, "route": {"cluster": "repeat", "timeout": "0s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "echo", "timeout": "0s"}}]

    return hcm_bootstrap(hcm, port, admin, [static_cluster("echo", echo),
                                            static_cluster("repeat", repeat)])


@pytest.fixture(scope="module")
def outcomes(data_dir: Path, tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[dict[str, dict[str, bytes]]]:
    ref = json.loads((data_dir / "reference/envoy-sidecar/server-redirect.json").read_text())
    template = ref["static_resources"]["listeners"][0]["filter_chains"][1]["filters"][0]
    tmp = tmp_path_factory.mktemp("header-join")
    repeat = lp.thread_server(_serve_repeat)
    try:
        with lp.echo_backend() as echo:
            found: dict[str, dict[str, bytes]] = {}
            for kind in ph.KINDS:
                port, admin = free_port(), free_port()
                cfg = tmp / f"{kind}.json"
                cfg.write_text(json.dumps(_config(template, port, admin, echo,
                                                  repeat.getsockname()[1])))
                with lp.loopback_proxy(kind, cfg, port):
                    found[kind] = {name: lp.exchange_closed(port, req, _MASKS)
                                   for name, req in {**REQUEST_CASES, **RESPONSE_CASES,
                                                     **MUTATION_CASES}.items()}
            yield found
    finally:
        repeat.close()


def test_inline_lists_are_envoys() -> None:
    """The names the cases come from: the request map holds user-agent and
    x-forwarded-client-cert inline and not cookie; the response map server and not
    set-cookie (a wrong data file would make every case below vacuous)."""
    req, resp = _inline("request"), _inline("response")
    assert {"user-agent", "x-forwarded-client-cert", "authorization"} <= set(req)
    assert "cookie" not in req and "set-cookie" not in resp
    assert {"server", "content-type", "location"} <= set(resp)


@pytest.mark.parametrize("case", list(REQUEST_CASES))
def test_request_headers_same_as_envoy(outcomes: dict[str, dict[str, bytes]],
                                       case: str) -> None:
    # line by line, so a failure shows the lines that differ
    assert outcomes["remora"][case].split(b"\r\n") == outcomes["envoy"][case].split(b"\r\n")


@pytest.mark.parametrize("case", list(RESPONSE_CASES))
def test_response_headers_same_as_envoy(outcomes: dict[str, dict[str, bytes]],
                                        case: str) -> None:
    # line by line, so a failure shows the lines that differ
    assert outcomes["remora"][case].split(b"\r\n") == outcomes["envoy"][case].split(b"\r\n")


@pytest.mark.parametrize("case", list(MUTATION_CASES))
def test_added_headers_same_as_envoy(outcomes: dict[str, dict[str, bytes]], case: str) -> None:
    """request_headers_to_add / response_headers_to_add onto headers the request or the
    upstream's response already has (inline ones joined, others as lines of their own)."""
    assert outcomes["remora"][case].split(b"\r\n") == outcomes["envoy"][case].split(b"\r\n")


def test_user_agent_joined_and_cookie_not(outcomes: dict[str, dict[str, bytes]]) -> None:
    """What the parity above means for the two headers the question was about: Envoy
    joins three user-agent lines into one at the first one's place and forwards the two
    cookie lines as they came."""
    seen = outcomes["envoy"]["req-user-agent-three"]
    body = seen.partition(b"\r\n\r\n")[2]
    assert b"user-agent: a,b,c\r\ncookie: c=1\r\ncookie: d=2\r\n" in body.lower()


def test_added_after_expected_timeout(outcomes: dict[str, dict[str, bytes]]) -> None:
    """What the mut-timeout cases are about: on Envoy the route's added headers follow
    the router's x-envoy-expected-rq-timeout-ms, and the virtual host's come last."""
    seen = outcomes["envoy"]["mut-timeout-request-absent"].partition(b"\r\n\r\n")[2]
    timeout = seen.index(b"x-envoy-expected-rq-timeout-ms: 10000\r\n")
    assert timeout < seen.index(b"user-agent: added\r\n") < seen.index(b"x-custom: vhost\r\n")
