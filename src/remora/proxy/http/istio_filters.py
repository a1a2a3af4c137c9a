"""Istio's own HTTP filters, refused by name with a useful fix.

Istio's full sidecar config also carries filters that only exist in Istio's Envoy build
(proxyv2): ``istio.metadata_exchange`` (peer metadata for telemetry), ``istio.stats``
(Istio's standard metrics), ``istio.alpn`` (ALPN override towards mTLS upstreams). Their
effect is telemetry and mTLS negotiation that remora does not reproduce, so rather than
accept them silently remora names them and says what to do. Registered under their names
and usual type URLs so the error is this one, not "unknown extension".
"""

from __future__ import annotations

from typing import Any, NoReturn

from remora.proxy import registry
from remora.proxy.config.strict import ConfigError, Fields

_ISTIO_ONLY = {
    "istio.metadata_exchange": ("io.istio.http.peer_metadata.Config",
                                "io.istio.http.metadata_exchange.Config"),
    "istio.stats": ("stats.PluginConfig",),
    "istio.alpn": ("istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",),
}


def _refuse(name: str) -> Any:
    def factory(f: Fields, ctx: Any) -> NoReturn:
        raise ConfigError(
            f.path.rsplit(".typed_config", 1)[0] or f.path,
            f"HTTP filter {name!r} exists only in Istio's Envoy build (proxyv2); remora does "
            "not implement its telemetry/mTLS behaviour",
            "remove it from http_filters (remora's access log and stats cover the seed), or "
            "run this config on Istio's proxy")
    return factory


for _name, _types in _ISTIO_ONLY.items():
    registry.register("http", _name, *_types)(_refuse(_name))
