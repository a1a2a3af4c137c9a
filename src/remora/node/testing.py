"""A throwaway node for tests: a daemon on a temp state dir with a unique prefix.

    with TempNode(nodes=2) as node:
        node.client.apply([...])
        pods = node.client.wait_ready("demo")
        node.run(pods[0], ["getent", "hosts", "web.demo"])

Leaving the block takes the lab down (through the daemon, or offline if it died) and
checks that no namespace with the prefix, no /etc/netns entry and no state file is left;
`leftovers()` is what the down tests assert on.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from remora.errors import RemoraError
from remora.node import netlink, process, teardown
from remora.node.client import NodeClient, ensure_daemon
from remora.node.config import NodeConfig
from remora.node.etcfiles import ETC_NETNS

_counter = itertools.count()


class TempNode:
    def __init__(self, nodes: int = 1, pod_setup: str | None = None, prefix: str | None = None,
                 pod_ip_start: int = 2, ip_family: str = "ipv4") -> None:
        self.prefix = prefix or f"rn{os.getpid() % 100000}x{next(_counter)}-"
        self._tmp = Path(tempfile.mkdtemp(prefix="remora-node-test-"))
        self.state_dir = self._tmp / "state"
        self.config = NodeConfig(state_dir=self.state_dir, prefix=self.prefix, nodes=nodes,
                                 pod_ip_start=pod_ip_start, stop_grace=1.0,
                                 ip_family=ip_family)
        self.pod_setup = pod_setup
        self.client = NodeClient(self.state_dir)
        self._daemons: list[tuple[int, int]] = []  # (PID, start ticks) of daemons started

    def __enter__(self) -> TempNode:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> NodeClient:
        self.client = ensure_daemon(self.config, self.pod_setup)
        pid = self.daemon_pid()
        self._daemons.append((pid, process.start_ticks(pid) or 0))
        return self.client

    def daemon_pid(self) -> int:
        return int(self.client.ping()["pid"])

    def close(self) -> None:
        try:
            if self.client.alive():
                with contextlib.suppress(RemoraError):
                    self.client.down()
            teardown.down(self.state_dir, grace=1.0)
        finally:
            # a daemon that did not exit on `down` (it failed, or hangs) is stopped here
            for pid, ticks in self._daemons:
                if process.terminate(pid, ticks):  # only if PID is still that daemon
                    deadline = time.monotonic() + 3
                    while process.is_alive(pid, ticks) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    process.kill(pid, ticks)
            shutil.rmtree(self._tmp, ignore_errors=True)

    def leftovers(self) -> list[str]:
        left = [f"netns {n}" for n in netlink.names() if n.startswith(self.prefix)]
        if ETC_NETNS.is_dir():
            left += [f"{ETC_NETNS / n}" for n in os.listdir(ETC_NETNS)
                     if n.startswith(self.prefix)]
        if self.state_dir.exists():
            left += [f"state {p}" for p in self.state_dir.iterdir()]
        return left

    # -- running things in pods -------------------------------------------------------
    def run(self, pod: dict[str, Any] | str, argv: list[str], namespace: str = "default",
            timeout: float = 20) -> subprocess.CompletedProcess[str]:
        name = pod if isinstance(pod, str) else pod["metadata"]["name"]
        if isinstance(pod, dict):
            namespace = pod["metadata"]["namespace"]
        prefix = self.client.exec_argv(namespace, name)
        return subprocess.run([*prefix, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)
