"""The registry's built-in extensions are an explicit list: every module in the proxy
package that registers an extension is on it (so none is silently missing), and loading
the list registers what the sidecar configs name."""

from __future__ import annotations

import re
from pathlib import Path

from remora.proxy import registry

PROXY = Path(registry.__file__).parent


def test_every_registering_module_is_listed() -> None:
    registering = set()
    for path in PROXY.rglob("*.py"):
        if path.name == "registry.py":
            continue
        if re.search(r"^@(registry\.)?register\(|^\s*register\(", path.read_text(), re.M):
            mod = ".".join(("remora", "proxy", *path.relative_to(PROXY).with_suffix("").parts))
            registering.add(mod.removesuffix(".__init__"))
    assert registering, "the scan found no registering module"
    assert registering <= set(registry.BUILTIN_MODULES), registering - set(
        registry.BUILTIN_MODULES)


def test_the_list_registers_the_sidecar_extensions() -> None:
    assert "envoy.filters.network.tcp_proxy" in registry.names("network")
    assert "envoy.filters.network.http_connection_manager" in registry.names("network")
    assert "envoy.filters.http.router" in registry.names("http")
    assert "envoy.filters.listener.original_dst" in registry.names("listener")
    assert "envoy.access_loggers.file" in registry.names("access_logger")
