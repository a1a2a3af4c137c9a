"""Small shared pieces of a diagnosis: a fact we could not establish, and addresses."""

from __future__ import annotations

import ipaddress
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
