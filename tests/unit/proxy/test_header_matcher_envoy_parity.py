"""HeaderMatcher (route match, RBAC header permission, network RBAC) held to a real Envoy
1.40 on loopback: repeated, absent and inverted headers for every matcher kind.

Envoy's HeaderUtility::HeaderDataBaseImpl (source/common/http/header_utility.cc) matches
a header its header map holds as separate entries (a repeated name that is not inline)
value by value: one matching value is a match, an inverted matcher matches when none
does; an inline header's repeated lines are one joined value (header_map.py). An absent
header matches only present_match false (or an inverted present_match), unless
treat_missing_header_as_empty makes it one empty value. remora once matched the
comma-joined value (an RBAC DENY on ``x-role: evil`` let ``x-role: good`` +
``x-role: evil`` through) and matched an inverted matcher on an absent header.

One bootstrap: per header name, a listener whose routes each carry one matcher case
(direct_response 200, a catch-all 404 after them), and per case an HTTP RBAC listener
(DENY on the matcher's permission). It runs once by `envoy` and once by `remora proxy`;
the same requests, for a non-inline name and an inline one, go to every listener; route
choice and allow/deny must be the same. Needs the envoy binary; no root.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import free_port

pytestmark = pytest.mark.envoy

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
      "HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"

# case: the HeaderMatcher without its name
CASES: dict[str, dict[str, Any]] = {
    "exact": {"exact_match": "b"},
    "exact-joined": {"exact_match": "a,b"},
    "exact-empty": {"exact_match": ""},
    "prefix": {"prefix_match": "b"},
    "suffix": {"suffix_match": "a"},
    "contains-comma": {"contains_match": ","},
    "regex": {"safe_regex_match": {"regex": "b"}},
    "regex-joined": {"safe_regex_match": {"regex": "a,b"}},
    "sm-exact": {"string_match": {"exact": "b"}},
    "sm-exact-joined": {"string_match": {"exact": "a,b"}},
    "sm-prefix": {"string_match": {"prefix": "b"}},
    "sm-icase": {"string_match": {"exact": "B", "ignore_case": True}},
    # bytes beyond ASCII compare as bytes, and ignore_case folds ASCII letters only
    # (absl's EqualsIgnoreCase)
    "exact-utf8": {"exact_match": "\u00e9"},
    "sm-icase-utf8": {"string_match": {"exact": "\u00e9", "ignore_case": True}},
    "range": {"range_match": {"start": 1, "end": 5}},
    "present": {"present_match": True},
    "present-false": {"present_match": False},
    "none": {},
    "inv-exact": {"exact_match": "b", "invert_match": True},
    "inv-sm-exact": {"string_match": {"exact": "b"}, "invert_match": True},
    "inv-regex": {"safe_regex_match": {"regex": "b"}, "invert_match": True},
    "inv-range": {"range_match": {"start": 1, "end": 5}, "invert_match": True},
    "inv-present": {"present_match": True, "invert_match": True},
    "inv-present-false": {"present_match": False, "invert_match": True},
    "inv-none": {"invert_match": True},
    "empty-exact": {"exact_match": "", "treat_missing_header_as_empty": True},
    "empty-sm-exact": {"string_match": {"exact": ""}, "treat_missing_header_as_empty": True},
    "empty-inv-exact": {"exact_match": "b", "invert_match": True,
                        "treat_missing_header_as_empty": True},
    "empty-present": {"present_match": True, "treat_missing_header_as_empty": True},
    "empty-present-false": {"present_match": False, "treat_missing_header_as_empty": True},
}
# the request's lines of the header: none, one, repeated
VALUES: dict[str, list[str]] = {
    "absent": [], "b": ["b"], "a|b": ["a", "b"], "b|a": ["b", "a"], "a,b": ["a,b"],
    "empty": [""], "3|9": ["3", "9"], "empty|b": ["", "b"],
    "B": ["B"], "e-acute": ["\u00e9"], "E-acute": ["\u00c9"],  # (sent as UTF-8)
}
NAMES = ("x-h", "user-agent")  # not inline in Envoy 1.40's request map, inline


def _hcm(name: str, routes: list[dict[str, Any]],
         filters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": name,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                            "routes": routes}]},
        "http_filters": [*filters, {"name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER}}]}}


def _listener(name: str, port: int, filters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}},
            "filter_chains": [{"filters": filters}]}


def _deny(matcher: dict[str, Any]) -> dict[str, Any]:
    return {"action": "DENY", "policies": {"p": {"permissions": [{"header": matcher}],
                                                 "principals": [{"any": True}]}}}


def _direct(status: int, body: str) -> dict[str, Any]:
    return {"status": status, "body": {"inline_string": body}}


def _bootstrap(ports: dict[tuple[str, str], int], admin: int) -> dict[str, Any]:
    listeners = []
    for hname in NAMES:
        routes: list[dict[str, Any]] = [
            {"match": {"path": f"/{case}", "headers": [{"name": hname, **m}]},
             "direct_response": _direct(200, "hit")} for case, m in CASES.items()]
        routes.append({"match": {"prefix": "/"}, "direct_response": _direct(404, "miss")})
        listeners.append(_listener(f"route-{hname}", ports[("route", hname)],
                                   [_hcm("r", routes, [])]))
        ok = [{"match": {"prefix": "/"}, "direct_response": _direct(200, "ok")}]
        for case, m in CASES.items():
            rules = _deny({"name": hname, **m})
            listeners.append(_listener(f"rbac-{hname}-{case}", ports[(case, hname)], [_hcm(
                "h", ok, [{"name": "envoy.filters.http.rbac",
                           "typed_config": {"@type": HTTP_RBAC, "rules": rules}}])]))
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": admin}}},
            "static_resources": {"listeners": listeners}}


def _status(port: int, path: str, lines: list[tuple[str, str]]) -> str:
    """The status code of one request with LINES as extra header lines."""
    extra = "".join(f"{n}: {v}\r\n" for n, v in lines)
    raw = f"GET {path} HTTP/1.1\r\nHost: a\r\n{extra}Connection: close\r\n\r\n".encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    out = b""
    try:
        s.sendall(raw)
        while b"\r\n" not in out and (chunk := s.recv(65536)):
            out += chunk
    except ConnectionResetError:
        pass
    finally:
        s.close()
    return out.split(b" ", 2)[1].decode() if out else "closed"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[dict[str, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("hdrmatch")
    found: dict[str, dict[str, str]] = {}
    for kind in ph.KINDS:
        ports = {("route", h): free_port() for h in NAMES}
        ports.update({(c, h): free_port() for c in CASES for h in NAMES})
        cfg = tmp / f"{kind}.json"
        cfg.write_text(json.dumps(_bootstrap(ports, free_port())))
        got: dict[str, str] = {}
        with lp.loopback_proxy(kind, cfg, ports[("route", "x-h")]):
            for hname in NAMES:
                for case in CASES:
                    for vname, vals in VALUES.items():
                        lines = [(hname, v) for v in vals]
                        got[f"route {hname} {case} {vname}"] = _status(
                            ports[("route", hname)], f"/{case}", lines)
                        got[f"rbac {hname} {case} {vname}"] = _status(
                            ports[(case, hname)], "/", lines)
        found[kind] = got
    yield found


def test_every_decision_same_as_envoy(outcomes: dict[str, dict[str, str]]) -> None:
    envoy, remora = outcomes["envoy"], outcomes["remora"]
    assert envoy.keys() == remora.keys()
    differ = {case: {"remora": remora[case], "envoy": envoy[case]} for case in envoy
              if remora[case] != envoy[case]}
    assert not differ, json.dumps(differ, indent=1)


def test_envoys_decisions_are_what_the_rule_says(outcomes: dict[str, dict[str, str]]) -> None:
    """Envoy's own answers for the cases the QA pass found (so the comparison is not
    between two sets of failures)."""
    envoy = outcomes["envoy"]
    # a repeated non-inline header: value by value, no joined value
    assert envoy["route x-h exact a|b"] == "200"
    assert envoy["rbac x-h exact a|b"] == "403"  # a DENY on one of the values denies
    assert envoy["route x-h exact-joined a|b"] == "404"
    assert envoy["route x-h contains-comma a|b"] == "404"
    assert envoy["route x-h inv-exact a|b"] == "404"  # inverted: no value may match
    assert envoy["route x-h range 3|9"] == "200"
    # an inline header's lines are one joined value
    assert envoy["route user-agent exact a|b"] == "404"
    assert envoy["route user-agent exact-joined a|b"] == "200"
    # absent: invert_match does not match, present_match false does
    assert envoy["route x-h inv-exact absent"] == "404"
    assert envoy["rbac x-h inv-exact absent"] == "200"
    assert envoy["route x-h present-false absent"] == "200"
    assert envoy["route x-h inv-present absent"] == "200"
    assert envoy["route x-h empty-inv-exact absent"] == "200"
    assert envoy["route x-h empty-present-false absent"] == "404"
    # legacy exact_match "" is any value, string_match exact "" only an empty one
    assert envoy["route x-h exact-empty b"] == "200"
    assert envoy["route x-h empty-sm-exact b"] == "404"
