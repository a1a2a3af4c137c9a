"""RouteConfiguration parsing and matching (pure), and strict HCM config reading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http.headers import normalize_path, xff_client
from remora.proxy.http.route_config import parse_route_configuration
from tests.unit.proxy.http.fakes import (
    FakeCluster,
    FakeClusterManager,
    FakeContext,
    build_hcm,
    hcm_config,
)


def table(vhosts: list[dict[str, Any]]) -> Any:
    return parse_route_configuration(Fields({"name": "rc", "virtual_hosts": vhosts}, "rc"))


def vh(name: str, domains: list[str], routes: list[dict[str, Any]] | None = None) -> Any:
    return {"name": name, "domains": domains, "routes": routes or [
        {"name": name, "match": {"prefix": "/"}, "route": {"cluster": name}}]}


def test_virtual_host_precedence_is_envoys() -> None:
    t = table([vh("any", ["*"]), vh("prefix", ["api.*"]), vh("suffix", ["*.example.com"]),
               vh("longsuffix", ["*.b.example.com"]), vh("exact", ["a.example.com",
                                                                    "srv:18080"])])

    def pick(host: str) -> str | None:
        r = t.route(host, "/", {})
        return r.name if r else None
    assert pick("a.example.com") == "exact"
    assert pick("A.EXAMPLE.COM") == "exact"
    assert pick("x.b.example.com") == "longsuffix"
    assert pick("x.example.com") == "suffix"
    assert pick("api.other") == "prefix"
    assert pick("srv:18080") == "exact"
    assert pick("srv") == "any"  # the port is part of the match: Istio lists both forms


def test_route_matchers_in_order() -> None:
    t = table([vh("v", ["*"], [
        {"name": "exact", "match": {"path": "/exact"}, "route": {"cluster": "c"}},
        {"name": "hdr", "match": {"prefix": "/", "headers": [
            {"name": "x-canary", "string_match": {"exact": "1"}}]}, "route": {"cluster": "c"}},
        {"name": "absent", "match": {"prefix": "/", "headers": [
            {"name": "x-v", "present_match": True, "invert_match": True}]},
         "route": {"cluster": "c"}},
        {"name": "regex", "match": {"safe_regex": {"regex": "/r/[0-9]+"}},
         "route": {"cluster": "c"}},
        {"name": "ci", "match": {"prefix": "/CI", "case_sensitive": False},
         "route": {"cluster": "c"}},
    ])])

    def pick(path: str, headers: dict[str, str] | None = None) -> str | None:
        r = t.route("h", path, {"x-v": "1"} if headers is None else headers)
        return r.name if r else None
    assert pick("/exact?x=1") == "exact"  # path match ignores the query
    assert pick("/exactly") is None
    assert pick("/any", {"x-canary": "1", "x-v": "1"}) == "hdr"
    assert pick("/any", {}) == "absent"
    assert pick("/r/123") == "regex" and pick("/r/12a") is None
    assert pick("/ci/x") == "ci"


def test_route_defaults_and_retry_policy() -> None:
    t = table([vh("v", ["*"], [{"name": "r", "match": {"prefix": "/"}, "route": {
        "cluster": "c", "retry_policy": {"retry_on": "5xx,connect-failure", "num_retries": 3,
                                         "per_try_timeout": "0.5s"}}}])])
    r = t.route("h", "/", {})
    assert r.timeout == 15.0  # Envoy's default route timeout
    assert r.retry_policy.num_retries == 3 and r.retry_policy.per_try_timeout == 0.5
    assert r.retry_policy.retry_on_status(503, None)
    assert not r.retry_policy.retry_on_status(404, None)
    assert 0 <= r.retry_policy.backoff(1) < 0.025


@pytest.mark.parametrize("routes,path", [
    ([{"match": {"prefix": "/"}, "route": {"cluster": "c", "bogus": 1}}],
     "rc.virtual_hosts[0].routes[0].route.bogus"),
    ([{"match": {"prefix": "/"}, "redirect": {"path_redirect": "/x"}}],
     "rc.virtual_hosts[0].routes[0].redirect"),
    ([{"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {
        "retry_on": "5xx,nonsense"}}}], "rc.virtual_hosts[0].routes[0].route.retry_policy"
                                          ".retry_on"),
    ([{"match": {"prefix": "/"}, "route": {"cluster": "c"}, "typed_per_filter_config": {
        "envoy.filters.http.rbac": {"@type": "x"}}}],
     "rc.virtual_hosts[0].routes[0].typed_per_filter_config.envoy.filters.http.rbac"),
])
def test_unsupported_route_fields_are_rejected_with_their_path(
        routes: list[dict[str, Any]], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        table([{"name": "v", "domains": ["*"], "routes": routes}])
    assert err.value.path.startswith(path)


def _ctx() -> FakeContext:
    return FakeContext(FakeClusterManager(FakeCluster("app", [])))


@pytest.mark.parametrize("extra,path", [
    ({"rds": {}}, "typed_config.rds"),
    ({"tracing": {"provider": {"name": "x"}}}, "typed_config.tracing"),
    ({"upgrade_configs": [{"upgrade_type": "CONNECT"}]},
     "typed_config.upgrade_configs[0].upgrade_type"),
    ({"http_filters": [{"name": "istio.metadata_exchange", "typed_config": {
        "@type": "type.googleapis.com/io.istio.http.peer_metadata.Config"}}]},
     "typed_config.http_filters[0]"),
    ({"http_filters": []}, "typed_config.http_filters"),
])
def test_hcm_rejects_what_it_does_not_implement(extra: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_hcm(hcm_config(**extra), _ctx())
    assert err.value.path == path
    assert err.value.one_line()


def _hcms(obj: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(obj, dict):
        if obj.get("name") == "envoy.filters.network.http_connection_manager":
            found.append(obj["typed_config"])
        for v in obj.values():
            found += _hcms(v)
    elif isinstance(obj, list):
        for v in obj:
            found += _hcms(v)
    return found


@pytest.mark.parametrize("name", ["server-redirect", "server-tproxy", "client-redirect"])
def test_reference_sidecar_hcms_are_accepted(data_dir: Path, name: str) -> None:
    cfg = json.loads((data_dir / "reference" / "envoy-sidecar" / f"{name}.json").read_text())
    hcms = _hcms(cfg)
    assert hcms
    for typed in hcms:
        typed = dict(typed)
        typed.pop("@type")
        hcm = build_hcm(typed, _ctx())
        assert hcm.cfg.server_name == "istio-envoy" and not hcm.cfg.use_remote_address
        assert hcm.cfg.websocket and hcm.cfg.normalize_path
        assert [type(f).__name__ for f in hcm.filters] == ["FaultFilter", "CorsFilter", "Router"]


def test_pure_helpers() -> None:
    assert xff_client("1.1.1.1, 2.2.2.2", 0) == "2.2.2.2"
    assert xff_client("1.1.1.1, 2.2.2.2", 1) == "1.1.1.1"
    assert xff_client("1.1.1.1", 1) is None and xff_client("nonsense", 0) is None
    assert normalize_path("/a/b/../../..?q=/../") == "/?q=/../"
    # other escapes keep their case, as Envoy 1.40 forwards them (checked side by side)
    assert normalize_path("/a/%2fb/%41") == "/a/%2fb/A"
    assert normalize_path("/a//b", merge_slashes=True) == "/a/b"
    assert normalize_path("x") is None


@pytest.mark.parametrize("name,type_url", [
    ("istio.metadata_exchange", "type.googleapis.com/io.istio.http.peer_metadata.Config"),
    ("istio.stats", "type.googleapis.com/stats.PluginConfig"),
])
def test_istio_only_filters_are_refused_by_name(name: str, type_url: str) -> None:
    filters = [{"name": name, "typed_config": {"@type": type_url}},
               {"name": "envoy.filters.http.router", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    with pytest.raises(ConfigError) as err:
        build_hcm(hcm_config(http_filters=filters), _ctx())
    assert err.value.path == "typed_config.http_filters[0]"
    assert name in err.value.one_line() and "proxyv2" in err.value.one_line()


def test_failure_answers_are_envoys() -> None:
    from remora.proxy.http.upstream_failure import failure_answer
    from remora.proxy.interfaces import UpstreamError

    refused = failure_answer("connect", UpstreamError("UF", "delayed connect error: "
                                                            "Connection refused"), False)
    assert refused.status == 503 and refused.flag == "UF"
    assert refused.details == ("upstream_reset_before_response_started{remote_connection_"
                               "failure|delayed_connect_error:_Connection_refused}")
    timeout = failure_answer("connect", UpstreamError("UF", ""), True)
    assert timeout.body.endswith(b"retried and the latest reset reason: connection timeout")
    assert failure_answer("connect", UpstreamError("UH", ""), False).body == (
        b"no healthy upstream")
    assert failure_answer("reset", None, False).flag == "UC"
    assert failure_answer("protocol", None, False).details == (
        "upstream_reset_before_response_started{protocol_error}")
