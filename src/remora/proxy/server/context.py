"""The ``FactoryContext`` handed to every filter factory."""

from __future__ import annotations

from collections.abc import Sequence

from remora.proxy import access_log
from remora.proxy.interfaces import AccessLogger, JsonValue
from remora.proxy.stats import StatsStore
from remora.proxy.upstream.cluster import ClusterManagerImpl


class ProxyContext:
    """``interfaces.FactoryContext``. Besides the contract: ``node_id`` (the bootstrap's
    node.id) for filters that report it."""

    def __init__(self, stats: StatsStore, cluster_manager: ClusterManagerImpl,
                 node_id: str = "") -> None:
        self.stats = stats
        self.cluster_manager = cluster_manager
        self.node_id = node_id

    # the listener a filter is built for: listener.<stat_prefix or address>. (set on the
    # copy ``for_listener`` gives; the connection manager's listener-scoped stats)
    listener_scope: str | None = None

    def for_listener(self, scope: str) -> ProxyContext:
        """This context for the filters of the listener whose stats are under SCOPE."""
        ctx = ProxyContext(self.stats, self.cluster_manager, self.node_id)
        ctx.listener_scope = scope
        return ctx

    def access_loggers(self, configs: Sequence[JsonValue], path: str) -> list[AccessLogger]:
        return access_log.build(configs, path, self)
