"""envoy.filters.http.rbac in the connection manager: a request its rules deny gets 403
``RBAC: access denied`` without reaching the app, an allowed one goes on; each decision
counts http.<stat_prefix>.rbac.allowed / .denied (listed from the first of each), and
the rules see the request's headers and path as the connection manager decoded them."""

from __future__ import annotations

from tests.unit.proxy.http.fakes import Client, hcm_config, proxy
from tests.unit.proxy.http.test_hcm_basic import run, setup

RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
PREFIX = "http.inbound_0.0.0.0_18080.rbac."


def _filters(rules: dict[str, object] | None) -> list[dict[str, object]]:
    typed: dict[str, object] = {"@type": RBAC}
    if rules is not None:
        typed["rules"] = rules
    return [{"name": "envoy.filters.http.rbac", "typed_config": typed},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]


def test_rules_see_headers_and_path_and_count_each_decision() -> None:
    rules = {"action": "ALLOW", "policies": {"alice-on-api": {
        "permissions": [{"url_path": {"path": {"prefix": "/api"}}}],
        "principals": [{"header": {"name": "x-user", "string_match": {"exact": "alice"}}}]}}}

    async def body() -> None:
        hcm, (app,), _, ctx = await setup(hcm_config(http_filters=_filters(rules)))
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/api/x", headers="x-user: alice\r\n")
            assert r.status == 200
            assert PREFIX + "denied" not in ctx.stats.counters  # listed from its first
            r = await c.get("/api/x", headers="x-user: bob\r\n")
            assert (r.status, r.body) == (403, b"RBAC: access denied")
            assert (await c.get("/other", headers="x-user: alice\r\n")).status == 403
            # the filter read the request's headers, it did not change them
            assert (await c.get("/api/y?q=1", headers="x-user: alice\r\n")).status == 200
        assert [s.path for s in app.seen] == ["/api/x", "/api/y?q=1"]
        assert ctx.stats.counters[PREFIX + "allowed"] == 2
        assert ctx.stats.counters[PREFIX + "denied"] == 2
        details = [i.response_code_details for i in ctx.logger.infos]
        assert details[1] == details[2] == "rbac_access_denied_matched_policy[none]"
        assert ctx.logger.infos[3].request_headers is not None
        assert ctx.logger.infos[3].request_headers["x-user"] == "alice"
    run(body)


def test_no_rules_allows_and_counts() -> None:
    async def body() -> None:
        hcm, (app,), _, ctx = await setup(hcm_config(http_filters=_filters(None)))
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            assert (await c.get("/")).status == 200
            assert (await c.get("/")).status == 200
        assert len(app.seen) == 2
        assert ctx.stats.counters[PREFIX + "allowed"] == 2
    run(body)
