"""A throwaway lab for tests: its own state directory and namespace prefix.

    with TempLab() as lab:
        lab.remora("up", "-f", path, "--wait")      # CompletedProcess of `remora ...`
        demo.run(lab.state_dir, LabSettings(), prefix=lab.prefix, echo=lines.append)

Leaving the block runs `down` (through the daemon, or from the store if it died) and
`leftovers()` lists any namespace, /etc/netns entry or state file still there.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from remora.lab import session
from remora.node import netlink
from remora.node.etcfiles import ETC_NETNS

_counter = itertools.count()


class TempLab:
    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"rl{os.getpid() % 100000}x{next(_counter)}-"
        self._tmp = Path(tempfile.mkdtemp(prefix="remora-lab-test-"))
        self._tmp.chmod(0o755)
        self.state_dir = self._tmp / "state"
        self.env = {**os.environ, "REMORA_STATE_DIR": str(self.state_dir)}

    def __enter__(self) -> TempLab:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def remora(self, *args: str, stdin: str | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "remora", *args], input=stdin,
                              capture_output=True, text=True, env=self.env, timeout=timeout,
                              check=False)

    def up_args(self) -> list[str]:
        return ["up", "--prefix", self.prefix]

    def close(self) -> None:
        try:
            session.down(self.state_dir)
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def leftovers(self) -> list[str]:
        left = [f"netns {n}" for n in netlink.names() if n.startswith(self.prefix)]
        if ETC_NETNS.is_dir():
            left += [str(ETC_NETNS / n) for n in os.listdir(ETC_NETNS)
                     if n.startswith(self.prefix)]
        if self.state_dir.exists():
            left += [f"state {p}" for p in self.state_dir.iterdir()]
        return left
