"""Listening sockets: bound as the listener asks (IP_TRANSPARENT for TPROXY, freebind,
SO_REUSEPORT for ``--concurrency`` workers), or a unix socket for a ``pipe`` address."""

from __future__ import annotations

import contextlib
import os
import socket

from remora.errors import PrivilegeError, RemoraError
from remora.proxy.config.address import Address

IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
IP_FREEBIND = 15
IPV6_FREEBIND = 78  # linux/in6.h
CAP_NET_ADMIN = 12


def has_net_admin() -> bool:
    """CAP_NET_ADMIN in the effective set (/proc/self/status CapEff, bit 12)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return False


def require_net_admin(what: str) -> None:
    if not has_net_admin():
        raise PrivilegeError(
            f"{what} needs CAP_NET_ADMIN (IP_TRANSPARENT / SO_MARK) and this process lacks it",
            "run remora proxy as root or with CAP_NET_ADMIN (Istio's TPROXY sidecar runs as "
            "uid 0, gid 1337 with NET_ADMIN)")


def bind_listener(address: Address, *, transparent: bool = False, freebind: bool = False,
                  reuse_port: bool = False, backlog: int = 1024) -> socket.socket:
    if address.pipe is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            if not address.pipe.startswith("@"):
                os.unlink(address.pipe)
        path = "\0" + address.pipe[1:] if address.pipe.startswith("@") else address.pipe
        try:
            sock.bind(path)
            if address.pipe_mode and not address.pipe.startswith("@"):
                os.chmod(address.pipe, address.pipe_mode)
        except OSError as exc:
            sock.close()
            raise RemoraError(f"cannot bind unix socket {address.pipe}: {exc.strerror}",
                              "check the directory exists and is writable") from exc
    else:
        v6 = address.family_v6
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if transparent:
                sock.setsockopt(socket.IPPROTO_IPV6 if v6 else socket.SOL_IP,
                                IPV6_TRANSPARENT if v6 else IP_TRANSPARENT, 1)
            if freebind:
                sock.setsockopt(socket.IPPROTO_IPV6 if v6 else socket.SOL_IP,
                                IPV6_FREEBIND if v6 else IP_FREEBIND, 1)
            if v6:
                # Envoy binds an IPv6 listener IPV6_V6ONLY unless ipv4_compat is set, so
                # [::]:15006 and 0.0.0.0:15006 are two sockets, one per family.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                                0 if address.ipv4_compat else 1)
            sock.bind((address.ip, address.port))
        except PermissionError as exc:
            sock.close()
            raise PrivilegeError(f"cannot set up listener {address}: {exc.strerror}",
                                 "transparent listeners need CAP_NET_ADMIN") from exc
        except OSError as exc:
            sock.close()
            raise RemoraError(f"cannot bind {address}: {exc.strerror}",
                              "stop whatever listens there or change the port") from exc
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
