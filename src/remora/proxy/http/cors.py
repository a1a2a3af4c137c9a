"""``envoy.filters.http.cors``: answers CORS preflights and decorates CORS responses from the
policy in a route's or virtual host's ``typed_per_filter_config`` (or the virtual host's
deprecated ``cors`` field).

Envoy reference: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/cors_filter
and CorsPolicy in cors.proto. Header order checked against Envoy 1.40. The filter's own
typed_config (``Cors``) has no fields; without a policy it does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from remora.proxy import registry
from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http.per_filter import register_per_route
from remora.proxy.http.route_config import Route, _string_matcher
from remora.proxy.http.stream import ActiveStream
from remora.proxy.interfaces import FactoryContext

CORS_NAME = "envoy.filters.http.cors"
CORS_TYPE = "envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY_TYPE = "envoy.extensions.filters.http.cors.v3.CorsPolicy"


@dataclass(frozen=True)
class CorsPolicy:
    origins: tuple[tuple[str, Any, bool], ...]
    allow_methods: str | None = None
    allow_headers: str | None = None
    expose_headers: str | None = None
    max_age: str | None = None
    allow_credentials: bool = False
    enabled: bool = True
    forward_not_matching_preflights: bool = True

    def origin_allowed(self, origin: str) -> bool:
        for kind, value, icase in self.origins:
            o = origin.lower() if icase else origin
            if ((kind == "exact" and o == value) or (kind == "prefix" and o.startswith(value))
                    or (kind == "suffix" and o.endswith(value))
                    or (kind == "contains" and value in o)
                    or (kind == "regex" and value.fullmatch(origin))):
                return True
        return False


def _enabled(f: Fields, name: str) -> bool:
    """RuntimeFractionalPercent: only 0% or 100% defaults are meaningful without a runtime."""
    rf = f.fields(name, "RuntimeFractionalPercent")
    if rf is None:
        return True
    rf.ignore("runtime_key")
    dv = rf.fields("default_value", "FractionalPercent")
    on = True
    if dv is not None:
        num = dv.integer("numerator", 0)
        den = {"HUNDRED": 100, "TEN_THOUSAND": 10000, "MILLION": 1000000}[
            dv.enum("denominator", ("HUNDRED", "TEN_THOUSAND", "MILLION"), "HUNDRED")]
        dv.done()
        if num not in (0, den) and num < den:
            raise ConfigError(dv.path, "partial CORS enablement is not implemented",
                              "use 0 or 100 percent")
        on = num > 0
    rf.done()
    return on


def parse_cors_policy(f: Fields) -> CorsPolicy:
    origins = []
    for m in f.each("allow_origin_string_match", "StringMatcher"):
        origins.append(_string_matcher(m))
        m.done()
    max_age = f.string("max_age")
    policy = CorsPolicy(
        origins=tuple(origins), allow_methods=f.string("allow_methods"),
        allow_headers=f.string("allow_headers"), expose_headers=f.string("expose_headers"),
        max_age=max_age, allow_credentials=bool(f.boolean("allow_credentials", False)),
        enabled=_enabled(f, "filter_enabled"),
        forward_not_matching_preflights=bool(f.boolean("forward_not_matching_preflights",
                                                       True)))
    if f.has("shadow_enabled"):
        _enabled(f, "shadow_enabled")  # shadow mode only emits stats; no effect on traffic
    if f.boolean("allow_private_network_access", False):
        raise ConfigError(f.at("allow_private_network_access"), "not implemented by remora")
    return policy


@register_per_route(CORS_NAME, CORS_POLICY_TYPE)
def _per_route(f: Fields) -> CorsPolicy:
    return parse_cors_policy(f)


@registry.register("http", CORS_NAME, CORS_TYPE)
def _factory(f: Fields, ctx: FactoryContext) -> CorsFilter:
    f.done()
    return CorsFilter()


class CorsFilter:
    terminal = False

    def inert_for(self, route: Route) -> bool:
        """No enabled CORS policy for ROUTE: the filter neither answers nor adds headers
        there, so the connection manager leaves it out of the chain of its requests."""
        policy = route.filter_config(CORS_NAME)
        return policy is None or not policy.enabled

    async def decode_headers(self, stream: ActiveStream) -> bool:
        route = stream.route
        if route is None:
            return True
        policy = route.filter_config(CORS_NAME)
        if policy is None or not policy.enabled:
            return True
        origin = stream.req.hmap.get("origin")
        if not origin:
            return True
        if not policy.origin_allowed(origin):
            if (stream.method == "OPTIONS" and "access-control-request-method" in stream.req.hmap
                    and not policy.forward_not_matching_preflights):
                return stream.local_reply(200, b"", "cors_response")
            return True
        if stream.method == "OPTIONS" and stream.req.hmap.get("access-control-request-method"):
            headers = [("access-control-allow-origin", origin)]
            if policy.allow_credentials:
                headers.append(("access-control-allow-credentials", "true"))
            if policy.allow_methods:
                headers.append(("access-control-allow-methods", policy.allow_methods))
            if policy.allow_headers:
                headers.append(("access-control-allow-headers", policy.allow_headers))
            if policy.max_age:
                headers.append(("access-control-max-age", policy.max_age))
            if policy.expose_headers:
                headers.append(("access-control-expose-headers", policy.expose_headers))
            return stream.local_reply(200, b"", "cors_response", headers=headers)
        stream.cors_origin = (origin, policy)
        return True

    def encode_headers(self, stream: ActiveStream, status: int,
                       headers: list[tuple[str, str]]) -> None:
        state = stream.cors_origin
        if state is None:
            return
        origin, policy = state
        assert isinstance(policy, CorsPolicy)
        headers.append(("access-control-allow-origin", origin))
        if policy.allow_credentials:
            headers.append(("access-control-allow-credentials", "true"))
        if policy.expose_headers:
            headers.append(("access-control-expose-headers", policy.expose_headers))
