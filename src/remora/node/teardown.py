"""`down`: remove everything a lab created, with or without its daemon running.

What is removed is read from the store (pods, their namespaces and container PIDs, the
prefix the lab was created with), plus any namespace named with that prefix's node/pod/
fabric pattern, so a lab whose store was damaged still comes down; except namespaces
another lab (another state dir with the same prefix) marked as its own (ownership.py).
Processes are stopped by recorded PID and start time; processes still living in the lab's
namespaces (e.g. a shell started with `exec`) are stopped too, since their namespace is
going away.
Nothing outside the lab's namespaces, /etc/netns entries and state files is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from remora.node import etcfiles, netlink, ownership, process, resolver
from remora.node.client import STILL_RUNNING
from remora.node.config import NodeConfig
from remora.node.store import Store

STATE_FILES = ("remora.db", "remora.db-wal", "remora.db-shm", "node.sock", "daemon.pid",
               "daemon.log", "zone.json", "dns.pid", "dns.log", "kubeconfig")
STATE_DIRS = ("logs", "pods", "kubeapi", "ca")  # the API's certificate and token; the CA


def _processes_in(inodes: set[int]) -> list[tuple[int, int]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        ino = process.netns_inode(pid)
        ticks = process.start_ticks(pid)
        if ino in inodes and ticks is not None:
            found.append((pid, ticks))
    return found


def _stop(procs: list[tuple[int, int]], grace: float) -> list[int]:
    """SIGTERM, GRACE seconds, SIGKILL, up to 2 s more; the PIDs still running then."""
    for pid, ticks in procs:
        process.terminate(pid, ticks)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(process.is_alive(p, t) for p, t in procs):
        time.sleep(0.05)
    for pid, ticks in procs:
        process.kill(pid, ticks)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(process.is_alive(p, t) for p, t in procs):
        time.sleep(0.05)
    return [p for p, t in procs if process.is_alive(p, t)]


def down(state_dir: Path, grace: float = 2.0, etc_netns: Path | None = None) -> list[str]:
    """Remove the lab recorded in STATE_DIR; return what was removed."""
    removed: list[str] = []
    db = state_dir / "remora.db"
    config: NodeConfig | None = None
    pod_netns: list[str] = []
    procs: list[tuple[int, int]] = []
    lab_id = ""
    if db.exists():
        store = Store(db)
        saved = store.get_meta("config")
        config = NodeConfig.from_json(saved) if saved else None
        lab_id = store.get_meta("lab_id") or ""
        pod_netns = [p.netns for p in store.list_pods()]
        procs = [(c.pid, c.start_ticks) for c in store.containers()
                 if c.pid > 0 and process.is_alive(c.pid, c.start_ticks)]
        store.close()
    dns = resolver.recorded(state_dir)  # cluster DNS (it lives in node 1's namespace too)
    if dns is not None:
        procs.append(dns)
    etc_root = etc_netns or (config.etc_netns if config else etcfiles.ETC_NETNS)
    ours = set(pod_netns)
    if config is not None:
        # never another lab's: one in another state dir may use the same prefix
        named = ownership.marks(config.prefix)
        others = {n for n, _ in ownership.foreign(config.prefix, named, lab_id, False,
                                                  set(pod_netns))
                  if not ownership.is_pod_netns(config.prefix, n)}
        ours |= {n for n in named if n not in others
                 and not (others and ownership.is_pod_netns(config.prefix, n))}
    inodes = set()
    for name in ours:
        with contextlib.suppress(OSError):
            inodes.add(netlink.inode(name))
    survivors = _stop(sorted(set(procs) | set(_processes_in(inodes))), grace)
    removed += [f"process {pid}" for pid, _ in procs if pid not in survivors]
    # a process SIGKILL did not end (uninterruptible sleep): named, not counted as
    # removed (the CLIs report it: remora.node.client.refuse_survivors)
    removed += [f"{STILL_RUNNING}{pid}" for pid in survivors]
    # pods first (their veths sit on node bridges), then nodes, then the fabric
    order = sorted(ours, key=lambda n: (0 if "-pod-" in n else 2 if n.endswith("fabric") else 1))
    for name in order:
        if netlink.delete(name):
            removed.append(f"netns {name}")
        if (etc_root / name).exists():
            etcfiles.remove(name, etc_root)
            removed.append(f"{etc_root / name}")
    for name in pod_netns:
        etcfiles.remove(name, etc_root)
    for file in STATE_FILES:
        path = state_dir / file
        if path.exists() or path.is_symlink():
            path.unlink()
            removed.append(str(path))
    for folder in STATE_DIRS:
        if (state_dir / folder).exists():
            shutil.rmtree(state_dir / folder, ignore_errors=True)
            removed.append(str(state_dir / folder))
    with contextlib.suppress(OSError):
        state_dir.rmdir()
    return removed
