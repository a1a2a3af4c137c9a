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

    def access_loggers(self, configs: Sequence[JsonValue], path: str) -> list[AccessLogger]:
        return access_log.build(configs, path, self)
