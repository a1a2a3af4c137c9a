"""RouteConfiguration: virtual hosts, routes and their matching, free of I/O.

Envoy reference: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route.proto
and route_components.proto. Virtual host selection follows Envoy's order (exact domain, then
the longest ``*.suffix`` wildcard, then the longest ``prefix.*`` wildcard, then ``*``; the
whole Host header, port included, is matched, which is why Istio lists ``svc`` and
``svc:port``). Routes are tried in order, the first match wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http.cached import cached_attribute
from remora.proxy.http.grpc_timeout import StreamDuration
from remora.proxy.http.header_matcher import HeaderMatcher as HeaderMatcher
from remora.proxy.http.header_matcher import parse_header_matcher, regex, string_matcher
from remora.proxy.http.header_mutation import HeaderMutations, parse_mutations
from remora.proxy.http.per_filter import parse_typed_per_filter_config
from remora.proxy.http.retry import RetryPolicy, parse_retry_policy

DEFAULT_ROUTE_TIMEOUT = 15.0  # RouteAction.timeout default


@dataclass
class Route:
    name: str | None
    # match
    prefix: str | None = None
    path: str | None = None
    regex: re.Pattern[str] | None = None
    case_sensitive: bool = True
    headers: tuple[HeaderMatcher, ...] = ()
    # action
    cluster: str | None = None
    timeout: float = DEFAULT_ROUTE_TIMEOUT  # 0 disables
    retry_policy: RetryPolicy | None = None
    direct_response: tuple[int, bytes] | None = None
    per_filter: dict[str, Any] = field(default_factory=dict)
    vhost: VirtualHost | None = None
    # route, then vhost, then table
    request_mutations: HeaderMutations = field(default_factory=HeaderMutations)
    response_mutations: HeaderMutations = field(default_factory=HeaderMutations)
    # RouteAction.max_stream_duration (grpc_timeout.py); None: the field is absent
    stream_duration: StreamDuration | None = None

    @cached_attribute
    def expected_timeout_header(self) -> tuple[str, str] | None:
        """x-envoy-expected-rq-timeout-ms on a first attempt (Envoy's
        FilterUtility::setTimeoutHeaders: the per-try timeout, else the route's), worked
        out once per route: it depends on the route's config alone."""
        from remora.proxy.http.upstream_request import expected_timeout_ms
        per_try = self.retry_policy.per_try_timeout if self.retry_policy is not None else 0.0
        expected = expected_timeout_ms(self.timeout, per_try, 0)
        return ("x-envoy-expected-rq-timeout-ms", str(expected)) if expected else None

    def matches(self, path: str, headers: dict[str, str]) -> bool:
        return self.path_matches(path) and (not self.headers or all(
            m.test(headers) for m in self.headers))

    @cached_attribute
    def path_matches(self) -> Callable[[str], bool]:
        """The path part of the match as one function, built on first use (once per route
        table); path and regex ignore the query string, a prefix does not."""
        if self.prefix is not None:
            prefix = self.prefix
            if self.case_sensitive:
                return lambda path: path.startswith(prefix)
            low_prefix = prefix.lower()
            return lambda path: path.lower().startswith(low_prefix)
        if self.path is not None:
            exact = self.path
            if self.case_sensitive:
                return lambda path: path.partition("?")[0] == exact
            low_exact = exact.lower()
            return lambda path: path.partition("?")[0].lower() == low_exact
        assert self.regex is not None
        fullmatch = self.regex.fullmatch
        return lambda path: fullmatch(path.partition("?")[0]) is not None

    def filter_config(self, name: str) -> Any:
        """Most specific per-filter config: route, then virtual host, then route config."""
        cfg = self.per_filter.get(name)
        if cfg is None and self.vhost is not None:
            cfg = self.vhost.per_filter.get(name)
            if cfg is None and self.vhost.table is not None:
                cfg = self.vhost.table.per_filter.get(name)
        return cfg


@dataclass
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: list[Route]
    per_filter: dict[str, Any] = field(default_factory=dict)
    retry_policy: RetryPolicy | None = None
    table: RouteTable | None = None
    # vhost, then table
    request_mutations: HeaderMutations = field(default_factory=HeaderMutations)
    response_mutations: HeaderMutations = field(default_factory=HeaderMutations)


@dataclass
class RouteTable:
    name: str
    vhosts: list[VirtualHost]
    per_filter: dict[str, Any] = field(default_factory=dict)
    _exact: dict[str, VirtualHost] = field(default_factory=dict)
    _suffix: list[tuple[str, VirtualHost]] = field(default_factory=list)
    _prefix: list[tuple[str, VirtualHost]] = field(default_factory=list)
    _default: VirtualHost | None = None
    _cache: dict[str, VirtualHost | None] = field(default_factory=dict)
    # by the Host header as sent: its virtual host's routes as (path test, header tests,
    # route), the tests read off the routes once (they are cached_attribute functions,
    # and an attribute that is a descriptor on the class is looked up the slow way on
    # every read)
    _matchers: dict[str, tuple[tuple[Callable[[str], bool],
                                     tuple[Callable[[dict[str, str]], bool], ...], Route],
                               ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for vh in self.vhosts:
            vh.table = self
            for d in vh.domains:
                d = d.lower()
                if d == "*":
                    self._default = self._default or vh
                elif d.startswith("*"):
                    self._suffix.append((d[1:], vh))
                elif d.endswith("*"):
                    self._prefix.append((d[:-1], vh))
                else:
                    self._exact.setdefault(d, vh)
        # longest wildcard wins; stable for equal lengths (config order)
        self._suffix.sort(key=lambda x: -len(x[0]))
        self._prefix.sort(key=lambda x: -len(x[0]))

    def virtual_host(self, authority: str) -> VirtualHost | None:
        # cached by the Host header as sent: the usual request pays one dict lookup
        cached = self._cache.get(authority, False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        host = authority.lower()
        vh = self._exact.get(host)
        if vh is None:
            vh = next((v for s, v in self._suffix if host.endswith(s) and len(host) > len(s)),
                      None)
        if vh is None:
            vh = next((v for p, v in self._prefix if host.startswith(p) and len(host) > len(p)),
                      None)
        if vh is None:
            vh = self._default
        if len(self._cache) < 1024:  # bounded: hosts come from clients
            self._cache[authority] = vh
        return vh

    def route(self, authority: str, path: str, headers: dict[str, str]) -> Route | None:
        matchers = self._matchers.get(authority)
        if matchers is None:
            vh = self.virtual_host(authority)
            matchers = () if vh is None else tuple(
                (r.path_matches, tuple(m.test for m in r.headers), r) for r in vh.routes)
            if len(self._matchers) < 1024:  # bounded: hosts come from clients
                self._matchers[authority] = matchers
        for path_matches, tests, r in matchers:
            if path_matches(path) and (not tests or all(t(headers) for t in tests)):
                return r
        return None


# -- parsing ---------------------------------------------------------------------------
_regex = regex
_string_matcher = string_matcher
_header_matcher = parse_header_matcher


def _route(f: Fields, vhost: VirtualHost) -> Route:
    r = Route(name=f.string("name"), vhost=vhost)
    match = f.fields("match", "RouteMatch")
    if match is None:
        raise ConfigError(f.at("match"), "required field is missing")
    r.prefix = match.string("prefix")
    r.path = match.string("path")
    rx = match.fields("safe_regex", "RegexMatcher")
    r.regex = _regex(rx) if rx is not None else None
    if sum(x is not None for x in (r.prefix, r.path, r.regex)) != 1:
        raise ConfigError(match.path, "route match needs exactly one of prefix, path, "
                                      "safe_regex")
    r.case_sensitive = bool(match.boolean("case_sensitive", True))
    r.headers = tuple(_header_matcher(h) for h in match.each("headers", "HeaderMatcher"))
    match.done()

    action = f.fields("route", "RouteAction")
    direct = f.fields("direct_response", "DirectResponseAction")
    for other in ("redirect", "filter_action", "non_forwarding_action"):
        if f.has(other):
            raise ConfigError(f.at(other), f"route action {other} is not implemented by remora",
                              "use route or direct_response")
    if (action is None) == (direct is None):
        raise ConfigError(f.path, "a route needs exactly one of route, direct_response",
                          "redirect and filter_action are not implemented by remora")
    if action is not None:
        r.cluster = action.string("cluster")
        if r.cluster is None:
            raise ConfigError(action.at("cluster"), "required field is missing",
                              "weighted_clusters and cluster_header are not implemented")
        r.timeout = action.duration("timeout", DEFAULT_ROUTE_TIMEOUT)
        rp = action.fields("retry_policy", "RetryPolicy")
        r.retry_policy = parse_retry_policy(rp) if rp is not None else vhost.retry_policy
        _zero_only(action, "max_grpc_timeout")
        msd = action.fields("max_stream_duration", "MaxStreamDuration")
        if msd is not None:
            r.stream_duration = StreamDuration(
                msd.duration("max_stream_duration"), msd.duration("grpc_timeout_header_max"),
                msd.duration("grpc_timeout_header_offset"))
            msd.done()
            # With max_stream_duration present Envoy uses its "new timeouts": the route's
            # `timeout` no longer applies (router's FilterUtility::finalTimeout,
            # route.usingNewTimeouts()); observed on Envoy 1.40 with Istio's "0s" values.
            r.timeout = 0.0
        action.done()
    if direct is not None:
        status = direct.integer("status", required=True)
        body = direct.fields("body", "DataSource")
        data = b""
        if body is not None:
            data = (body.string("inline_string", "") or "").encode()
            body.done()
        direct.done()
        r.direct_response = (status, data)
    f.ignore("decorator")  # only feeds tracing spans, which remora does not emit
    r.request_mutations = parse_mutations(f, "request").then(vhost.request_mutations)
    r.response_mutations = parse_mutations(f, "response").then(vhost.response_mutations)
    r.per_filter = parse_typed_per_filter_config(f)
    f.done()
    return r


def _zero_only(f: Fields, name: str) -> None:
    """RouteAction.max_grpc_timeout (deprecated, for routes without max_stream_duration):
    Istio writes it as "0s" (disabled); anything else is unimplemented."""
    v = f.duration(name)
    if v:
        raise ConfigError(f.at(name), "non-zero value is not implemented by remora",
                          "remove it or set \"0s\"")


def _unique_domains(vf: Fields, vh: VirtualHost, seen: dict[str, str], table: str) -> None:
    """Envoy's RouteMatcher refuses a domain (lower-cased) that a virtual host of the
    same route config already has, the same one included, and a second "*"."""
    for j, d in enumerate(vh.domains):
        low = str(d).lower()
        other = seen.get(low)
        if other is not None:
            what = ("Only a single wildcard domain is permitted" if low == "*" else
                    f"Only unique values for domains are permitted: duplicate {low!r}")
            raise ConfigError(f"{vf.at('domains')}[{j}]",
                              f"{what} in route {table!r} (also in virtual host {other!r}; "
                              "Envoy refuses it)",
                              "list each domain in one virtual host only")
        seen[low] = vh.name


def parse_route_configuration(f: Fields,
                              cluster_known: Callable[[str], object] | None = None,
                              ) -> RouteTable:
    """F: an inline RouteConfiguration. CLUSTER_KNOWN (a cluster manager's lookup): each
    route's cluster must be one it knows unless ``validate_clusters`` is false, as Envoy
    checks an inline route_config (validate_clusters is true by default there:
    RouteEntryImplBase::validateClusters, "route: unknown cluster"); a route to an
    unknown cluster then answers 503 NC at request time."""
    name = f.string("name", "") or ""
    validate = f.boolean("validate_clusters", True)
    per_filter = parse_typed_per_filter_config(f)
    table_req = parse_mutations(f, "request")
    table_resp = parse_mutations(f, "response")
    vhosts: list[VirtualHost] = []
    seen: dict[str, str] = {}  # lower-cased domain: its virtual host
    for vf in f.each("virtual_hosts", "VirtualHost"):
        vh = VirtualHost(name=vf.string("name", required=True),
                         domains=tuple(vf.raw("domains", [])), routes=[])
        if not vh.domains:
            raise ConfigError(vf.at("domains"), "a virtual host needs at least one domain")
        rp = vf.fields("retry_policy", "RetryPolicy")
        vh.retry_policy = parse_retry_policy(rp) if rp is not None else None
        vh.request_mutations = parse_mutations(vf, "request").then(table_req)
        vh.response_mutations = parse_mutations(vf, "response").then(table_resp)
        vh.per_filter = parse_typed_per_filter_config(vf)
        cors = vf.fields("cors", "CorsPolicy")  # deprecated v3 field, same as per-filter config
        if cors is not None:
            from remora.proxy.http.cors import parse_cors_policy
            vh.per_filter.setdefault("envoy.filters.http.cors", parse_cors_policy(cors))
            cors.done()
        vh.routes = [_route(rf, vh) for rf in vf.each("routes", "Route")]
        vf.done()
        vhosts.append(vh)
        _unique_domains(vf, vh, seen, name)
        if validate and cluster_known is not None:
            for i, r in enumerate(vh.routes):
                if r.cluster is not None and not cluster_known(r.cluster):
                    raise ConfigError(
                        f"{vf.at('routes')}[{i}].route.cluster",
                        f"route: unknown cluster {r.cluster!r} (Envoy refuses it: "
                        "validate_clusters is true by default for an inline route_config)",
                        "define the cluster, or set validate_clusters: false on the "
                        "route_config (the route then answers 503 NC)")
    f.done()
    return RouteTable(name=name, vhosts=vhosts, per_filter=per_filter)
