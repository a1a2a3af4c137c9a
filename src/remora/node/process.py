"""Starting a container's process inside a pod, and recognising it again later.

A process is started the way `ip netns exec NAME` starts one, literally through it: the
network namespace of the pod, plus a private mount namespace where /etc/netns/NAME/*
(the pod's resolv.conf and hosts) is bind-mounted over /etc, so glibc and Go's pure
resolver both read the pod's DNS settings. `setpriv` then drops to the container's
uid/gid and keeps the capabilities it asks for, as ambient ones for a non-root uid (the
sidecar: uid 1337 / gid 1337, or in TPROXY mode uid 0 with CAP_NET_ADMIN, as Istio runs
it). Both exec in place, so the PID we get is the container's PID. The container's log
file is given to its uid/gid, so it can open /dev/stdout again.

Each process leads its own session and writes straight into its log file, so it outlives
the daemon; a restarted daemon adopts it by PID only if the start time in /proc/PID/stat
and the network namespace still match (a reused PID fails both; a program that execs
another one keeps both, so its command line is not part of the identity).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from remora.node.probes import Probe

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessSpec:
    """What to run for one container, after image mapping and env resolution."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    uid: int | None = None
    gid: int | None = None
    caps: tuple[str, ...] = ()  # capability names without CAP_, e.g. ("net_admin",)
    cwd: str = "/"
    # The container's probes (podspec.probe), run by the supervisor as kubelet's prober
    # runs them (remora.node.probes); None: no such probe (a container without a
    # readinessProbe is ready while running, as in kubelet).
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None

    @property
    def ready_port(self) -> int | None:
        """The readiness probe's port (None without one, or for an exec probe)."""
        return None if self.readiness is None else self.readiness.port


def wrapped_argv(netns_name: str, spec: ProcessSpec) -> list[str]:
    argv = ["ip", "netns", "exec", netns_name]
    if spec.uid is not None or spec.gid is not None or spec.caps:
        argv.append("setpriv")
        if spec.uid is not None:
            argv.append(f"--reuid={spec.uid}")
        if spec.gid is not None:
            argv += [f"--regid={spec.gid}", "--clear-groups"]
        if spec.caps and spec.uid not in (None, 0):
            caps = ",".join(f"+{c.lower()}" for c in spec.caps)
            argv += [f"--inh-caps={caps}", f"--ambient-caps={caps}"]
        argv.append("--")
    return argv + list(spec.argv)


def spawn(netns_name: str, spec: ProcessSpec, log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab", buffering=0) as log:
        if spec.uid not in (None, 0) or spec.gid not in (None, 0):
            # The container's stdout/stderr belong to it, as the pipe a container runtime
            # hands it does (containerd's shim): a program that opens /dev/stdout again
            # (Envoy's access log, `path: /dev/stdout`, reopens it through
            # /proc/self/fd/1) must pass the file's own permission check as its uid.
            os.fchown(log.fileno(), -1 if spec.uid is None else spec.uid,
                      -1 if spec.gid is None else spec.gid)
        return subprocess.Popen(
            wrapped_argv(netns_name, spec), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, env=spec.env, cwd=spec.cwd,
            close_fds=True,
        )


# -- /proc --------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses: fields start after the last ')'.
    return text[text.rfind(")") + 2:].split()


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: start time in clock ticks after boot (proc(5))."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def is_alive(pid: int, ticks: int) -> bool:
    """PID is still the process that started at TICKS and has not exited (no zombie)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X") and int(fields[19]) == ticks


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def in_wrapper(argv: list[str]) -> bool:
    """Still `ip netns exec`/`setpriv`, not yet the container's own program."""
    return not argv or argv[0] in ("ip", "setpriv") or argv[:3] == ["ip", "netns", "exec"]


def matches(pid: int, ticks: int, netns_ino: int | None) -> bool:
    """Is PID the container process we recorded (for adoption after a daemon restart)?

    The identity is the PID plus its start time (field 22 of /proc/PID/stat, which execve
    keeps), and the process must live in the pod's network namespace (NETNS_INO; unknown
    means no). The command line is not compared: a launcher that execs another program
    (a Python wrapper exec-ing a binary, `ip netns exec`, `setpriv`) is still the same
    process. A reused PID cannot pass: the kernel hands PIDs out cyclically, so a new
    process with the same PID starts at least a full cycle of pid_max later, never in the
    same clock tick, and it would also have to sit in this pod's namespace.
    """
    if pid <= 0 or netns_ino is None or not is_alive(pid, ticks):
        return False
    return netns_inode(pid) == netns_ino


def signal_group(pid: int, ticks: int, sig: int) -> bool:
    """Signal the process group PID leads, only if PID is still that process."""
    if not is_alive(pid, ticks):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
        return True
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
        return True
    return False


def terminate(pid: int, ticks: int) -> bool:
    return signal_group(pid, ticks, signal.SIGTERM)


def kill(pid: int, ticks: int) -> bool:
    return signal_group(pid, ticks, signal.SIGKILL)
