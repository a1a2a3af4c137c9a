"""The connection manager works out once per route which HTTP filters act on its requests:
fault only where a fault is configured (on the route, its virtual host, or the filter),
cors only under an enabled policy; the router always. Requests on other routes skip them."""

from __future__ import annotations

from typing import Any

from remora.proxy.http.cors import CorsFilter
from remora.proxy.http.fault import FaultFilter
from remora.proxy.http.router import Router
from tests.unit.proxy.http.fakes import (
    FAULT_TYPE,
    FakeClusterManager,
    FakeContext,
    app_route,
    build_hcm,
    hcm_config,
)

CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
ABORT = {"@type": FAULT_TYPE, "abort": {"http_status": 418, "percentage": {"numerator": 100}}}


def _kinds(filters: list[Any]) -> list[type]:
    return [type(f) for f in filters]


def test_filters_inert_on_a_route_leave_its_chain() -> None:
    cors_on = {"@type": CORS_POLICY, "allow_origin_string_match": [{"exact": "http://a"}]}
    cors_off = {**cors_on, "filter_enabled": {"default_value": {"numerator": 0}}}
    cfg = hcm_config([
        app_route("fault", "/fault", {"envoy.filters.http.fault": ABORT}),
        app_route("cors", "/cors", {"envoy.filters.http.cors": cors_on}),
        app_route("cors-off", "/off", {"envoy.filters.http.cors": cors_off}),
        app_route("plain", "/"),
    ])
    hcm = build_hcm(cfg, FakeContext(FakeClusterManager()))
    routes = {r.name: r for r in hcm.cfg.route_table.vhosts[0].routes}
    chains = {name: hcm._route_chain(r) for name, r in routes.items()}
    assert _kinds(chains["fault"][0]) == [FaultFilter, Router]
    assert _kinds(chains["cors"][0]) == [CorsFilter, Router]
    assert _kinds(chains["cors"][1]) == [CorsFilter]  # its response headers too
    assert _kinds(chains["cors-off"][0]) == [Router]
    assert _kinds(chains["plain"][0]) == [Router] and chains["plain"][1] == []
    assert _kinds(hcm.decoders) == [FaultFilter, CorsFilter, Router]  # before routing


def test_a_fault_on_the_filter_itself_applies_to_every_route() -> None:
    cfg = hcm_config([app_route("plain", "/")], http_filters=[
        {"name": "envoy.filters.http.fault", "typed_config": ABORT},
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}])
    hcm = build_hcm(cfg, FakeContext(FakeClusterManager()))
    (route,) = hcm.cfg.route_table.vhosts[0].routes
    assert _kinds(hcm._route_chain(route)[0]) == [FaultFilter, Router]
