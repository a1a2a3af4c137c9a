"""Config that Envoy 1.40 refuses, remora refuses too, naming the field (a QA pass found
remora accepting each and then running it wrongly); the controls next to each are
accepted by both. Each bootstrap goes to `envoy --mode validate` and to remora's loader
(what `remora proxy --mode validate` runs).

- HeaderParser::configure: ``:``-prefixed and host headers may not be added or removed
  (request and response, route, virtual host and route config levels);
- RouteMatcher: a domain (lower-cased) in two virtual hosts, or "*" twice;
- RBAC Permission/Principal ``any`` is ``const: true``; the network RBAC filter refuses a
  ``header`` rule at any depth;
- MessageUtil::validateDurations: a negative duration anywhere;
- an inline route_config's validate_clusters defaults to true: a route to a cluster that
  does not exist;
- an HTTP filter is found by its typed_config's type URL only: none is refused.
Needs the envoy binary; no root."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from remora.errors import RemoraError
from remora.proxy import process
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import addr

pytestmark = pytest.mark.envoy

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
      "HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
NET_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM_AT = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
VH_AT = HCM_AT + ".route_config.virtual_hosts"


def _base() -> dict[str, Any]:
    hcm = {"@type": HCM, "stat_prefix": "x",
           "route_config": {"name": "rc", "virtual_hosts": [
               {"name": "v", "domains": ["*"], "routes": [
                   {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": ROUTER}}]}
    return {"static_resources": {
        "listeners": [{"name": "l", "address": addr("127.0.0.1", 10000), "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": hcm}]}]}],
        "clusters": [{"name": "c", "type": "STATIC", "connect_timeout": "1s",
                      "load_assignment": {"cluster_name": "c", "endpoints": [
                          {"lb_endpoints": [{"endpoint": {"address": addr("127.0.0.1",
                                                                          10001)}}]}]}}]}}


def _hcm(b: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = b["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"][0]["typed_config"]
    return hcm


def _vhosts(b: dict[str, Any]) -> list[dict[str, Any]]:
    vhosts: list[dict[str, Any]] = _hcm(b)["route_config"]["virtual_hosts"]
    return vhosts


def _route(b: dict[str, Any]) -> dict[str, Any]:
    route: dict[str, Any] = _vhosts(b)[0]["routes"][0]
    return route


def _set_route(key: str, value: Any) -> Any:
    return lambda b: _route(b).__setitem__(key, value)


def _set_vhost(key: str, value: Any) -> Any:
    return lambda b: _vhosts(b)[0].__setitem__(key, value)


def _second_vhost(*domains: str) -> Any:
    def edit(b: dict[str, Any]) -> None:
        _vhosts(b)[0]["domains"] = ["a.example"]
        _vhosts(b).append({"name": "w", "domains": list(domains), "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]})
    return edit


def _rbac(principal: dict[str, Any], permission: dict[str, Any]) -> Any:
    def edit(b: dict[str, Any]) -> None:
        rules = {"action": "DENY", "policies": {"p": {"permissions": [permission],
                                                      "principals": [principal]}}}
        _hcm(b)["http_filters"].insert(0, {"name": "envoy.filters.http.rbac",
                                           "typed_config": {"@type": HTTP_RBAC,
                                                            "rules": rules}})
    return edit


def _network_rbac(permission: dict[str, Any]) -> Any:
    def edit(b: dict[str, Any]) -> None:
        rules = {"action": "DENY", "policies": {"p": {"permissions": [permission],
                                                      "principals": [{"any": True}]}}}
        b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"] = [
            {"name": "envoy.filters.network.rbac",
             "typed_config": {"@type": NET_RBAC, "stat_prefix": "n", "rules": rules}},
            {"name": "envoy.filters.network.tcp_proxy",
             "typed_config": {"@type": TCP_PROXY, "stat_prefix": "t", "cluster": "c"}}]
    return edit


def _no_router_config(b: dict[str, Any]) -> None:
    del _hcm(b)["http_filters"][0]["typed_config"]


def _unknown_cluster(validate: bool | None) -> Any:
    def edit(b: dict[str, Any]) -> None:
        _route(b)["route"]["cluster"] = "nope"
        if validate is not None:
            _hcm(b)["route_config"]["validate_clusters"] = validate
    return edit


def _header(name: str) -> dict[str, Any]:
    return {"header": {"key": name, "value": "v"}}


_ROUTE0 = VH_AT + "[0].routes[0]"
# name: (edit, the path remora's message names; None: both accept)
CASES: dict[str, tuple[Any, str | None]] = {
    "remove-host": (_set_route("request_headers_to_remove", ["x-a", "Host"]),
                    _ROUTE0 + ".request_headers_to_remove[1]"),
    "remove-path-vhost": (_set_vhost("request_headers_to_remove", [":path"]),
                          VH_AT + "[0].request_headers_to_remove[0]"),
    "remove-host-response": (_set_route("response_headers_to_remove", ["host"]),
                             _ROUTE0 + ".response_headers_to_remove[0]"),
    "remove-ordinary": (_set_route("request_headers_to_remove", ["x-a"]), None),
    "add-authority": (_set_route("request_headers_to_add", [_header(":authority")]),
                      _ROUTE0 + ".request_headers_to_add[0].header.key"),
    "add-host": (_set_route("request_headers_to_add", [_header("host")]),
                 _ROUTE0 + ".request_headers_to_add[0].header.key"),
    "add-ordinary": (_set_route("request_headers_to_add", [_header("x-host")]), None),
    "two-wildcards": (_second_vhost("*"), None),  # the first is a.example now
    "wildcard-twice": (lambda b: _vhosts(b).append(
        {"name": "w", "domains": ["*"], "routes": []}), VH_AT + "[1].domains[0]"),
    "domain-twice": (_second_vhost("b.example", "A.EXAMPLE"), VH_AT + "[1].domains[1]"),
    "domain-twice-one-vhost": (_set_vhost("domains", ["a.example", "a.example"]),
                               VH_AT + "[0].domains[1]"),
    "domains-distinct": (_second_vhost("b.example", "*.a.example", "a.example:80"), None),
    "rbac-any-false": (_rbac({"any": True}, {"any": False}), "permissions[0].any"),
    "rbac-principal-any-false": (_rbac({"any": False}, {"any": True}), "principals[0].any"),
    "network-rbac-header": (_network_rbac({"not_rule": {"header": {
        "name": "x", "present_match": True}}}), "permissions[0].not_rule.header"),
    "network-rbac-path": (_network_rbac({"url_path": {"path": {"prefix": "/"}}}), None),
    "negative-timeout": (lambda b: _route(b)["route"].__setitem__("timeout", "-1s"),
                         _ROUTE0 + ".route.timeout"),
    "negative-connect-timeout": (lambda b: b["static_resources"]["clusters"][0].__setitem__(
        "connect_timeout", "-0.5s"), "static_resources.clusters[0].connect_timeout"),
    "zero-timeout": (lambda b: _route(b)["route"].__setitem__("timeout", "0s"), None),
    "unknown-cluster": (_unknown_cluster(None), _ROUTE0 + ".route.cluster"),
    "unknown-cluster-validated": (_unknown_cluster(True), _ROUTE0 + ".route.cluster"),
    "unknown-cluster-not-validated": (_unknown_cluster(False), None),
    # StringMatcher: ignore_case does nothing to safe_regex, and Envoy refuses the pair
    "icase-regex-header": (_set_route("match", {"prefix": "/", "headers": [
        {"name": "x-a", "string_match": {"safe_regex": {"regex": "a"}, "ignore_case": True}}]}),
        ".string_match.ignore_case"),
    "icase-regex-rbac-path": (_rbac({"any": True}, {"url_path": {"path": {
        "safe_regex": {"regex": "/a"}, "ignore_case": True}}}), ".path.ignore_case"),
    "icase-prefix-rbac-path": (_rbac({"any": True}, {"url_path": {"path": {
        "prefix": "/A", "ignore_case": True}}}), None),
    "router-without-typed-config": (_no_router_config,
                                    HCM_AT + ".http_filters[0].typed_config"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_where_envoy_refuses(case: str, tmp_path: Path) -> None:
    edit, at = CASES[case]
    bootstrap = copy.deepcopy(_base())
    edit(bootstrap)
    path = tmp_path / "bootstrap.json"
    envoy_ok, said = lp.envoy_validates(bootstrap, path)
    assert envoy_ok == (at is None), said
    problem = fix = None
    try:
        process.load(str(path), 1)
    except RemoraError as e:
        problem, fix = str(e), e.fix
    if at is None:
        assert problem is None, problem
    else:
        assert problem is not None, f"remora accepted {json.dumps(bootstrap)}"
        assert at in problem, problem
        assert fix, problem  # what to do about it, not only what is wrong
