"""Network namespaces and netlink sockets inside them, without forking.

Creating a namespace follows iproute2's `ip netns add` (make /run/netns a shared mount,
unshare(CLONE_NEWNET) on a throwaway thread, bind-mount that thread's namespace onto
/run/netns/NAME) so the result is an ordinary named namespace that `ip netns exec`,
`nsenter` and the rest of remora understand. pyroute2's own `netns.create` forks a child
per call; a thread is cheaper and has no fork-in-a-threaded-daemon hazards. Netlink
sockets are opened while the calling thread sits in the target namespace (a socket keeps
the namespace it was created in), see remora.netns.entered.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from remora import netns
from remora.errors import PrivilegeError, RemoraError

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise PrivilegeError(f"{what}: operation not permitted",
                                 "run as root (network namespaces need CAP_SYS_ADMIN)")
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _share_run_dir() -> None:
    run = str(netns.NETNS_RUN_DIR).encode()
    netns.NETNS_RUN_DIR.mkdir(parents=True, exist_ok=True)
    if _libc.mount(b"", run, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    _check(_libc.mount(run, run, b"none", MS_BIND | MS_REC, None), "bind /run/netns")
    _check(_libc.mount(b"", run, b"none", MS_SHARED | MS_REC, None), "share /run/netns")


def create(name: str) -> Path:
    """Create the named network namespace NAME (an error if it exists)."""
    path = netns.NETNS_RUN_DIR / name
    _share_run_dir()
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
    os.close(fd)
    failure: list[BaseException] = []

    def bind_new_namespace() -> None:
        try:
            _check(_libc.unshare(netns.CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            _check(_libc.mount(b"/proc/thread-self/ns/net", str(path).encode(), b"none",
                               MS_BIND, None), f"bind namespace to {path}")
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    # The thread ends right after, taking its changed namespace with it.
    worker = threading.Thread(target=bind_new_namespace, name=f"netns-{name}")
    worker.start()
    worker.join()
    if failure:
        with contextlib.suppress(OSError):
            path.unlink()
        raise failure[0]
    return path


def delete(name: str) -> bool:
    """Remove the named namespace if present (the kernel frees it with its last user)."""
    path = netns.NETNS_RUN_DIR / name
    if not path.exists():
        return False
    _libc.umount2(str(path).encode(), MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True


def names() -> list[str]:
    if not netns.NETNS_RUN_DIR.is_dir():
        return []
    return sorted(p.name for p in netns.NETNS_RUN_DIR.iterdir())


def inode(name_or_path: str | Path) -> int:
    path = Path(name_or_path) if "/" in str(name_or_path) else netns.NETNS_RUN_DIR / str(
        name_or_path)
    return os.stat(path).st_ino


@contextlib.contextmanager
def rtnl(name: str) -> Iterator[Any]:
    """An IPRoute socket bound to the named namespace."""
    path = netns.resolve(name)
    with netns.entered(path):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def sysctl(name: str, key: str, value: str) -> None:
    """Write a net.* sysctl inside the namespace (/proc/sys/net follows the opener's netns)."""
    target = Path("/proc/sys") / key.replace(".", "/")
    with netns.entered(netns.resolve(name)):
        fd = os.open(target, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


def link_index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise RemoraError(f"link {ifname} not found", "run `remora down` and start again")
    return int(found[0])


def exists(name: str) -> bool:
    return netns.exists(name)
