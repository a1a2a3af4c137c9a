"""The connection manager keeps the last request's route and its filter chain at hand:
requests alternating between routes each still run their own route's chain (the fault
filter aborts only on the route that configures it)."""

from __future__ import annotations

import asyncio

from tests.unit.proxy.http.fakes import (
    FAULT_TYPE,
    App,
    Client,
    FakeCluster,
    FakeClusterManager,
    FakeContext,
    app_route,
    build_hcm,
    hcm_config,
    proxy,
)

ABORT = {"@type": FAULT_TYPE, "abort": {"http_status": 418, "percentage": {"numerator": 100}}}


def test_alternating_routes_each_run_their_own_chain() -> None:
    async def body() -> None:
        app = await App().start()
        ctx = FakeContext(FakeClusterManager(FakeCluster("app", [app.addr])))
        hcm = build_hcm(hcm_config([app_route("fault", "/fault",
                                           {"envoy.filters.http.fault": ABORT}),
                                    app_route("plain", "/")]), ctx)
        try:
            async with proxy(hcm) as addr:
                c = await Client.connect(addr)
                got = [(await c.get(path)).status
                       for path in ("/a", "/a", "/fault", "/fault", "/b", "/fault", "/c")]
                c.close()
        finally:
            await app.stop()
        assert got == [200, 200, 418, 418, 200, 418, 200]
        await asyncio.sleep(0.05)
        assert [i.route_name for i in ctx.logger.infos] == [
            "plain", "plain", "fault", "fault", "plain", "fault", "plain"]
    asyncio.run(asyncio.wait_for(body(), 20))
