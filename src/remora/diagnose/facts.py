"""Small shared pieces of a diagnosis: a fact we could not establish, and addresses."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass


@dataclass(frozen=True)
class Missing:
    """A fact the evidence does not settle, and the command that would collect it."""

    what: str
    command: str


def hostport(ip: str, port: int | None) -> str:
    if port is None:
        return f"[{ip}]" if ":" in ip else ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def split_hostport(text: str) -> tuple[str, int | None]:
    """``10.0.0.1:80``, ``[::1]:80``, ``10.0.0.1`` -> (ip, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port) if port.isdigit() else None
    return text, None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_APP_PEER = re.compile(r"(RemoteAddr=(\S+?),?(?:\s|$))|(Peer=ipv([46]):(\S+?),?(?:\s|$))")


def app_peer(line: str) -> tuple[str, str] | None:
    """The connection's remote address as an app's log LINE prints it, as (the words in
    the line, ``IP:PORT`` the way Envoy writes addresses), or None: the seed's Go server
    prints ``RemoteAddr=10.20.0.78:35016`` (net/http's Request.RemoteAddr), a grpcio
    server ``Peer=ipv4:127.0.0.6:43122`` or ``Peer=ipv6:%5B::6%5D:43122`` (its
    ``context.peer()``: a gRPC URI, the IPv6 brackets percent-encoded in recent grpc-core)."""
    m = _APP_PEER.search(line)
    if m is None:
        return None
    if m.group(2):
        return f"RemoteAddr={m.group(2)}", m.group(2)
    address = urllib.parse.unquote(m.group(5))
    return f"Peer=ipv{m.group(4)}:{m.group(5)}", address
