"""How capture runs iptables: a small command-runner interface, real and recording.

`SubprocessRunner` runs a command inside a namespace (nsenter via remora.netns.command).
`RecordingRunner` is Istio's `DependenciesStub` (tools/istio-iptables/pkg/dependencies/
stub.go): it runs nothing, records each command as its argv joined by spaces, or, when the
command reads stdin (a restore), the stdin's lines instead; it answers with canned output,
so unit tests can script an existing iptables-save state or a failing restore.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from remora import netns
from remora.errors import RemoraError


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Runner(Protocol):
    """Runs ARGV inside the namespace at NETNS (None: where we are), feeding STDIN."""

    def run(self, argv: Sequence[str], *, stdin: str | None = None,
            netns_path: Path | None = None) -> Result: ...

    def available(self, binary: str) -> bool: ...

    @property
    def dry(self) -> bool: ...


class SubprocessRunner:
    dry = False

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout

    def available(self, binary: str) -> bool:
        return shutil.which(binary) is not None

    def run(self, argv: Sequence[str], *, stdin: str | None = None,
            netns_path: Path | None = None) -> Result:
        full = netns.command(netns_path, list(argv))
        try:
            done = subprocess.run(full, input=stdin, capture_output=True, text=True,
                                  timeout=self.timeout, check=False)
        except FileNotFoundError:
            raise RemoraError(f"{full[0]} is not installed",
                              "install iptables and util-linux (apt-get install iptables "
                              "util-linux)") from None
        except subprocess.TimeoutExpired:
            raise RemoraError(f"{' '.join(argv)} did not finish in {self.timeout}s",
                              "check for a stuck xtables lock (another iptables running?)"
                              ) from None
        return Result(done.returncode, done.stdout, done.stderr)


Responder = Callable[[Sequence[str], str | None], Result | None]


@dataclass
class RecordingRunner:
    """Records what would run; answers from RESPOND (argv, stdin) -> Result, or success."""

    respond: Responder | None = None
    missing: frozenset[str] = frozenset()
    executed: list[str] = field(default_factory=list)
    calls: list[tuple[tuple[str, ...], str | None]] = field(default_factory=list)
    dry: bool = True

    def available(self, binary: str) -> bool:
        return binary not in self.missing

    def run(self, argv: Sequence[str], *, stdin: str | None = None,
            netns_path: Path | None = None) -> Result:
        self.calls.append((tuple(argv), stdin))
        if stdin is not None:
            self.executed.extend(stdin.splitlines())
        else:
            self.executed.append(" ".join(argv))
        answer = self.respond(argv, stdin) if self.respond else None
        return answer if answer is not None else Result(0)

    def transcript(self) -> str:
        return "\n".join(self.executed)
