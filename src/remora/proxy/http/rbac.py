"""``envoy.filters.http.rbac``: allow a request, or answer 403 ``RBAC: access denied``.

Envoy reference: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rbac_filter
(source/extensions/filters/http/rbac/rbac_filter.cc). Same engine as the network filter
(``rbac_engine``), with the request's headers and path. Denied: a local reply 403 with
body ``RBAC: access denied``, RESPONSE_CODE_DETAILS
``rbac_access_denied_matched_policy[NAME]`` and ``http.<hcm stat_prefix>.rbac.denied``.
A route's ``typed_per_filter_config`` (RBACPerRoute) is not implemented and is refused
where routes are parsed.
"""

from __future__ import annotations

import weakref

from remora.proxy import registry
from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http.filter import HttpStream
from remora.proxy.interfaces import ConnectionFacts, FactoryContext, Stats
from remora.proxy.network_filters.rbac import connection_input
from remora.proxy.rbac_engine import Rbac, RbacInput, parse_rules
from remora.proxy.stats import Counter, counter

NAME = "envoy.filters.http.rbac"
TYPE_URL = "envoy.extensions.filters.http.rbac.v3.RBAC"
DENIED_BODY = b"RBAC: access denied"
_INPUTS_KEPT = 1024  # connections whose RbacInput is kept (all dropped when full)


def _ip(address: str | None) -> str | None:
    if not address:
        return None
    host = address.rsplit(":", 1)[0]
    return host.strip("[]")


class HttpRbacFilter:
    terminal = False

    def __init__(self, stats: Stats, rules: Rbac | None) -> None:
        self.stats = stats
        self.rules = rules
        # (allowed, denied) counter handles per connection manager stat_prefix, resolved
        # once (each listed from its first increment, as counted by name before)
        self._counters: dict[str, tuple[Counter, Counter]] = {}
        # the last downstream address seen and its IP (_ip's answer for it)
        self._last_address: str | None = None
        self._last_ip: str | None = None
        # per downstream connection (by its facts, held weakly): its RbacInput
        self._inputs: dict[int, tuple[weakref.ref[ConnectionFacts], RbacInput]] = {}

    def _stat_counters(self, stat_prefix: str) -> tuple[Counter, Counter]:
        handles = self._counters.get(stat_prefix)
        if handles is None:
            p = f"http.{stat_prefix}.rbac."
            handles = self._counters[stat_prefix] = (counter(self.stats, p + "allowed"),
                                                     counter(self.stats, p + "denied"))
        return handles

    async def decode_headers(self, stream: HttpStream) -> bool:
        conn = stream.conn
        handles = self._counters.get(conn.cfg.stat_prefix)
        allowed, denied = handles or self._stat_counters(conn.cfg.stat_prefix)
        if self.rules is None:
            allowed.inc()
            return True
        info = stream.info
        address = info.downstream_remote_address
        if address is not self._last_address:  # the same text on a connection's requests
            self._last_address, self._last_ip = address, _ip(address)
        # the engine only reads the headers: the request's own map, not a copy
        headers = info.request_headers or {}
        downstream = conn.downstream
        facts = downstream.facts
        entry = self._inputs.get(id(facts))
        if entry is not None and entry[0]() is facts:
            # what the connection carries does not change during it: its input, with
            # this request's headers and remote address (evaluate runs to its end before
            # any other request can reach this filter)
            request = entry[1]
            request.headers = headers
            request.remote_ip = self._last_ip or facts.remote_ip
        else:
            request = connection_input(downstream, headers, remote_ip=self._last_ip)
            if len(self._inputs) >= _INPUTS_KEPT:
                self._inputs.clear()
            self._inputs[id(facts)] = (weakref.ref(facts), request)
        decision = self.rules.evaluate(request)
        if decision.allowed:
            allowed.inc()
            return True
        denied.inc()
        return stream.local_reply(403, DENIED_BODY, decision.details)


@registry.register("http", NAME, TYPE_URL)
def _factory(typed: Fields, context: FactoryContext) -> HttpRbacFilter:
    rules = parse_rules(typed.fields("rules", "RBAC"))
    for unsupported in ("shadow_rules", "matcher", "shadow_matcher", "shadow_rules_stat_prefix",
                        "rules_stat_prefix", "track_per_rule_stats"):
        if typed.has(unsupported):
            raise ConfigError(typed.at(unsupported), "not implemented by remora",
                              "use rules (Istio's AuthorizationPolicy compiles to rules)")
    typed.done()
    return HttpRbacFilter(context.stats, rules)
