"""The router's host selection on a retry with the previous_hosts predicate: the route's
host_selection_retry_max_attempts reaches the cluster, which re-picks an excluded host up
to that many times and then uses its last pick (Envoy's behaviour, see
tests/unit/proxy/test_core_envoy_parity.py); UH only when no host is healthy, counted once.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-retrypolicy-host-selection-retry-max-attempts
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from remora.proxy.interfaces import ConnectionFacts, Upstream
from remora.proxy.stats import StatsStore
from remora.proxy.stream_info import StreamInfo
from remora.proxy.upstream.cluster import ClusterImpl
from remora.proxy.upstream.config import parse_cluster
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
from tests.unit.proxy.http.test_hcm_basic import run
from tests.unit.proxy.http.test_hcm_errors import PREVIOUS_HOSTS, _retry_route
from tests.unit.proxy.proxy_helpers import free_port


@pytest.mark.parametrize("attempts,status,picked", [(None, 503, "bad"), ("3", 200, "good")])
def test_host_selection_retry_max_attempts_reaches_the_cluster(
        attempts: str | None, status: int, picked: str) -> None:
    """Round robin over bad, bad, bad, good: after `bad` failed, one re-pick (the default)
    lands on `bad` again and is used anyway; three re-picks reach `good`."""
    async def body() -> None:
        bad = await App(fixed_status=503).start()
        good = await App().start()
        cluster = FakeCluster("app", [bad.addr] * 3 + [good.addr])
        ctx = FakeContext(FakeClusterManager(cluster))
        policy: dict[str, Any] = {"retry_on": "5xx", "num_retries": 1,
                                  "retry_host_predicate": PREVIOUS_HOSTS}
        if attempts is not None:
            policy["host_selection_retry_max_attempts"] = attempts
        hcm = build_hcm(hcm_config([_retry_route(policy)]), ctx)
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            assert (await c.get("/")).status == status
            c.close()
        assert cluster.reselections == [int(attempts or 1)] * 2
        info = ctx.logger.infos[0]
        assert info.upstream_request_attempt_count == 2
        assert info.upstream_host == f"127.0.0.1:{(bad if picked == 'bad' else good).port}"
    run(body)


class _GoingDown(ClusterImpl):
    """A real cluster whose only host turns unhealthy (as by an EDS update) once a
    connection to it failed."""

    async def connect(self, facts: ConnectionFacts, info: StreamInfo,
                      exclude_hosts: frozenset[str] = frozenset(), *,
                      host_selection_retry_max_attempts: int = 1, tls_override: Any = None,
                      target: tuple[str, int] | None = None) -> Upstream:
        try:
            return await super().connect(
                facts, info, exclude_hosts,
                host_selection_retry_max_attempts=host_selection_retry_max_attempts,
                tls_override=tls_override, target=target)
        finally:
            self.set_hosts([dataclasses.replace(h, healthy=False) for h in self.hosts])


def test_no_healthy_host_on_a_previous_hosts_retry_counts_none_healthy_once() -> None:
    async def body() -> None:
        dead = free_port()
        stats = StatsStore()
        cfg = parse_cluster({"name": "app", "type": "STATIC", "connect_timeout": "1s",
                             "load_assignment": {"cluster_name": "app", "endpoints": [
                                 {"lb_endpoints": [{"endpoint": {"address": {
                                     "socket_address": {"address": "127.0.0.1",
                                                        "port_value": dead}}}}]}]}}, "c")
        cluster = _GoingDown(cfg, stats)
        ctx = FakeContext(FakeClusterManager(cluster))  # type: ignore[arg-type]
        hcm = build_hcm(hcm_config([_retry_route({
            "retry_on": "connect-failure", "num_retries": 1,
            "retry_host_predicate": PREVIOUS_HOSTS})]), ctx)
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/")
            c.close()
        assert r.status == 503
        assert stats.counters["cluster.app.upstream_cx_connect_fail"] == 1
        # the router counts it (Envoy's router, on no host): in the proxy one StatsStore
        # holds the cluster's and the router's stats (server/runtime.py); here two
        assert (stats.counters["cluster.app.upstream_cx_none_healthy"]
                + ctx.stats.counters["cluster.app.upstream_cx_none_healthy"]) == 1
        info = ctx.logger.infos[0]
        assert info.upstream_request_attempt_count == 2
        assert "UH" in info.flags_string()
    run(body)
