"""``envoy.filters.listener.original_dst``: restore the address the client dialled.

REDIRECT (nat): the kernel keeps the original destination in conntrack; read it with
``getsockopt(SOL_IP, SO_ORIGINAL_DST)`` (``IP6T_SO_ORIGINAL_DST`` for IPv6). TPROXY
(mangle): the socket is IP_TRANSPARENT and its local address already *is* the original
destination, which Envoy's Utility::getOriginalDst returns when SO_ORIGINAL_DST fails.
https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/original_dst_filter
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from remora.proxy.config.strict import Fields
from remora.proxy.listener_filters import AcceptedSocket
from remora.proxy.registry import register

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75


def decode_sockaddr(raw: bytes) -> tuple[str, int]:
    """A struct sockaddr_in / sockaddr_in6 (network byte order) -> (ip, port)."""
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raise ValueError(f"unexpected address family {family}")


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """The address SOCK's client dialled, as Envoy's Utility::getOriginalDst finds it:
    SO_ORIGINAL_DST first (a REDIRECTed connection: conntrack's original destination;
    conntrack answers for a TPROXY'd one too, with its unchanged destination), and only
    when that fails the local address of an IP_TRANSPARENT socket. Not the other way
    round: in TPROXY mode every listener is transparent, virtualOutbound (15001) too,
    and the app's outbound connections still come to it by REDIRECT, so its local
    address is 15001, not where the app was going (it read as bound for 15001 and went
    to BlackHoleCluster)."""
    v6 = sock.family == socket.AF_INET6
    level = socket.IPPROTO_IPV6 if v6 else socket.SOL_IP
    try:
        raw = sock.getsockopt(level, IP6T_SO_ORIGINAL_DST if v6 else SO_ORIGINAL_DST,
                              28 if v6 else 16)
    except OSError:
        try:
            if sock.getsockopt(level, IPV6_TRANSPARENT if v6 else IP_TRANSPARENT):
                local = sock.getsockname()
                return str(local[0]), int(local[1])
        except OSError:
            pass
        return None  # not redirected and not transparent: keep the local address
    ip, port = decode_sockaddr(raw)
    if ip.startswith("::ffff:"):
        ip = ip[7:]
    return ip, port


class OriginalDst:
    async def on_accept(self, conn: AcceptedSocket) -> bool:
        found = original_dst(conn.sock)
        if found is not None:
            conn.facts.local_ip, conn.facts.local_port = found
            conn.facts.restored_local_address = True
        return True


@register("listener", "envoy.filters.listener.original_dst",
          "envoy.extensions.filters.listener.original_dst.v3.OriginalDst")
def _factory(typed: Fields, _context: Any) -> OriginalDst:
    typed.done()
    return OriginalDst()
