"""The proxy server: config state (static + LDS/CDS/EDS files), listeners, reloads.

Updates are all-or-nothing: a changed file is parsed and validated whole (every listener
built, every socket bound) before anything changes; a bad file is refused with an error in
the log and Envoy's counter (listener_manager.lds.update_rejected,
cluster_manager.cds.update_rejected, cluster.<name>.update_rejected) and the last good
config stays. Established connections keep the filter chains and clusters they started
with, until the listener's update drains them (server/drain.py: ``--drain-time-s``, then
what is still open is closed, as Envoy's ListenerManagerImpl drainFilterChains /
drainListener); a listener whose address is unchanged keeps its socket.
https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/lds
https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/operations/draining
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from remora.errors import RemoraError
from remora.proxy.access_log.sink import flush_all
from remora.proxy.config.bootstrap import Bootstrap, read_discovery_file
from remora.proxy.config.listener import LISTENER_TYPE, ListenerConfig, parse_listener
from remora.proxy.config.strict import ConfigError
from remora.proxy.server.context import ProxyContext
from remora.proxy.server.drain import ChainDrain, DrainManager
from remora.proxy.server.listeners import ActiveListener
from remora.proxy.server.sockets import has_net_admin, require_net_admin
from remora.proxy.stats import StatsStore
from remora.proxy.upstream.cluster import ClusterManagerImpl
from remora.proxy.upstream.config import (
    CLA_TYPE,
    CLUSTER_TYPE,
    ClusterConfig,
    parse_cluster,
    parse_load_assignment,
)

log = logging.getLogger("remora.proxy")
POLL_INTERVAL = 0.25  # seconds between stat() calls on watched files


def _signature(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class Server:
    def __init__(self, bootstrap: Bootstrap, concurrency: int = 1) -> None:
        self.bootstrap = bootstrap
        self.concurrency = concurrency
        # which of the --concurrency workers this process is (0: the main process); it
        # names Envoy's per-handler stats listener.<prefix>.worker_<i>.*
        self.worker_index = 0
        self.stats = StatsStore()
        self.cluster_manager = ClusterManagerImpl(self.stats)
        self.context = ProxyContext(self.stats, self.cluster_manager, bootstrap.node_id)
        self.listeners: dict[str, ActiveListener] = {}
        self.static_listener_names: set[str] = set()
        self.active_connections = 0
        self.connections: set[asyncio.Task[None]] = set()  # strong refs to connection tasks
        self.max_connections = bootstrap.max_downstream_connections
        self.state = "PRE_INITIALIZING"
        self.started = time.time()
        self.bootstrap_time = time.time()
        self.versions = {"lds": "", "cds": ""}
        self._watched: dict[str, tuple[tuple[int, int, int, int] | None, Callable[[], None]]] = {}
        self._poll_task: asyncio.Task[None] | None = None
        # Called by drain_listeners (inbound_only, graceful) so --concurrency workers
        # drain too.
        self.on_drain: Callable[[bool, bool], None] | None = None
        # --drain-time-s / --drain-strategy (set by the CLI before the workers fork)
        self.drain = DrainManager()
        self._drain_stop: asyncio.TimerHandle | None = None
        # LDS drains under way (their --drain-time-s timers): old filter chains, old
        # listeners (Envoy's draining_filter_chains_manager_ / draining_listeners_)
        self._lds_drains: set[asyncio.TimerHandle] = set()
        # the listener versions a drain holds (Envoy's draining_listeners_), newest last,
        # until its --drain-time-s is over: the config dump's draining_state
        self.draining_listeners: list[DrainingListener] = []
        self.stopped = asyncio.Event()
        self.stats.touch(*(f"{x}.{y}" for x in ("listener_manager.lds", "cluster_manager.cds")
                           for y in ("update_attempt", "update_success", "update_rejected")))
        # Envoy's server counters for fields a config has that this build does not know
        # or that are work in progress: remora refuses such a config at load, so they
        # stay 0 (listed as on Envoy)
        self.stats.touch("server.static_unknown_fields", "server.dynamic_unknown_fields",
                         "server.wip_protos")

    # -- initial load (raises ConfigError: the CLI prints it and exits) --------------
    def load(self) -> None:
        boot = self.bootstrap
        clusters = [parse_cluster(raw, f"static_resources.clusters[{i}]")
                    for i, raw in enumerate(boot.static_clusters)]
        _unique([c.name for c in clusters], "static_resources.clusters", "cluster")
        self.cluster_manager.add_static(clusters)
        for c in clusters:
            self._watch_eds(c)
        configs = [parse_listener(raw, f"static_resources.listeners[{i}]", self.context)
                   for i, raw in enumerate(boot.static_listeners)]
        _unique([c.name for c in configs], "static_resources.listeners", "listener")
        self._check_privileges(configs)
        for cfg in configs:
            self._attach_drains(cfg)
            self.listeners[cfg.name] = ActiveListener(cfg)
            self.static_listener_names.add(cfg.name)
        if boot.cds_path:
            self._watch(boot.cds_path, self._reload_cds)
        if boot.lds_path:
            self._watch(boot.lds_path, self._reload_lds)

    def _check_privileges(self, configs: list[ListenerConfig]) -> None:
        for cfg in configs:
            if cfg.needs_net_admin and not has_net_admin():
                what = "transparent: true" if cfg.transparent else "original_src"
                require_net_admin(f"listener {cfg.name!r} ({what})")

    # -- serving -------------------------------------------------------------------
    async def start(self) -> None:
        """Bind every listener (an error here is fatal), then start accepting."""
        self._bind_all(list(self.listeners.values()))
        for active in self.listeners.values():
            active.start(self)
        self._poll_task = asyncio.get_running_loop().create_task(self._poll())
        self.state = "LIVE"
        self._listener_gauges()
        if self.worker_index == 0:  # one value per server, not one per worker
            # server.initialization_time_ms: from the start until the listeners accept
            self.stats.observe("server.initialization_time_ms",
                               (time.time() - self.started) * 1000)

    def bind_workers(self) -> None:
        """Before forking --concurrency workers: bind every listener once per worker (see
        ActiveListener.bind), so the SO_REUSEPORT group is complete before any worker
        accepts -- a connection hashed to a worker still starting waits in that worker's
        backlog -- and a bind error stops the proxy before anything forks."""
        self._bind_all(list(self.listeners.values()), workers=self.concurrency)

    def keep_worker(self, index: int) -> None:
        """After the fork, in worker INDEX (0: the main process): keep its sockets only."""
        self.worker_index = index
        for active in self.listeners.values():
            active.keep_worker(index)

    def _bind_all(self, actives: list[ActiveListener], workers: int = 1) -> None:
        """Bind what is not bound yet. With --concurrency N, SO_REUSEPORT unless the
        listener says `enable_reuse_port: false` (Envoy's default is true on Linux), which
        before the fork means one socket all workers share. In a worker after the fork (an
        LDS update) each worker binds its own SO_REUSEPORT socket, as each of Envoy's
        workers gets its socket of a new listener (a process cannot share a socket it
        binds now; `enable_reuse_port: false` included); a unix socket is bound by worker
        0 alone. --concurrency 1: SO_REUSEPORT only when the listener asks for it."""
        bound: list[ActiveListener] = []
        try:
            for active in actives:
                cfg = active.config
                if cfg.bind_to_port and not active.socks:
                    bound.append(active)
                    if self.concurrency == 1:
                        reuse = bool(cfg.enable_reuse_port)
                    else:
                        reuse = workers == 1 or cfg.enable_reuse_port is not False
                    active.bind(workers=workers, reuse_port=reuse,
                                pipes=self.worker_index == 0)
        except RemoraError:
            for active in bound:
                active.stop_accepting()
            raise

    def listener_for(self, ip: str, port: int) -> ActiveListener | None:
        """The listener a use_original_dst connection to IP:PORT is handed to: one with
        exactly that address (additional_addresses count), else the wildcard of IP's
        family (0.0.0.0 or ::), as Envoy's ConnectionHandlerImpl::getBalancedHandlerByAddress
        looks them up."""
        wildcard = None
        for active in self.listeners.values():
            for addr in active.config.addresses:
                if addr.port != port or addr.pipe is not None:
                    continue
                if addr.ip == ip:
                    return active
                if addr.ip in ("0.0.0.0", "::") and wildcard is None and \
                        (addr.ip == "::") == (":" in ip):
                    wildcard = active
        return wildcard

    def drain_listeners(self, inbound_only: bool = False, graceful: bool = False) -> None:
        """Envoy's /drain_listeners (ListenersHandler::handlerDrainListeners): without
        GRACEFUL the listeners stop accepting at once and open connections are left as
        they are; with it the drain sequence starts (server/drain.py: the HTTP connection
        manager closes or GOAWAYs its connections as their next responses start) and the
        listeners stop once the drain time is over. A second graceful call while the
        sequence runs is ignored, as Envoy ignores it."""
        if self.on_drain is not None:
            self.on_drain(inbound_only, graceful)
        if not graceful:
            self._stop_listeners(inbound_only)
            return
        if self.drain.start(inbound_only):
            self.state = "DRAINING"
            self._drain_stop = asyncio.get_running_loop().call_later(
                self.drain.drain_time, self._stop_listeners, inbound_only)

    def _stop_listeners(self, inbound_only: bool) -> None:
        for active in self.listeners.values():
            if inbound_only and active.config.traffic_direction != "INBOUND":
                continue
            active.stop_accepting()
        self.state = "DRAINING"

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
        if self._drain_stop is not None:
            self._drain_stop.cancel()
        for timer in self._lds_drains:
            timer.cancel()
        self._lds_drains.clear()
        for active in self.listeners.values():
            active.stop_accepting()
        flush_all()  # access-log lines still waiting for their flush delay leave now
        self.stopped.set()

    def refresh_server_stats(self) -> None:
        """Envoy's server.* gauges (server.state: 0 LIVE, 1 DRAINING, 2 PRE_INITIALIZING)."""
        state = {"LIVE": 0, "DRAINING": 1, "PRE_INITIALIZING": 2}.get(self.state, 3)
        self.stats.gauge_set("server.state", state)
        self.stats.gauge_set("server.live", int(self.state == "LIVE"))
        self.stats.gauge_set("server.uptime", int(time.time() - self.started))
        self.stats.gauge_set("server.concurrency", self.concurrency)

    def _listener_gauges(self) -> None:
        self.stats.gauge_set("listener_manager.total_listeners_active", len(self.listeners))

    # -- file watching -------------------------------------------------------------
    def _watch(self, path: str, reload: Callable[[], None]) -> None:
        if path not in self._watched:
            self._watched[path] = (_signature(path), reload)
            reload()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            for path, (sig, reload) in list(self._watched.items()):
                now = _signature(path)
                if now != sig and now is not None:
                    self._watched[path] = (now, reload)
                    reload()

    def _update(self, kind: str, prefix: str, path: str, apply: Callable[[], str]) -> None:
        self.stats.inc(f"{prefix}.update_attempt")
        try:
            version = apply()
        except RemoraError as exc:
            self.stats.inc(f"{prefix}.update_rejected")
            log.error("%s update from %s rejected: %s", kind, path, exc.one_line())
            return
        self.stats.inc(f"{prefix}.update_success")
        log.info("%s update from %s applied (version %r)", kind, path, version)

    # -- CDS / EDS -------------------------------------------------------------------
    def _reload_cds(self) -> None:
        path = self.bootstrap.cds_path
        assert path is not None
        self._update("CDS", "cluster_manager.cds", path, lambda: self._apply_cds(path))

    def _apply_cds(self, path: str) -> str:
        version, resources = read_discovery_file(path, CLUSTER_TYPE)
        configs = [parse_cluster(raw, f"{path}: resources[{i}]") for i, raw in enumerate(resources)]
        _unique([c.name for c in configs], f"{path}: resources", "cluster")
        for c in configs:
            if c.name in self.cluster_manager.static_names:
                raise ConfigError(f"{path}: resources", f"cluster {c.name!r} is defined in "
                                                        "static_resources already")
        self.cluster_manager.replace_dynamic(configs, version)
        self.versions["cds"] = version
        for c in configs:
            self._watch_eds(c)
        return version

    def _watch_eds(self, cfg: ClusterConfig) -> None:
        if cfg.eds_path:
            eds_path = cfg.eds_path
            if eds_path in self._watched:  # a new cluster on a file already watched
                self._apply_eds_quiet(eds_path)
            else:
                self._watch(eds_path, lambda: self._reload_eds(eds_path))

    def _apply_eds_quiet(self, path: str) -> None:
        with contextlib.suppress(RemoraError):  # counted and logged by _reload_eds
            self._apply_eds(path)

    def _reload_eds(self, path: str) -> None:
        try:
            self._apply_eds(path)
        except RemoraError as exc:
            for c in self.cluster_manager.clusters.values():
                if c.config.eds_path == path:
                    self.stats.inc(f"cluster.{c.name}.update_rejected")
            log.error("EDS update from %s rejected: %s", path, exc.one_line())

    def _apply_eds(self, path: str) -> None:
        version, resources = read_discovery_file(path, CLA_TYPE)
        parsed = dict(parse_load_assignment(raw, f"{path}: resources[{i}]")
                      for i, raw in enumerate(resources))
        for c in self.cluster_manager.clusters.values():
            if c.config.eds_path != path:
                continue
            self.stats.inc(f"cluster.{c.name}.update_attempt")
            hosts = parsed.get(c.config.eds_service_name or c.name)
            if hosts is not None:
                before = {(h.address.ip, h.address.port) for h in c.hosts}
                c.set_hosts(hosts, version)
                gone = before - {(h.address.ip, h.address.port) for h in hosts}
                if gone:  # their pooled connections drained, as Envoy's
                    # (imported here: a proxy with no HTTP listener never loads the pools)
                    from remora.proxy.http.pool import drop_removed_hosts
                    drop_removed_hosts(self.cluster_manager, c, gone)
                self.stats.inc(f"cluster.{c.name}.update_success")
            else:
                self.stats.inc(f"cluster.{c.name}.update_empty")

    # -- LDS -------------------------------------------------------------------------
    def _reload_lds(self) -> None:
        path = self.bootstrap.lds_path
        assert path is not None
        self._update("LDS", "listener_manager.lds", path, lambda: self._apply_lds(path))

    def _apply_lds(self, path: str) -> str:
        version, resources = read_discovery_file(path, LISTENER_TYPE)
        configs = [parse_listener(raw, f"{path}: resources[{i}]", self.context)
                   for i, raw in enumerate(resources)]
        _unique([c.name for c in configs], f"{path}: resources", "listener")
        for cfg in configs:
            if cfg.name in self.static_listener_names:
                raise ConfigError(f"{path}: resources", f"listener {cfg.name!r} is defined in "
                                                        "static_resources already")
        self._check_privileges(configs)
        self._swap_listeners(configs, version)
        self.versions["lds"] = version
        return version

    def _swap_listeners(self, configs: list[ListenerConfig], version: str) -> None:
        live = self.state == "LIVE"
        old = {n: a for n, a in self.listeners.items() if n not in self.static_listener_names}
        new_names = {c.name for c in configs}
        # A listener that goes away may hand its socket to a new one at the same address.
        spare = {(a.config.addresses, a.config.transparent): a for n, a in old.items()
                 if a.socks and n not in new_names}
        in_place: list[tuple[ActiveListener, ListenerConfig]] = []
        takeovers: list[tuple[ActiveListener, ListenerConfig]] = []
        fresh: list[tuple[ActiveListener, ActiveListener | None]] = []
        for cfg in configs:
            prev = old.get(cfg.name)
            if prev is not None and prev.config.raw == cfg.raw:
                continue
            if prev is not None and prev.config.same_socket(cfg):
                in_place.append((prev, cfg))
            elif cfg.bind_to_port and (cfg.addresses, cfg.transparent) in spare:
                takeovers.append((spare.pop((cfg.addresses, cfg.transparent)), cfg))
            else:
                fresh.append((ActiveListener(cfg, version), prev))
        if live:  # may raise: nothing has changed yet
            self._bind_all([active for active, _ in fresh])
        # From here on nothing can fail.
        taken = {id(donor) for donor, _ in takeovers}
        for active, cfg in in_place + takeovers:
            # The accept loop reads active.config per connection; connections already
            # accepted keep the filter chain they matched, until its drain ends.
            chains_only = active.config.name == cfg.name and \
                _filter_chain_only_change(active.config, cfg)
            if active.config.name != cfg.name:
                del self.listeners[active.config.name]
                self.stats.inc("listener_manager.listener_removed")
                self.stats.inc("listener_manager.listener_added")
                self._drain_listener(active)
                self._attach_drains(cfg)
            elif chains_only:
                self.stats.inc("listener_manager.listener_in_place_updated")
                self._drain_filter_chains(active.config, cfg)
            else:
                # Envoy updates it in place only when nothing but its filter chains
                # changed; else the new version takes over the socket and the old one
                # drains whole (a full listener update, onListenerWarmed -> drainListener)
                self.stats.inc("listener_manager.listener_modified")
                self._drain_listener(active)
                self._attach_drains(cfg)
            active.config = cfg
            if not chains_only:
                # Envoy 1.40's config dump keeps the version an in-place update started
                # from (its last_updated and listener are the new ones: observed,
                # test_listener_dump_envoy_parity.py)
                active.version_info = version
            active.last_updated = time.time()
            self.listeners[cfg.name] = active
        for active, prev in fresh:
            self._attach_drains(active.config)
            if prev is not None:
                prev.stop_accepting()
                self._drain_listener(prev)
                self.stats.inc("listener_manager.listener_modified")
            else:
                self.stats.inc("listener_manager.listener_added")
            self.listeners[active.config.name] = active
            if live:
                active.start(self)
        for name, prev in old.items():
            if name not in new_names and id(prev) not in taken:
                prev.stop_accepting()
                del self.listeners[name]
                self.stats.inc("listener_manager.listener_removed")
                self._drain_listener(prev)
        self._listener_gauges()

    # -- LDS drains (server/drain.py) ------------------------------------------------------
    def _attach_drains(self, cfg: ListenerConfig) -> None:
        """Give each of CFG's chains that has none its drain decision."""
        inbound = cfg.traffic_direction == "INBOUND"
        for chain, _ in cfg.chains():
            if chain.drain is None:
                chain.drain = self.drain.for_listener(inbound)

    def _drain_filter_chains(self, old: ListenerConfig, new: ListenerConfig) -> None:
        """Envoy's ListenerManagerImpl::drainFilterChains: a chain of NEW equal to one of
        OLD (the same config) is the same chain, its connections untouched; OLD's other
        chains drain (_start_drain)."""
        kept: dict[str, ChainDrain] = {}
        for chain, raw in old.chains():
            if chain.drain is not None:
                kept[_chain_key(raw)] = chain.drain
        for chain, raw in new.chains():
            chain.drain = kept.pop(_chain_key(raw), None)
        self._attach_drains(new)
        self._start_drain(list(kept.values()), "listener_manager.total_filter_chains_draining")

    def _drain_listener(self, old: ActiveListener) -> None:
        """Envoy's ListenerManagerImpl::drainListener: all of the old listener's
        connections drain, and --drain-time-s later what is still open is closed. Called
        before OLD takes its new version (if any): the version that drains is shown as
        the config dump's draining_state until then, with or without connections (as
        Envoy 1.40; an in-place filter-chain update shows none)."""
        cfg = old.config
        entry = DrainingListener(cfg.name, old.version_info, cfg.raw, old.last_updated)
        self.draining_listeners.append(entry)
        loop = asyncio.get_running_loop()

        def over() -> None:
            self._lds_drains.discard(timer)
            with contextlib.suppress(ValueError):
                self.draining_listeners.remove(entry)
        timer = loop.call_later(self.drain.drain_time, over)
        self._lds_drains.add(timer)
        self._start_drain([chain.drain for chain, _ in cfg.chains() if chain.drain is not None],
                          "listener_manager.total_listeners_draining", 1)

    def _start_drain(self, draining: list[ChainDrain], gauge: str, count: int = 0) -> None:
        """The drain of DRAINING starts now: their own drain manager, with the server's
        --drain-time-s and --drain-strategy, decides when each connection is told (as
        its next response starts, server/drain.py); when the drain time is over, what is
        still open is closed. GAUGE (Envoy's listener_manager.total_*_draining) counts
        COUNT (default: one per chain) meanwhile."""
        if not draining:
            return
        local = DrainManager(self.drain.drain_time, self.drain.strategy)
        local.start(False)
        for d in draining:
            d.start_drain(local)
        self._end_later(draining, gauge, count or len(draining))

    def _end_later(self, draining: list[ChainDrain], gauge: str, count: int) -> None:
        self.stats.gauge_add(gauge, count)
        loop = asyncio.get_running_loop()

        def end() -> None:
            self._lds_drains.discard(timer)
            closed = sum(d.end() for d in draining)
            self.stats.gauge_add(gauge, -count)
            if closed:
                log.debug("LDS drain over: %d connection(s) closed", closed)
        timer = loop.call_later(self.drain.drain_time, end)
        self._lds_drains.add(timer)


@dataclass(frozen=True, eq=False)
class DrainingListener:
    """A listener version that drains: what the config dump shows as its draining_state."""

    name: str
    version_info: str
    raw: dict[str, Any]
    last_updated: float


def _filter_chain_only_change(old: ListenerConfig, new: ListenerConfig) -> bool:
    """Envoy's ListenerMessageUtil::filterChainOnlyChange: the listeners differ in their
    filter_chains and default_filter_chain only (then the update is in place)."""
    def rest(cfg: ListenerConfig) -> dict[str, object]:
        return {k: v for k, v in cfg.raw.items()
                if k not in ("filter_chains", "default_filter_chain")}
    return rest(old) == rest(new)


def _chain_key(raw: object) -> str:
    """A filter chain's identity across versions: its whole config (Envoy keys its filter
    chains by the FilterChain message)."""
    return json.dumps(raw, sort_keys=True, default=str)


def _unique(names: list[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(path, f"duplicate {what} name {name!r}")
        seen.add(name)
