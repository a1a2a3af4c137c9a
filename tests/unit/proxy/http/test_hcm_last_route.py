"""The connection manager keeps the last request's route and its filter chain at hand:
requests alternating between routes each still run their own route's chain (the fault
filter aborts only on the route that configures it)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.unit.proxy.http.fakes import (
    App,
    Client,
    FakeCluster,
    FakeClusterManager,
    FakeContext,
    build_hcm,
    hcm_config,
    proxy,
)

FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
ABORT = {"@type": FAULT, "abort": {"http_status": 418, "percentage": {"numerator": 100}}}


def _route(name: str, prefix: str, per_filter: dict[str, Any] | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"name": name, "match": {"prefix": prefix},
                         "route": {"cluster": "app", "timeout": "0s"}}
    if per_filter:
        r["typed_per_filter_config"] = per_filter
    return r


def test_alternating_routes_each_run_their_own_chain() -> None:
    async def body() -> None:
        app = await App().start()
        ctx = FakeContext(FakeClusterManager(FakeCluster("app", [app.addr])))
        hcm = build_hcm(hcm_config([_route("fault", "/fault",
                                           {"envoy.filters.http.fault": ABORT}),
                                    _route("plain", "/")]), ctx)
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
