"""The connection manager's per-request stats over the stats store (its handles counted in
place, no call per change) and over any other Stats (each change by name through the
handle) come out the same: downstream_rq_total/_completed/_Nxx, the active-request gauge
back at 0, one downstream_rq_time value per request."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from remora.proxy.stats import StatsStore
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

P = "http.inbound_0.0.0.0_18080."


class _ByName:
    """A Stats that is not the store: every change arrives by name."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.gauges: Counter[str] = Counter()
        self.observed: Counter[str] = Counter()

    def inc(self, name: str, value: int = 1) -> None:
        self.counters[name] += value

    def gauge_add(self, name: str, delta: int) -> None:
        self.gauges[name] += delta

    def observe(self, name: str, value_ms: float) -> None:
        self.observed[name] += 1


async def _exchange(stats: Any) -> tuple[dict[str, int], int, int]:
    app = await App().start()
    ctx = FakeContext(FakeClusterManager(FakeCluster("app", [app.addr])))
    ctx.stats = stats
    routes = [{"name": "default", "match": {"prefix": "/"},
               "route": {"cluster": "app", "timeout": "0s"}}]
    hcm = build_hcm(hcm_config(routes, domains=["srv"]), ctx)
    if isinstance(stats, StatsStore):
        assert hcm._inlined  # the store's own handles: counted in place
    else:
        assert not hcm._inlined
    try:
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            statuses = []
            for path, host in (("/a", "srv"), ("/status/503", "srv"), ("/b", "other"),
                               ("/status/302", "srv"), ("/c", "srv")):
                statuses.append((await c.get(path, host=host)).status)
            c.close()
            assert statuses == [200, 503, 404, 302, 200]
            await asyncio.sleep(0.05)
    finally:
        await app.stop()
    counters = {k: v for k, v in stats.counters.items() if k.startswith(P) and v}
    if isinstance(stats, StatsStore):
        hist = stats.histograms[P + "downstream_rq_time"]
        rq_time = hist.count
    else:
        rq_time = stats.observed[P + "downstream_rq_time"]
    return counters, stats.gauges[P + "downstream_rq_active"], rq_time


def test_request_stats_in_place_equal_stats_by_name() -> None:
    async def body() -> None:
        store = await _exchange(StatsStore())
        by_name = await _exchange(_ByName())
        assert store == by_name
        counters, active, rq_time = store
        assert counters[P + "downstream_rq_total"] == 5
        assert counters[P + "downstream_rq_completed"] == 5
        assert (counters[P + "downstream_rq_2xx"], counters[P + "downstream_rq_3xx"],
                counters[P + "downstream_rq_4xx"], counters[P + "downstream_rq_5xx"]) == \
            (2, 1, 1, 1)
        assert active == 0 and rq_time == 5
    asyncio.run(asyncio.wait_for(body(), 20))
