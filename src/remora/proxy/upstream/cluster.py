"""Clusters at run time (``interfaces.Cluster``) and the cluster manager.

https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/service_discovery
- ORIGINAL_DST (lb_policy CLUSTER_PROVIDED): the host is the downstream connection's
  original destination (``facts.local_ip:local_port`` once original_dst ran).
- STATIC: ``load_assignment``; EDS: the same message read from a watched file.
Circuit breakers: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/circuit_breaking
Stats: https://www.envoyproxy.io/docs/envoy/latest/configuration/upstream/cluster_manager/cluster_stats
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from remora.proxy.interfaces import ConnectionFacts, Upstream, UpstreamError
from remora.proxy.stats import StatsStore
from remora.proxy.stream_info import StreamInfo, format_address
from remora.proxy.upstream.auto_host import TlsOverride
from remora.proxy.upstream.config import ClusterConfig, Host
from remora.proxy.upstream.connect import is_timeout, open_upstream
from remora.proxy.upstream.edf import EdfScheduler, random_start
from remora.proxy.upstream.happy_eyeballs import interleave, race

_RESOURCES = {
    # resource -> (threshold, overflow counter)
    "pending_requests": ("max_pending_requests", "upstream_rq_pending_overflow"),
    "requests": ("max_requests", "upstream_rq_pending_overflow"),
    "retries": ("max_retries", "upstream_rq_retry_overflow"),
}
# cluster.<name>.* that remora counts when the event happens, listed at 0 from the start
# as Envoy lists every counter of ClusterTrafficStats / ClusterLbStats / ClusterInfo
CLUSTER_COUNTED_WHEN_SEEN = (
    "upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_timeout",
    "upstream_rq_per_try_timeout", "upstream_cx_protocol_error", "upstream_cx_http1_total",
    "upstream_cx_http2_total", "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total",
    "upstream_rq_completed", "upstream_cx_connect_attempts_exceeded", "membership_change",
    "upstream_cx_idle_timeout", "upstream_cx_max_requests", "upstream_cx_max_duration_reached",
    "upstream_rq_retry_limit_exceeded", "upstream_rq_retry_backoff_exponential",
    "upstream_cx_close_notify",
    "update_attempt", "update_success", "update_empty",
)
# ... and those no code path of remora can produce (a feature refused at config load or
# not implemented): always 0, declared so that a dashboard on the name sees a series
CLUSTER_NEVER_COUNTED = (
    # HTTP/3 and 0-RTT (no QUIC upstreams)
    "upstream_cx_http3_total", "upstream_cx_connect_with_0_rtt", "upstream_rq_0rtt",
    "upstream_http3_broken",
    # zone-aware routing (no local cluster) and the subset load balancer are not
    # implemented; remora has no panic mode (it never routes to unhealthy hosts)
    "lb_healthy_panic", "lb_local_cluster_not_ok", "lb_recalculate_zone_structures",
    "lb_zone_cluster_too_small", "lb_zone_no_capacity_left", "lb_zone_routing_all_directly",
    "lb_zone_routing_cross_zone", "lb_zone_routing_sampled", "lb_subsets_created",
    "lb_subsets_fallback", "lb_subsets_fallback_panic", "lb_subsets_removed",
    "lb_subsets_selected",
    # internal redirects, runtime maintenance mode, preconnect_policy are not
    # implemented; rate-limited retry back-off (rate_limited_retry_back_off) neither
    "upstream_internal_redirect_failed_total", "upstream_internal_redirect_succeeded_total",
    "upstream_rq_maintenance_mode", "upstream_cx_preconnect_skipped",
    "upstream_rq_retry_backoff_ratelimited",
    # a cluster's common_http_protocol_options.max_stream_duration and a retry policy's
    # per_try_idle_timeout are refused; max_connection_pools is accepted, not enforced
    "upstream_rq_max_duration_reached", "upstream_rq_per_try_idle_timeout",
    "upstream_cx_pool_overflow",
    # EDS leases (stale assignments) and on-demand update failures are not implemented:
    # an EDS file that does not parse is counted update_rejected
    "assignment_stale", "assignment_timeout_received", "assignment_use_cached",
    "update_failure", "update_no_rebuild",
    # ORIGINAL_DST's use_http_header is refused at load (the connection's original
    # destination is used), so no header is ever found invalid
    "original_dst_host_invalid",
)
CLUSTER_GAUGES_NEVER_SET = (
    # (a DEGRADED endpoint counts as healthy in remora; no host is excluded by active
    # health checking, which is not implemented)
    "lb_subsets_active", "membership_degraded", "membership_excluded",
    # set by an EDS update (set_hosts); Envoy's STATIC cluster shows 0 too
    "max_host_weight",
    # only DEFAULT-priority routing (a HIGH threshold is accepted and never applies);
    # max_connection_pools is accepted and not enforced
    "circuit_breakers.high.cx_open", "circuit_breakers.high.cx_pool_open",
    "circuit_breakers.high.rq_open", "circuit_breakers.high.rq_pending_open",
    "circuit_breakers.high.rq_retry_open", "circuit_breakers.default.cx_pool_open",
)

# Envoy's per-host stats (HostStats), as /clusters lists them: counters and gauges in
# name order. https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--clusters
HOST_COUNTERS = ("cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout",
                 "rq_total")
HOST_GAUGES = ("cx_active", "rq_active", "rq_pending_active")
_HOST_STATS = tuple(sorted(HOST_COUNTERS + HOST_GAUGES))


class HostStats:
    """One host's stats (``interfaces.HostCounts``): plain attributes, so the router, which
    resolves them once per attempt, counts by attribute adds instead of a lookup by name."""

    __slots__ = _HOST_STATS

    def __init__(self) -> None:
        self.cx_active = 0
        self.cx_connect_fail = 0
        self.cx_total = 0
        self.rq_active = 0
        self.rq_error = 0
        self.rq_pending_active = 0
        self.rq_success = 0
        self.rq_timeout = 0
        self.rq_total = 0

    def __getitem__(self, name: str) -> int:
        value: int = getattr(self, name)
        return value

    def as_dict(self) -> dict[str, int]:
        """name -> value, in name order (what /clusters lists)."""
        return {name: getattr(self, name) for name in _HOST_STATS}


_GAUGES = {"connections": "cx_open", "pending_requests": "rq_pending_open",
           "requests": "rq_open", "retries": "rq_retry_open"}


def bind_source(cfg: ClusterConfig, upstream_ip: str) -> tuple[str, int] | None:
    """The upstream_bind_config address for a connection to UPSTREAM_IP: the first of
    source_address / extra_source_addresses of the upstream's IP family, else
    source_address (Envoy's DefaultUpstreamLocalAddressSelector), so a dual-stack
    InboundPassthroughCluster binds 127.0.0.6 to IPv4 and ::6 to IPv6 apps."""
    if cfg.source_address is None:
        return None
    v6 = ":" in upstream_ip
    for addr in (cfg.source_address, *cfg.extra_source_addresses):
        if addr.family_v6 == v6:
            return addr.ip, addr.port
    return cfg.source_address.ip, cfg.source_address.port


def _candidates(hosts: list[Host]) -> list[Host]:
    """The hosts a pick is made among: the healthy ones of the lowest priority level that
    has any (empty when none is healthy)."""
    healthy = [h for h in hosts if h.healthy]
    if not healthy:
        return healthy
    top = min(h.priority for h in healthy)
    return [h for h in healthy if h.priority == top]


def _only_host(hosts: list[Host], cluster_type: str) -> tuple[str, int] | None:
    """The address every load-balancer pick returns: the one candidate, when there is
    one (ORIGINAL_DST clusters pick per connection's destination)."""
    if cluster_type == "ORIGINAL_DST":
        return None
    level = _candidates(hosts)
    if len(level) != 1:
        return None
    return level[0].address.ip, level[0].address.port


def _unequal(hosts: list[Host]) -> bool:
    """Whether HOSTS' load_balancing_weights differ (Envoy's EDF path then)."""
    return len({h.weight for h in hosts}) > 1


class ClusterImpl:
    def __init__(self, config: ClusterConfig, stats: StatsStore) -> None:
        self.name = config.name
        self.config = config
        self.buffer_limit = config.buffer_limit
        self.stats = stats
        self.prefix = f"cluster.{config.name}."
        self.hosts: list[Host] = list(config.hosts)
        self.version_info = ""
        self.last_updated = time.time()
        self._rr = 0
        self._original_dst = config.type == "ORIGINAL_DST"
        # the host every pick returns while one healthy host is all there is (set_hosts):
        # the sidecar's usual inbound/outbound cluster, picked per request without a list
        self._only: tuple[str, int] | None = _only_host(self.hosts, config.type)
        # endpoints of unequal load_balancing_weight: Envoy's EDF weighted round robin
        # (edf.py), over the healthy hosts it was built for; equal weights keep the plain
        # rotation (no scheduler: the per-request cost stays one modulo)
        self._weighted = _unequal(self.hosts)
        self._edf: EdfScheduler[Host] | None = None
        self._edf_hosts: list[Host] = []
        self.active = {"connections": 0, "pending_requests": 0, "requests": 0, "retries": 0}
        self.host_stats: dict[str, HostStats] = {}
        # what the circuit-breaker gauges of each resource need, computed once (the config
        # of a cluster object never changes: a CDS update replaces the object)
        base = f"{self.prefix}circuit_breakers.default."
        remaining = {"connections": "remaining_cx", "pending_requests": "remaining_pending",
                     "requests": "remaining_rq", "retries": "remaining_retries"}
        self._cb: dict[str, tuple[int, str, str | None]] = {
            resource: (
                config.thresholds["max_connections" if resource == "connections"
                                  else _RESOURCES[resource][0]],
                base + _GAUGES[resource],
                base + remaining[resource] if config.track_remaining else None)
            for resource in self.active}
        # "requests" is taken and given back by every request: its gauges are computed
        # when the stats are read (_requests_gauges), listed from the first request
        self._rq_limit = config.thresholds["max_requests"]
        self._rq_overflow = self.prefix + _RESOURCES["requests"][1]
        self._rq_listed = False
        stats.touch(*(self.prefix + n for n in (
            "upstream_cx_total", "upstream_cx_connect_fail", "upstream_cx_connect_timeout",
            "upstream_cx_overflow", "upstream_cx_none_healthy", "upstream_rq_pending_overflow",
            "upstream_rq_retry_overflow", "upstream_cx_destroy", "upstream_rq_total",
            "upstream_rq_pending_total", *CLUSTER_COUNTED_WHEN_SEEN, *CLUSTER_NEVER_COUNTED)))
        if config.type == "EDS":
            stats.touch(*(self.prefix + n for n in ("update_rejected", "init_fetch_timeout")))
        gauges = stats.gauge_values
        for name in ("upstream_cx_active", *CLUSTER_GAUGES_NEVER_SET):
            gauges[self.prefix + name] += 0
        for resource in ("connections", "pending_requests", "requests", "retries"):
            self._cb_gauges(resource)
        # declared histograms: listed as "No recorded values" until their first value
        for name in ("upstream_cx_connect_ms", "upstream_cx_length_ms"):
            stats.histogram(self.prefix + name, declared=True)
        # upstream_rq_active and upstream_rq_pending_active are the circuit breakers'
        # counts (requests, pending_requests), written when the gauges are read
        stats.gauge_source(self.prefix + "active", self._active_gauges)
        stats.gauge_set(self.prefix + "membership_total", len(self.hosts))
        stats.gauge_set(self.prefix + "membership_healthy", sum(h.healthy for h in self.hosts))
        if self.hosts:
            # Envoy counts the initial hosts of a cluster as its first membership change
            stats.inc(self.prefix + "membership_change")

    # -- hosts -----------------------------------------------------------------------
    def set_hosts(self, hosts: list[Host], version: str = "") -> None:
        self.hosts = hosts
        self._only = _only_host(hosts, self.config.type)
        self._weighted = _unequal(hosts)
        self._edf = None
        self.version_info = version
        self.last_updated = time.time()
        self.stats.gauge_set(self.prefix + "membership_total", len(hosts))
        self.stats.gauge_set(self.prefix + "membership_healthy", sum(h.healthy for h in hosts))
        self.stats.gauge_set(self.prefix + "max_host_weight", max((h.weight for h in hosts),
                                                                  default=0))
        self.stats.inc(self.prefix + "membership_change")

    def choose(self, facts: ConnectionFacts, exclude: frozenset[str] = frozenset(),
               reselections: int = 1) -> tuple[str, int] | None:
        """The host for one request (interfaces.Cluster.choose): what ``_choose`` picks,
        without building the healthy list while one healthy host is all there is."""
        only = self._only
        if only is not None:
            return only  # every pick, reselections included, would return it
        if self._original_dst:
            return facts.local_ip, facts.local_port
        return self._choose(facts, exclude, reselections)

    def _choose(self, facts: ConnectionFacts, exclude: frozenset[str],
                reselections: int = 1) -> tuple[str, int] | None:
        """The load balancer's pick. EXCLUDE (the previous_hosts retry predicate's hosts)
        does not filter the candidates: as Envoy's ZoneAwareLoadBalancerBase::chooseHost,
        a pick the predicate rejects is re-picked at most RESELECTIONS
        (host_selection_retry_max_attempts) times, and if every pick is rejected the last
        one is used anyway -- so a one-endpoint cluster retries its only host instead of
        failing with UH.
        https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-retrypolicy-host-selection-retry-max-attempts
        """
        if self.config.type == "ORIGINAL_DST":
            return facts.local_ip, facts.local_port
        healthy = _candidates(self.hosts)
        if not healthy:
            return None
        host = self._pick(healthy)
        for _ in range(max(reselections, 0) if exclude else 0):
            if host.key not in exclude:
                break
            host = self._pick(healthy)
        return host.address.ip, host.address.port

    def _pick(self, healthy: list[Host]) -> Host:
        if self.config.lb_policy == "RANDOM":
            return random.choice(healthy)
        if self._weighted and len(healthy) > 1 and _unequal(healthy):
            return self._pick_weighted(healthy)
        if self.config.lb_policy == "LEAST_REQUEST" and len(healthy) > 1:
            # Envoy's P2C: the less loaded of two random choices
            a, b = random.sample(healthy, 2)
            return a if self._load(a) <= self._load(b) else b
        self._rr = (self._rr + 1) % len(healthy)
        return healthy[self._rr]

    def _pick_weighted(self, healthy: list[Host]) -> Host:
        """Envoy's EdfLoadBalancerBase for unequal weights: ROUND_ROBIN by each host's
        weight; LEAST_REQUEST by weight / (active requests + 1) (its default
        active_request_bias 1.0: LeastRequestLoadBalancer::hostWeight), the weight
        taken when the host is queued again. The schedule is rebuilt when the healthy
        hosts change (Envoy's refresh on a host set update)."""
        sched = self._edf
        if sched is None or self._edf_hosts != healthy:
            sched = self._edf = random_start(healthy, self._weight)
            self._edf_hosts = healthy
        host = sched.pick_and_add(self._weight)
        assert host is not None  # the healthy list is not empty
        return host

    def _weight(self, host: Host) -> float:
        if self.config.lb_policy == "LEAST_REQUEST":
            hstats = self.host_stats.get(host.key)
            return host.weight / ((hstats.rq_active if hstats is not None else 0) + 1)
        return float(host.weight)

    def _load(self, host: Host) -> int:
        # Envoy's LeastRequestLoadBalancer compares active requests (rq_active), not
        # connections: the router picks per request, pooled connection or not
        hstats = self.host_stats.get(host.key)
        return 0 if hstats is None else hstats.rq_active

    def host_counts(self, host: str) -> HostStats:
        """HOST's stats object (created at zero on first use), for counting by attribute."""
        hstats = self.host_stats.get(host)
        if hstats is None:
            hstats = self.host_stats[host] = HostStats()
        return hstats

    def host_stat(self, host: str, stat: str, delta: int = 1) -> None:
        """The router's and TCP proxy's share of HOST's stats: rq_total/rq_active when a
        request is attached to a connection (Envoy's ConnPoolImplBase), rq_success/rq_error
        as the router charges response codes, rq_timeout on its timeouts."""
        hstats = self.host_stats.get(host)
        if hstats is None:
            hstats = self.host_counts(host)
        value = getattr(hstats, stat) + delta
        setattr(hstats, stat, value if value > 0 else 0)

    # -- interfaces.Cluster ------------------------------------------------------------
    async def connect(self, facts: ConnectionFacts, info: StreamInfo,
                      exclude_hosts: frozenset[str] = frozenset(), *,
                      host_selection_retry_max_attempts: int = 1,
                      tls_override: TlsOverride | None = None,
                      target: tuple[str, int] | None = None) -> Upstream:
        """TLS_OVERRIDE: the request's auto_sni / auto_san_validation (auto_host.py).
        TARGET: the host ``choose`` picked for the request (the HTTP router picks before it
        looks for a pooled connection to it); None: pick here (tcp_proxy, per connection)."""
        info.upstream_cluster = self.name
        if target is None:
            target = self._choose(facts, exclude_hosts, host_selection_retry_max_attempts)
        if target is None:
            self.stats.inc(self.prefix + "upstream_cx_none_healthy")
            raise UpstreamError("UH", "")
        host = format_address(*target)
        info.upstream_host = host
        if self.active["connections"] >= self.config.thresholds["max_connections"]:
            self.stats.inc(self.prefix + "upstream_cx_overflow")
            raise UpstreamError("UO", "", host)
        self.active["connections"] += 1  # counted while connecting, as Envoy does
        self._cb_gauges("connections")
        hstats = self.host_counts(host)
        hstats.cx_total += 1
        hstats.rq_pending_active += 1  # the stream waits for this connection
        self.stats.inc(self.prefix + "upstream_cx_total")
        cfg = self.config
        source = bind_source(cfg, target[0])
        started = time.monotonic()

        # The connection slot is given back once: by the failure below, by a
        # cancellation while connecting (the stream went away: an HTTP/2 client's
        # RST_STREAM, rapid reset) or when the connection is lost, whichever comes first;
        # a slot kept by a cancelled connect would hold the circuit breaker open for good.
        slot = [True]  # still held
        connected = [False]
        lost_early: list[int] = []  # lost before connect() returned (rx bytes)

        def release_slot() -> None:
            if slot[0]:
                slot[0] = False
                self.active["connections"] -= 1
                self._cb_gauges("connections")

        def lost(rx_bytes: int) -> None:
            if not connected[0]:
                # before connect() counted it active: a cancelled connect's socket, or a
                # Happy Eyeballs winner lost at once (counted below once it returns)
                release_slot()
                lost_early.append(rx_bytes)
                return
            release_slot()
            hstats.cx_active -= 1
            self.stats.gauge_add(self.prefix + "upstream_cx_active", -1)
            self.stats.inc(self.prefix + "upstream_cx_destroy")
            self.stats.inc(self.prefix + "upstream_cx_rx_bytes_total", rx_bytes)
            self.stats.observe(self.prefix + "upstream_cx_length_ms",
                               (time.monotonic() - started) * 1000)

        try:
            extra = self._additional(target)
            if extra:
                upstream, connect_ms = await self._happy_eyeballs(target, extra, facts, lost,
                                                                  tls_override)
            else:
                upstream, connect_ms = await open_upstream(
                    target[0], target[1], timeout=cfg.connect_timeout, source=source,
                    original_src=facts.original_src, on_lost=lost, keepalive=cfg.keepalive,
                    tls=cfg.transport, tls_override=tls_override)
        except UpstreamError as err:
            hstats.rq_pending_active -= 1
            release_slot()
            hstats.cx_connect_fail += 1
            self.stats.inc(self.prefix + "upstream_cx_connect_fail")
            if is_timeout(err):
                self.stats.inc(self.prefix + "upstream_cx_connect_timeout")
            info.upstream_transport_failure_reason = err.reason or None
            raise
        except BaseException:
            hstats.rq_pending_active -= 1
            release_slot()
            raise
        connected[0] = True
        hstats.rq_pending_active -= 1
        hstats.cx_active += 1
        self.stats.gauge_add(self.prefix + "upstream_cx_active", 1)
        self.stats.observe(self.prefix + "upstream_cx_connect_ms", connect_ms)
        info.upstream_local_address = upstream.local_address
        if lost_early:
            lost(lost_early[0])
        return upstream

    def _additional(self, target: tuple[str, int]) -> tuple[tuple[str, int], ...]:
        """The chosen host's Endpoint.additional_addresses (none for ORIGINAL_DST)."""
        if self.config.type == "ORIGINAL_DST":
            return ()
        for h in self.hosts:
            if h.additional and (h.address.ip, h.address.port) == target:
                return tuple((a.ip, a.port) for a in h.additional)
        return ()

    async def _happy_eyeballs(self, target: tuple[str, int], extra: tuple[tuple[str, int], ...],
                              facts: ConnectionFacts, lost: Callable[[int], None],
                              tls_override: TlsOverride | None = None,
                              ) -> tuple[Upstream, float]:
        """Envoy's Happy Eyeballs over the host's addresses (happy_eyeballs.py): the
        winner's connection is this one; a loser that connected too is closed unseen."""
        cfg = self.config
        chosen: list[int] = []
        early: dict[int, int] = {}  # lost before the race returned (rx bytes)

        def on_lost(i: int) -> Callable[[int], None]:
            def report(rx: int) -> None:
                if chosen and chosen[0] == i:
                    lost(rx)
                elif not chosen:
                    early[i] = rx
            return report

        async def attempt(i: int, addr: tuple[str, int]) -> tuple[Upstream, float]:
            return await open_upstream(
                addr[0], addr[1], timeout=cfg.connect_timeout, source=bind_source(cfg, addr[0]),
                original_src=facts.original_src, on_lost=on_lost(i), keepalive=cfg.keepalive,
                tls=cfg.transport, tls_override=tls_override)

        def discard(result: tuple[Upstream, float]) -> None:
            result[0].writer.close()

        index, result = await race(interleave([target, *extra]), attempt, discard)
        chosen.append(index)
        if index in early:
            lost(early[index])
        return result

    def try_acquire(self, resource: str) -> bool:
        active = self.active
        n = active[resource]
        if resource == "requests":  # every request: a plain count, gauges on read
            if n >= self._rq_limit:
                self.stats.inc(self._rq_overflow)
                return False
            active["requests"] = n + 1
            if not self._rq_listed:
                self._rq_listed = True
                self.stats.gauge_source(self.prefix + "circuit_breakers.requests",
                                        self._requests_gauges)
            return True
        threshold, overflow = _RESOURCES[resource]
        if n >= self.config.thresholds[threshold]:
            self.stats.inc(self.prefix + overflow)
            return False
        active[resource] = n + 1
        self._cb_gauges(resource)
        return True

    def release(self, resource: str) -> None:
        active = self.active
        n = active[resource]
        if n > 0:
            active[resource] = n - 1
            if resource != "requests":
                self._cb_gauges(resource)

    def _cb_gauges(self, resource: str, gauges: dict[str, int] | None = None) -> None:
        """RESOURCE's circuit-breaker gauges (open, remaining) from its active count."""
        limit, open_gauge, remaining = self._cb[resource]
        active = self.active[resource]
        if gauges is None:
            gauges = self.stats.gauge_values
        gauges[open_gauge] = int(active >= limit)
        if remaining is not None:
            gauges[remaining] = max(limit - active, 0)

    def _active_gauges(self, gauges: dict[str, int]) -> None:
        """StatsStore gauge source: upstream_rq_active and upstream_rq_pending_active."""
        gauges[self.prefix + "upstream_rq_active"] = self.active["requests"]
        gauges[self.prefix + "upstream_rq_pending_active"] = self.active["pending_requests"]

    def _requests_gauges(self, gauges: dict[str, int]) -> None:
        """StatsStore gauge source: the "requests" breaker's gauges when they are read."""
        self._cb_gauges("requests", gauges)


class ClusterManagerImpl:
    """``interfaces.ClusterManager``: name -> cluster, swapped whole on a CDS update.
    Connections already open keep the cluster object they started with."""

    def __init__(self, stats: StatsStore) -> None:
        self.stats = stats
        self.clusters: dict[str, ClusterImpl] = {}
        self.static_names: set[str] = set()
        self.versions: dict[str, str] = {}

    def get(self, name: str) -> ClusterImpl | None:
        return self.clusters.get(name)

    def add_static(self, configs: list[ClusterConfig]) -> None:
        for cfg in configs:
            self.clusters[cfg.name] = ClusterImpl(cfg, self.stats)
            self.static_names.add(cfg.name)
            self.stats.inc("cluster_manager.cluster_added")
        self._gauges()

    def replace_dynamic(self, configs: list[ClusterConfig], version: str) -> None:
        """State of the world: clusters not listed are removed (static ones stay)."""
        new_names = {c.name for c in configs}
        for name in [n for n in self.clusters if n not in self.static_names and n not in new_names]:
            del self.clusters[name]
            self.versions.pop(name, None)
            self.stats.inc("cluster_manager.cluster_removed")
        for cfg in configs:
            old = self.clusters.get(cfg.name)
            if old is not None and old.config.raw == cfg.raw:
                continue  # unchanged: keep hosts, breaker counts and EDS state
            cluster = ClusterImpl(cfg, self.stats)
            if old is not None:
                cluster.active = old.active
                if cfg.type == "EDS" and old.config.type == "EDS":
                    cluster.hosts = old.hosts
                self.stats.inc("cluster_manager.cluster_modified")
            else:
                self.stats.inc("cluster_manager.cluster_added")
            self.clusters[cfg.name] = cluster
            self.versions[cfg.name] = version
        self._gauges()

    def _gauges(self) -> None:
        self.stats.gauge_set("cluster_manager.active_clusters", len(self.clusters))

    def describe(self) -> list[dict[str, Any]]:
        """For /clusters: each cluster's thresholds and its hosts with their stats."""
        out = []
        for c in self.clusters.values():
            hosts: dict[str, Host | None] = dict.fromkeys(c.host_stats) \
                if c.config.type == "ORIGINAL_DST" else {h.key: h for h in c.hosts}
            out.append({"name": c.name, "thresholds": c.config.thresholds,
                        "high_thresholds": c.config.high_thresholds,
                        "added_via_api": c.name not in self.static_names,
                        "hosts": [{"address": key, "host": h, "stats": c.host_counts(key).as_dict()}
                                  for key, h in hosts.items()]})
        return out
