"""The bootstrap's own listeners: 15021 (readiness) and 15090 (Prometheus stats).

Istio's bootstrap template (tools/packaging/common/envoy_bootstrap.json) has two static
listeners that capture leaves alone (istio-init's ``-d 15090,15021,15020``):
``0.0.0.0_15090`` routes ``/stats/prometheus`` to the static cluster ``prometheus_stats``
(Envoy's admin on 127.0.0.1:15000), and ``0.0.0.0_15021`` routes ``/healthz/ready`` to the
``agent`` cluster (pilot-agent's status port 15020), which reports ready once Envoy has
its config. remora has no pilot-agent: its 15021 answers 200 itself (direct_response),
which is true exactly when the sidecar is serving its listeners. The injected
istio-proxy container's readinessProbe points at it, as Istio's does.
"""

from __future__ import annotations

from remora.controlplane import envoy_common as e
from remora.controlplane.envoy_common import JSON

HEALTH_PORT = 15021
STATS_PORT = 15090
ADMIN_PORT = 15000


def _hcm(stat_prefix: str, vhost_routes: list[JSON]) -> JSON:
    return {
        "name": e.HCM,
        "typed_config": {
            "@type": e.TYPE + "envoy.extensions.filters.network.http_connection_manager.v3"
                              ".HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "route_config": {"virtual_hosts": [{"name": "backend", "domains": ["*"],
                                                "routes": vhost_routes}]},
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": e.TYPE + "envoy.extensions.filters.http.router.v3"
                                                   ".Router"}}],
        },
    }


def static_listeners() -> list[JSON]:
    return [
        {"name": f"0.0.0.0_{STATS_PORT}",
         "address": e.socket_address("0.0.0.0", STATS_PORT),
         "filter_chains": [{"filters": [_hcm("stats", [
             {"match": {"prefix": "/stats/prometheus"},
              "route": {"cluster": "prometheus_stats"}}])]}]},
        {"name": f"0.0.0.0_{HEALTH_PORT}",
         "address": e.socket_address("0.0.0.0", HEALTH_PORT),
         "filter_chains": [{"filters": [_hcm("agent", [
             {"match": {"prefix": "/healthz/ready"},
              "direct_response": {"status": 200}}])]}]},
    ]


def static_clusters() -> list[JSON]:
    return [{
        "name": "prometheus_stats",
        "type": "STATIC",
        "connect_timeout": "0.250s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": "prometheus_stats", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": e.socket_address("127.0.0.1", ADMIN_PORT)}}]}]},
    }]
