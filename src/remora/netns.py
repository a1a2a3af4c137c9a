"""Network namespaces: naming, entering, and running commands inside them.

Shared by the capture rules (applied inside a pod's namespace), the node runtime (pods
are namespaces) and the tests. Entering is per thread (setns(2) only moves the calling
thread), so code that enters a namespace does it on a thread of its own or restores the
previous namespace before returning; sockets keep the namespace they were created in.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from remora.errors import RemoraError

NETNS_RUN_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def resolve(name_or_path: str) -> Path:
    """Return the namespace file for NAME (as `ip netns` names it) or an explicit PATH."""
    path = Path(name_or_path) if "/" in name_or_path else NETNS_RUN_DIR / name_or_path
    if not path.exists():
        raise RemoraError(
            f"network namespace {name_or_path!r} does not exist ({path} not found)",
            "create it with `ip netns add NAME`, or pass an existing namespace file "
            "such as /proc/PID/ns/net",
        )
    return path


def exists(name: str) -> bool:
    return (NETNS_RUN_DIR / name).exists()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(path: Path | str | None) -> Iterator[None]:
    """Run the body with the calling thread inside the namespace at PATH.

    ``None`` means "stay where we are", so callers need no special case for the current
    namespace.
    """
    if path is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(str(path), os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def socket_in(
    path: Path | str | None,
    family: int = socket.AF_INET,
    kind: int = socket.SOCK_STREAM,
) -> socket.socket:
    """Create a socket that lives in the namespace at PATH."""
    with entered(path):
        return socket.socket(family, kind)


def command(path: Path | str | None, argv: list[str]) -> list[str]:
    """The argv that runs ARGV inside the namespace (nsenter), or ARGV itself for None."""
    if path is None:
        return list(argv)
    return ["nsenter", f"--net={path}", "--", *argv]
