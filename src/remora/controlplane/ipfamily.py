"""The proxy's IP families and the addresses istiod derives from them (dual stack).

istiod reads a proxy's IP mode from its addresses (model.Proxy.GetIPMode: IPv4, IPv6 or
Dual) and picks, per mode, the wildcards it binds listeners to, the loopback and the
inbound passthrough bind (pilot/pkg/networking/core/listener_address.go: "6 is the
magical number for inbound: 15006, 127.0.0.6, ::6"). The first address of each list is
the listener's ``address``; the rest become ``additional_addresses`` (listeners) or
``extra_source_addresses`` (upstream_bind_config) -- buildVirtualOutboundListener,
buildInboundListener, buildInboundPassthroughCluster, buildInboundClusterForPortOrUDS.
An IPv4-only proxy gets exactly what it got before dual stack.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from remora.controlplane.envoy_common import JSON, socket_address

WILDCARD_V4, WILDCARD_V6 = "0.0.0.0", "::"
PASSTHROUGH_BIND_V4, PASSTHROUGH_BIND_V6 = "127.0.0.6", "::6"


def is_v6(ip: str) -> bool:
    return ":" in ip


@dataclass(frozen=True)
class IpFamilies:
    """Which families a proxy has; IPv4 alone when it has no address yet."""

    v4: bool = True
    v6: bool = False

    @classmethod
    def of(cls, ips: Iterable[str]) -> IpFamilies:
        found = [ip for ip in ips if ip]
        for ip in found:
            ipaddress.ip_address(ip)  # a bad address fails here, not in Envoy
        v6 = any(is_v6(ip) for ip in found)
        v4 = any(not is_v6(ip) for ip in found) or not found
        return cls(v4=v4, v6=v6)

    @property
    def dual(self) -> bool:
        return self.v4 and self.v6

    def _pick(self, v4: str, v6: str) -> list[str]:
        return [x for x, on in ((v4, self.v4), (v6, self.v6)) if on]

    @property
    def wildcards(self) -> list[str]:
        return self._pick(WILDCARD_V4, WILDCARD_V6)

    @property
    def passthrough_binds(self) -> list[str]:
        return self._pick(PASSTHROUGH_BIND_V4, PASSTHROUGH_BIND_V6)

    @property
    def all_ranges(self) -> list[JSON]:
        """Every destination of the proxy's families, as filter-chain prefix_ranges."""
        return [{"address_prefix": w, "prefix_len": 0} for w in self.wildcards]

    def keep(self, ips: Iterable[str]) -> list[str]:
        """The addresses of IPS a proxy of these families can use (all of them in dual
        stack; Istio's Service.GetAllAddressesForProxy)."""
        return [ip for ip in ips if ip and (self.v6 if is_v6(ip) else self.v4)]


def additional_addresses(ips: list[str], port: int) -> list[JSON]:
    """Listener.additional_addresses for the addresses after the first
    (pilot/pkg/networking/util BuildAdditionalAddresses)."""
    return [{"address": socket_address(ip, port)} for ip in ips[1:]]


def bind_config(binds: list[str]) -> JSON:
    """upstream_bind_config: the first passthrough bind, the other family's as
    extra_source_addresses (Envoy picks the one of the upstream's family)."""
    out: JSON = {"source_address": {"address": binds[0], "port_value": 0}}
    if len(binds) > 1:
        out["extra_source_addresses"] = [{"address": {"address": b, "port_value": 0}}
                                         for b in binds[1:]]
    return out
