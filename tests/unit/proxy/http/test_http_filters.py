"""fault and cors filters, XFF and x-request-id handling, as Envoy 1.40 does them."""

from __future__ import annotations

import time

from tests.unit.proxy.http.fakes import FAULT_TYPE, Client, app_route, hcm_config, proxy
from tests.unit.proxy.http.test_hcm_basic import UUID, run, setup

CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"


def test_fault_abort_and_delay_per_route() -> None:
    async def body() -> None:
        cfg = hcm_config([
            app_route("abort", "/abort", {"envoy.filters.http.fault": {
                "@type": FAULT_TYPE, "abort": {"http_status": 418,
                                          "percentage": {"numerator": 100}}}}),
            app_route("never", "/never", {"envoy.filters.http.fault": {
                "@type": FAULT_TYPE, "abort": {"http_status": 500,
                                          "percentage": {"numerator": 0}}}}),
            app_route("delay", "/delay", {"envoy.filters.http.fault": {
                "@type": FAULT_TYPE, "delay": {"fixed_delay": "0.2s",
                                          "percentage": {"numerator": 100}}}}),
            app_route("default", "/"),
        ])
        hcm, (app,), _, ctx = await setup(cfg)
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/abort")
            assert (r.status, r.body) == (418, b"fault filter abort")
            assert r.header("content-type") == "text/plain"
            assert (await c.get("/never")).status == 200
            t0 = time.monotonic()
            assert (await c.get("/delay")).status == 200
            assert time.monotonic() - t0 >= 0.19
        assert [s.path for s in app.seen] == ["/never", "/delay"]
        got = [(i.flags_string(), i.response_code_details) for i in ctx.logger.infos]
        assert got == [("FI", "fault_filter_abort"), ("-", "via_upstream"),
                       ("DI", "via_upstream")]
    run(body)


def test_fault_from_headers_and_filter_level_config() -> None:
    async def body() -> None:
        filters = [
            {"name": "envoy.filters.http.fault", "typed_config": {
                "@type": FAULT_TYPE, "abort": {"header_abort": {},
                                          "percentage": {"numerator": 100}}}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ]
        hcm, _, _, _ = await setup(hcm_config(http_filters=filters))
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            assert (await c.get("/", headers="x-envoy-fault-abort-request: 503\r\n")).status \
                == 503
            assert (await c.get("/")).status == 200
    run(body)


def test_cors_preflight_and_actual_request() -> None:
    async def body() -> None:
        policy = {"@type": CORS_POLICY, "allow_origin_string_match": [{"exact": "http://a.example"}],
                  "allow_methods": "GET,POST", "allow_headers": "x-foo",
                  "expose_headers": "x-bar", "max_age": "100", "allow_credentials": True}
        cfg = hcm_config(vhost_extra={"typed_per_filter_config": {
            "envoy.filters.http.cors": policy}})
        hcm, (app,), _, ctx = await setup(cfg)
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/", method="OPTIONS", headers="origin: http://a.example\r\n"
                            "access-control-request-method: GET\r\n")
            assert r.status == 200 and r.body == b""
            assert [n for n, _ in r.headers] == [
                "access-control-allow-origin", "access-control-allow-credentials",
                "access-control-allow-methods", "access-control-allow-headers",
                "access-control-max-age", "access-control-expose-headers", "date", "server",
                "content-length"]
            assert r.header("access-control-allow-origin") == "http://a.example"
            # a preflight from an origin the policy does not allow goes upstream
            r = await c.get("/", method="OPTIONS", headers="origin: http://b.example\r\n"
                            "access-control-request-method: GET\r\n")
            assert r.json()["method"] == "OPTIONS"
            r = await c.get("/", headers="origin: http://a.example\r\n")
            assert r.header("access-control-allow-origin") == "http://a.example"
            assert r.header("access-control-expose-headers") == "x-bar"
            assert (await c.get("/")).header("access-control-allow-origin") is None
        assert len(app.seen) == 3
        assert ctx.logger.infos[0].response_code_details == "cors_response"
    run(body)


def test_xff_untouched_without_use_remote_address() -> None:
    """Istio's sidecar: XFF passes through (absent stays absent: the seed's empty XFF);
    the logged downstream remote address becomes the XFF client with port 0 as in Envoy;
    a client's x-request-id is kept."""
    async def body() -> None:
        hcm, (_app,), _, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            seen = (await c.get("/", headers="x-forwarded-for: 10.0.0.1\r\n"
                                "x-request-id: abc\r\nx-envoy-internal: true\r\n")).json()
            hm = dict(seen["headers"])
            assert hm["x-forwarded-for"] == "10.0.0.1" and hm["x-request-id"] == "abc"
            assert "x-envoy-internal" not in hm and "x-envoy-external-address" not in hm
            seen = (await c.get("/")).json()
            assert "x-forwarded-for" not in dict(seen["headers"])
        first, second = ctx.logger.infos
        assert first.downstream_remote_address == "10.0.0.1:0"
        assert second.downstream_remote_address is not None
        assert second.downstream_remote_address.startswith("127.0.0.1:")
    run(body)


def test_xff_appended_with_use_remote_address() -> None:
    async def body() -> None:
        hcm, _, _, _ctx = await setup(hcm_config(use_remote_address=True))
        async with proxy(hcm) as addr:
            c = await Client.connect(addr, local_ip="127.0.0.1")
            seen = (await c.get("/", headers="x-forwarded-for: 1.2.3.4\r\n"
                                "x-request-id: abc\r\n")).json()
        hm = dict(seen["headers"])
        node = hcm.node_ip() or "127.0.0.1"  # a loopback peer is appended as the node's IP
        assert hm["x-forwarded-for"] == f"1.2.3.4,{node}"
        assert hm["x-envoy-external-address"] == "127.0.0.1"
        assert UUID.match(hm["x-request-id"])  # an edge request's id is regenerated
        names = [n for n, _ in seen["headers"]]
        assert names.index("x-forwarded-proto") < names.index("x-envoy-external-address")
    run(body)


def test_xff_num_trusted_hops_picks_the_client() -> None:
    async def body() -> None:
        hcm, _, _, ctx = await setup(hcm_config(use_remote_address=True,
                                                xff_num_trusted_hops=1,
                                                preserve_external_request_id=True))
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            seen = (await c.get("/", headers="x-forwarded-for: 9.9.9.9, 5.6.7.8\r\n"
                                "x-request-id: keep\r\n")).json()
        hm = dict(seen["headers"])
        assert hm["x-envoy-external-address"] == "5.6.7.8"
        assert hm["x-request-id"] == "keep"
        assert ctx.logger.infos[0].downstream_remote_address == "5.6.7.8:0"
    run(body)


def test_request_id_not_generated_when_disabled() -> None:
    async def body() -> None:
        hcm, _, _, _ = await setup(hcm_config(generate_request_id=False))
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            seen = (await c.get("/")).json()
        assert "x-request-id" not in dict(seen["headers"])
    run(body)


def test_a_clients_request_id_goes_through_when_ids_are_not_generated() -> None:
    """generate_request_id false leaves x-request-id alone, on an edge request too
    (use_remote_address): Envoy 1.40 forwards the client's value (ConnectionManagerUtility::
    mutateRequestHeaders touches it only when it generates ids)."""
    async def body() -> None:
        hcm, _, _, _ = await setup(hcm_config(generate_request_id=False,
                                              use_remote_address=True))
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            seen = (await c.get("/", headers="x-request-id: abc\r\n")).json()
        assert dict(seen["headers"])["x-request-id"] == "abc"
    run(body)


def test_upstream_service_time_measures_the_upstream() -> None:
    async def body() -> None:
        hcm, _, _, _ = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/slow/120")
        assert 110 <= int(r.header("x-envoy-upstream-service-time") or 0) < 1000
    run(body)




def test_route_header_mutations_in_envoys_order() -> None:
    async def body() -> None:
        route = {"name": "r", "match": {"prefix": "/"},
                 "route": {"cluster": "app", "timeout": "0s"},
                 "request_headers_to_add": [
                     {"header": {"key": "x-route", "value": "r"}},
                     {"header": {"key": "x-level", "value": "route"},
                      "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
                 "request_headers_to_remove": ["x-secret"],
                 "response_headers_to_add": [{"header": {"key": "x-served-by", "value": "100%%"}}],
                 "response_headers_to_remove": ["x-app"]}
        cfg = hcm_config([route], vhost_extra={"request_headers_to_add": [
            {"header": {"key": "x-level", "value": "vhost"}, "append": False},
            {"header": {"key": "x-route", "value": "v"}, "append_action": "ADD_IF_ABSENT"}]})
        hcm, _, _, ctx = await setup(cfg)
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/", headers="x-secret: 1\r\nx-level: client\r\n")
        seen = r.json()["headers"]
        hm = dict(seen)
        assert "x-secret" not in hm
        assert hm["x-level"] == "vhost"  # the enclosing level is applied last
        assert [v for n, v in seen if n == "x-route"] == ["r"]
        assert r.header("x-served-by") == "100%"
        # as Envoy 1.40 orders them: an overwritten header moves to the end; response
        # additions come right after x-envoy-upstream-service-time
        assert [n for n, _ in seen][-2:] == ["x-route", "x-level"]
        names = [n for n, _ in r.headers]
        assert names[names.index("x-envoy-upstream-service-time") + 1] == "x-served-by"
        assert ctx.logger.infos[0].request_headers["x-level"] == "vhost"
    run(body)


def test_header_value_substitution_is_refused() -> None:
    import pytest

    from remora.proxy.config.strict import ConfigError
    from tests.unit.proxy.http.fakes import FakeCluster, FakeClusterManager, FakeContext, build_hcm
    route = {"match": {"prefix": "/"}, "route": {"cluster": "app"},
             "request_headers_to_add": [{"header": {"key": "x-ip",
                                                    "value": "%DOWNSTREAM_REMOTE_ADDRESS%"}}]}
    with pytest.raises(ConfigError) as err:
        build_hcm(hcm_config([route]), FakeContext(FakeClusterManager(FakeCluster("app", []))))
    assert err.value.path.endswith("request_headers_to_add[0].header.value")
