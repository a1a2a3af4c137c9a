"""Per-route filter configuration (``typed_per_filter_config``) parsers by filter name.

Envoy lets a virtual host or route override an HTTP filter's config; the key is the
filter's name and the value an ``Any`` of the filter's per-route message
(https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto
``typed_per_filter_config``). Filter modules register a parser here; the route parser calls
it, so a per-route config for a filter remora does not implement is an error, not ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from remora.proxy.config.strict import ConfigError, Fields, type_url_of

PerRouteParser = Callable[[Fields], Any]

_PARSERS: dict[str, tuple[tuple[str, ...], PerRouteParser]] = {}


def register_per_route(filter_name: str, *type_urls: str) -> Callable[[PerRouteParser],
                                                                       PerRouteParser]:
    def deco(parser: PerRouteParser) -> PerRouteParser:
        _PARSERS[filter_name] = (type_urls, parser)
        return parser
    return deco


def parse_typed_per_filter_config(f: Fields) -> dict[str, Any]:
    """Reads ``typed_per_filter_config`` of F (a route, virtual host or route config)."""
    raw = f.raw("typed_per_filter_config")
    if raw is None:
        return {}
    path = f.at("typed_per_filter_config")
    if not isinstance(raw, dict):
        raise ConfigError(path, "expected a map of filter name to typed config")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        entry = _PARSERS.get(name)
        typed = Fields(value, f"{path}.{name}", "typed per-filter config")
        url = type_url_of(typed)
        if entry is None:
            raise ConfigError(
                f"{path}.{name}", f"no per-route config support for filter {name!r}",
                f"remora accepts per-route config for: {', '.join(sorted(_PARSERS)) or 'none'}")
        urls, parser = entry
        if url not in urls:
            raise ConfigError(f"{path}.{name}", f"unsupported per-route type {url!r}",
                              f"use {' or '.join(urls)}")
        out[name] = parser(typed)
        typed.done()
    return out
