"""Extensions by their Envoy names and type URLs.

One module per filter registers itself here under its Envoy name (docs/architecture.md).
Envoy picks an extension by the ``@type`` of its ``typed_config``
and falls back on ``name``; remora does the same. Looking up an unknown extension is a
config error naming it, never a silent skip.

Factories receive the typed_config as a ``Fields`` reader (``@type`` already read) and
must read every field they support and call ``done()``, then return the runtime object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from remora.proxy.config.strict import ConfigError, Fields, type_url_of

Kind = Literal["listener", "network", "http", "access_logger", "transport_socket", "other"]

Factory = Callable[[Fields, Any], Any]
"""(typed_config reader, factory context) -> runtime object"""


@dataclass(frozen=True)
class Extension:
    kind: Kind
    name: str
    type_urls: tuple[str, ...]
    factory: Factory


_BY_NAME: dict[tuple[Kind, str], Extension] = {}
_BY_TYPE: dict[tuple[Kind, str], Extension] = {}


def register(kind: Kind, name: str, *type_urls: str) -> Callable[[Factory], Factory]:
    """Decorator, e.g. ``@register("network", "envoy.filters.network.tcp_proxy", URL)``."""

    def deco(factory: Factory) -> Factory:
        ext = Extension(kind, name, tuple(type_urls), factory)
        _BY_NAME[(kind, name)] = ext
        for url in type_urls:
            _BY_TYPE[(kind, url)] = ext
        return factory

    return deco


def lookup(kind: Kind, name: str | None, type_url: str | None, path: str) -> Extension:
    _load_builtin()
    if type_url:
        ext = _BY_TYPE.get((kind, type_url))
        if ext is None and type_url == "udpa.type.v1.TypedStruct":
            ext = _BY_NAME.get((kind, name or ""))
        if ext is None:
            known = sorted({e.name for (k, _), e in _BY_TYPE.items() if k == kind})
            raise ConfigError(
                path, f"unsupported {kind} extension type {type_url!r} (name {name!r})",
                f"remora implements: {', '.join(known) or 'none'}",
            )
        return ext
    ext = _BY_NAME.get((kind, name or ""))
    if ext is None:
        raise ConfigError(path, f"unknown {kind} extension {name!r} and no typed_config @type")
    return ext


def instantiate(kind: Kind, name: str | None, typed: Fields | None, path: str,
                context: Any) -> tuple[Extension, Any]:
    """Resolve and build the extension an entry names (``name`` + ``typed_config``), as
    Envoy does: by the typed_config's @type, else by name. PATH is the entry's
    typed_config path; an extension given no typed_config is built from an empty one."""
    ext = lookup(kind, name, type_url_of(typed) if typed is not None else None, path)
    return ext, ext.factory(typed if typed is not None else Fields({}, path), context)


def names(kind: Kind) -> list[str]:
    _load_builtin()
    return sorted(n for (k, n) in _BY_NAME if k == kind)


_loaded = False


# The modules that register the built-in extensions, named one by one (not found by a
# package scan): a module that fails to import is an error at startup, never a filter
# that silently does not exist.
BUILTIN_MODULES = (
    "remora.proxy.listener_filters.http_inspector",
    "remora.proxy.listener_filters.original_dst",
    "remora.proxy.listener_filters.original_src",
    "remora.proxy.listener_filters.tls_inspector",
    "remora.proxy.network_filters.rbac",
    "remora.proxy.network_filters.tcp_proxy",
    "remora.proxy.http.hcm",
    "remora.proxy.http.router",
    "remora.proxy.http.cors",
    "remora.proxy.http.fault",
    "remora.proxy.http.rbac",
    "remora.proxy.http.istio_filters",
    "remora.proxy.access_log.file",
    "remora.proxy.access_log.stdout",
)


def _load_builtin() -> None:
    """Import the modules that register the built-in extensions (once, lazily, so that
    importing the registry never drags in every filter)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for name in BUILTIN_MODULES:
        importlib.import_module(name)
