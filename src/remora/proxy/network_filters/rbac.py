"""``envoy.filters.network.rbac``: allow or close a connection by source, identity, port.

Envoy reference: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/network_filters/rbac_filter
(source/extensions/filters/network/rbac/rbac_filter.cc). The decision uses what a
connection carries: the direct peer and remote addresses, the original destination, the
peer certificate (mTLS), SNI. Denied: the connection is closed without a byte relayed,
``<stat_prefix>rbac.denied`` is counted and the connection's termination details read
``rbac_access_denied_matched_policy[NAME]`` (``[none]`` when no ALLOW policy matched),
as Envoy writes them. The access loggers of the chain's terminal filter (tcp_proxy) log
the denied connection, as Envoy's tcp_proxy does when the connection closes.

Difference from Envoy: Envoy decides on the first data the client sends
(enforcement_type ONE_TIME_ON_FIRST_BYTE); remora decides as soon as the chain runs (after
the TLS handshake on tls chains), so a denied client that never sends is closed sooner.
"""

from __future__ import annotations

from typing import Any

from remora.proxy import registry
from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.interfaces import AccessLogger, Downstream, FactoryContext, NetworkFilter
from remora.proxy.rbac_engine import Rbac, RbacInput, parse_rules

NAME = "envoy.filters.network.rbac"
TYPE_URL = "envoy.extensions.filters.network.rbac.v3.RBAC"


def connection_input(downstream: Downstream, headers: dict[str, str] | None = None,
                     remote_ip: str | None = None) -> RbacInput:
    facts = downstream.facts
    # positional, in RbacInput's field order: a keyword call costs twice as much
    return RbacInput(
        facts.direct_remote_ip, remote_ip or facts.remote_ip, facts.local_ip,
        facts.local_port, facts.peer_uri_sans, facts.peer_dns_sans, facts.peer_subject,
        facts.tls_established, facts.server_name or "", headers)


class NetworkRbacFilter:
    def __init__(self, context: FactoryContext, stat_prefix: str, rules: Rbac | None) -> None:
        self.context = context
        self.prefix = stat_prefix
        self.rules = rules
        self.loggers: list[AccessLogger] = []
        for name in ("allowed", "denied"):
            context.stats.inc(f"{stat_prefix}rbac.{name}", 0)

    def bind_chain(self, filters: list[NetworkFilter]) -> None:
        """Called by the listener with its chain: the loggers that log a denial."""
        for f in filters:
            self.loggers += getattr(f, "access_loggers", [])

    async def on_connection(self, downstream: Downstream) -> None:
        if self.rules is None:
            self.context.stats.inc(self.prefix + "rbac.allowed")
            return
        decision = self.rules.evaluate(connection_input(downstream))
        if decision.allowed:
            self.context.stats.inc(self.prefix + "rbac.allowed")
            return
        self.context.stats.inc(self.prefix + "rbac.denied")
        info = downstream.info
        info.connection_termination_details = decision.details
        downstream.close()
        info.finish()
        for logger in self.loggers:
            logger.log(info)


@registry.register("network", NAME, TYPE_URL)
def _factory(typed: Fields, context: Any) -> NetworkRbacFilter:
    stat_prefix = typed.string("stat_prefix", required=True)
    rules = parse_rules(typed.fields("rules", "RBAC"), network=True)
    for unsupported in ("shadow_rules", "matcher", "shadow_matcher", "shadow_rules_stat_prefix"):
        if typed.has(unsupported):
            raise ConfigError(typed.at(unsupported), "not implemented by remora",
                              "use rules (Istio's AuthorizationPolicy compiles to rules)")
    typed.enum("enforcement_type", ("ONE_TIME_ON_FIRST_BYTE",), "ONE_TIME_ON_FIRST_BYTE")
    typed.done()
    return NetworkRbacFilter(context, stat_prefix, rules)
