"""``envoy.config.core.v3.Address``: a socket address or a unix ``pipe``.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/address.proto
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.stats import stat_name_part
from remora.proxy.stream_info import format_address


@dataclass(frozen=True)
class Address:
    ip: str = ""
    port: int = 0
    pipe: str | None = None  # unix socket path
    pipe_mode: int = 0
    # SocketAddress.ipv4_compat: an IPv6 socket also takes IPv4 (v4-mapped) connections.
    # Envoy's default is false, so a ``::`` listener is IPV6_V6ONLY and can sit beside a
    # ``0.0.0.0`` listener on the same port (Istio's dual-stack additional_addresses).
    ipv4_compat: bool = False

    def __str__(self) -> str:
        return self.pipe if self.pipe is not None else format_address(self.ip, self.port)

    @property
    def stat_name(self) -> str:
        """Envoy's listener stat prefix: the address with every ``:`` made ``_`` (Envoy
        sanitizes stat names so): ``0.0.0.0_15006``, ``[__]_15006`` for ``[::]:15006``,
        ``[__1]_19872`` for ``[::1]:19872`` (observed on Envoy 1.40)."""
        if self.pipe is not None:
            return self.pipe
        return f"[{stat_name_part(self.ip)}]_{self.port}" if ":" in self.ip else \
            f"{self.ip}_{self.port}"

    @property
    def family_v6(self) -> bool:
        return ":" in self.ip


def parse_socket_address(f: Fields) -> Address:
    ip = f.string("address", required=True)
    port = f.integer("port_value", 0)
    f.enum("protocol", ("TCP",), "TCP")
    compat = bool(f.boolean("ipv4_compat", False))
    f.done()
    try:
        ipaddress.ip_address(ip)
    except ValueError as exc:
        raise ConfigError(f.at("address"), f"{ip!r} is not an IP address",
                          "remora resolves no names here; give an IPv4 or IPv6 address") from exc
    if not 0 <= port <= 65535:
        raise ConfigError(f.at("port_value"), f"port {port} out of range")
    return Address(ip=ip, port=port, ipv4_compat=compat and ":" in ip)


def parse_address(f: Fields | None, path: str) -> Address:
    if f is None:
        raise ConfigError(path, "required field is missing")
    sock = f.fields("socket_address", "SocketAddress")
    pipe = f.fields("pipe", "Pipe")
    f.done()
    if sock is not None:
        return parse_socket_address(sock)
    if pipe is not None:
        path_ = pipe.string("path", required=True)
        mode = pipe.integer("mode", 0)
        pipe.done()
        return Address(pipe=path_, pipe_mode=mode)
    raise ConfigError(f.path, "needs socket_address or pipe")
