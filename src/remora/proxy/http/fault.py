"""``envoy.filters.http.fault``: injected delays and aborts.

Envoy reference: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/fault_filter
and HTTPFault in fault.proto. The filter's typed_config applies to every route; a route's or
virtual host's ``typed_per_filter_config`` replaces it. Delay first, then abort, as Envoy.
Checked against Envoy 1.40: an abort answers ``fault filter abort`` (text/plain) with flag FI
and details ``fault_filter_abort``; a delay sets flag DI and the request proceeds.
Header-controlled faults (``header_abort`` / ``header_delay``) read
x-envoy-fault-abort-request, x-envoy-fault-abort-request-percentage,
x-envoy-fault-delay-request and x-envoy-fault-delay-request-percentage.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

from remora.proxy import registry
from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http.filter import HttpStream
from remora.proxy.http.per_filter import register_per_route
from remora.proxy.http.route_config import HeaderMatcher, Route, _header_matcher
from remora.proxy.interfaces import FactoryContext

FAULT_NAME = "envoy.filters.http.fault"
FAULT_TYPE = "envoy.extensions.filters.http.fault.v3.HTTPFault"
_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10000, "MILLION": 1000000}


@dataclass(frozen=True)
class Percent:
    numerator: int
    denominator: int

    def hit(self) -> bool:
        return random.randrange(self.denominator) < self.numerator


@dataclass(frozen=True)
class FaultConfig:
    delay: float | None = None  # fixed delay, seconds
    delay_from_header: bool = False
    delay_percent: Percent = Percent(0, 100)
    abort_status: int | None = None
    abort_from_header: bool = False
    abort_percent: Percent = Percent(0, 100)
    headers: tuple[HeaderMatcher, ...] = ()
    upstream_cluster: str | None = None
    max_active_faults: int | None = None

    @property
    def empty(self) -> bool:
        return (self.delay is None and not self.delay_from_header and self.abort_status is None
                and not self.abort_from_header)


def _percent(f: Fields) -> Percent:
    p = f.fields("percentage", "FractionalPercent")
    if p is None:
        return Percent(0, 100)
    num = p.integer("numerator", 0)
    den = _DENOMINATORS[p.enum("denominator", tuple(_DENOMINATORS), "HUNDRED")]
    p.done()
    return Percent(min(num, den), den)


def parse_fault(f: Fields) -> FaultConfig:
    kw: dict[str, Any] = {}
    d = f.fields("delay", "FaultDelay")
    if d is not None:
        kw["delay"] = d.duration("fixed_delay")
        hd = d.fields("header_delay", "HeaderDelay")
        if hd is not None:
            hd.done()
            kw["delay_from_header"] = True
        if kw["delay"] is None and not kw.get("delay_from_header"):
            raise ConfigError(d.path, "a delay needs fixed_delay or header_delay")
        kw["delay_percent"] = _percent(d)
        d.done()
    a = f.fields("abort", "FaultAbort")
    if a is not None:
        kw["abort_status"] = a.integer("http_status")
        ha = a.fields("header_abort", "HeaderAbort")
        if ha is not None:
            ha.done()
            kw["abort_from_header"] = True
        if kw["abort_status"] is None and not kw.get("abort_from_header"):
            raise ConfigError(a.path, "an abort needs http_status or header_abort",
                              "grpc_status aborts are not implemented by remora")
        kw["abort_percent"] = _percent(a)
        a.done()
    kw["headers"] = tuple(_header_matcher(h) for h in f.each("headers", "HeaderMatcher"))
    kw["upstream_cluster"] = f.string("upstream_cluster")
    kw["max_active_faults"] = f.integer("max_active_faults")
    return FaultConfig(**kw)


@register_per_route(FAULT_NAME, FAULT_TYPE)
def _per_route(f: Fields) -> FaultConfig:
    return parse_fault(f)


@registry.register("http", FAULT_NAME, FAULT_TYPE)
def _factory(f: Fields, ctx: FactoryContext) -> FaultFilter:
    cfg = parse_fault(f)
    f.done()
    return FaultFilter(cfg)


def _header_int(stream: HttpStream, name: str) -> int | None:
    v = stream.req.hmap.get(name)
    if v is None or not v.isdigit():
        return None
    return int(v)


class FaultFilter:
    terminal = False

    def __init__(self, cfg: FaultConfig) -> None:
        self.cfg = cfg
        self.active = 0

    def inert_for(self, route: Route) -> bool:
        """No fault configured for ROUTE (nor on the filter): requests on it pass as they
        are, so the connection manager leaves the filter out of their chain."""
        return (route.filter_config(FAULT_NAME) or self.cfg).empty

    async def decode_headers(self, stream: HttpStream) -> bool:
        route = stream.route
        cfg = self.cfg
        if route is not None:
            cfg = route.filter_config(FAULT_NAME) or cfg
        if cfg.empty:
            return True
        if cfg.upstream_cluster is not None and (route is None
                                                 or route.cluster != cfg.upstream_cluster):
            return True
        if cfg.headers and not all(m.matches(stream.info.request_headers or {})
                                   for m in cfg.headers):
            return True
        if cfg.max_active_faults is not None and self.active >= cfg.max_active_faults:
            return True
        delay = cfg.delay
        delay_pct = cfg.delay_percent
        if cfg.delay_from_header:
            ms = _header_int(stream, "x-envoy-fault-delay-request")
            delay = ms / 1000 if ms is not None else None
            pct = _header_int(stream, "x-envoy-fault-delay-request-percentage")
            if pct is not None:
                delay_pct = Percent(min(pct, delay_pct.numerator), delay_pct.denominator)
        if delay is not None and delay_pct.hit():
            stream.info.set_flag("DI")
            self.active += 1
            try:
                await asyncio.sleep(delay)
            finally:
                self.active -= 1
        status = cfg.abort_status
        abort_pct = cfg.abort_percent
        if cfg.abort_from_header:
            status = _header_int(stream, "x-envoy-fault-abort-request")
            pct = _header_int(stream, "x-envoy-fault-abort-request-percentage")
            if pct is not None:
                abort_pct = Percent(min(pct, abort_pct.numerator), abort_pct.denominator)
        if status is not None and 200 <= status < 600 and abort_pct.hit():
            return stream.local_reply(status, b"fault filter abort", "fault_filter_abort", "FI")
        return True
