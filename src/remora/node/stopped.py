"""What is true of a lab whose node daemon does not answer (killed, crashed, stopped).

Pods outlive the daemon (their processes lead their own sessions) and so does cluster
DNS (remora.node.resolver), so "no lab is running" would be false: this reads the store
and /proc and says which pods still run, whether DNS answers, and that `remora up`
adopts them (remora.node.runtime.Runtime.start).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from remora.errors import RemoraError
from remora.node import process, resolver
from remora.node.config import lab_command
from remora.node.store import Store


@dataclass(frozen=True)
class StoppedLab:
    pods: int
    running: int  # pods with at least one live container process
    dns: bool
    daemon_pid: int | None


def inspect(state_dir: Path) -> StoppedLab | None:
    """The lab in STATE_DIR as seen without its daemon; None when there is no lab."""
    db = state_dir / "remora.db"
    if not db.exists():
        return None
    store = Store(db)
    try:
        alive: set[str] = {c.pod_uid for c in store.containers()
                           if c.pid > 0 and process.is_alive(c.pid, c.start_ticks)}
        pods = [p for p in store.list_pods() if not p.deleting]
    finally:
        store.close()
    pid = None
    with contextlib.suppress(OSError, ValueError):
        pid = int((state_dir / "daemon.pid").read_text().strip())
    return StoppedLab(pods=len(pods), running=sum(1 for p in pods if p.uid in alive),
                      dns=resolver.recorded(state_dir) is not None, daemon_pid=pid)


def error(state_dir: Path, lab: StoppedLab) -> RemoraError:
    daemon = f"node daemon (pid {lab.daemon_pid})" if lab.daemon_pid else "node daemon"
    return RemoraError(
        f"the lab at {state_dir} is there but its {daemon} is not running: {lab.running} of "
        f"{lab.pods} pods still running, cluster DNS {'answering' if lab.dns else 'down'}",
        f"`{lab_command('up', state_dir)}` starts a daemon that adopts the running pods "
        f"(`{lab_command('down', state_dir)}` removes them)")
