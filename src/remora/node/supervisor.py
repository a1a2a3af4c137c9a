"""Container processes of every pod: start, restart with backoff, readiness, stop, logs.

Kubelet's behaviour, scaled down: a container that exits is restarted according to the
pod's restartPolicy (Always by default), each restart counted (kubectl's RESTARTS), after a
backoff that doubles from 0.5 s up to a small cap and resets once a run lasted long enough
(kubelet: 10 s doubling to 5 min; a lab wants seconds); as in kubelet the first restart
is immediate, so CrashLoopBackOff always follows a counted restart. An init container must exit 0
before the next one starts. Stopping is SIGTERM to the container's process group, then
SIGKILL after the grace period, checked on later ticks so one slow container never blocks
the others. Logs are one file per container, the previous run's kept beside it (for
`logs --previous`). State changes are written to the store, so a restarted daemon knows
PIDs, start times and counts.

Only the reconciler thread calls into a Supervisor.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from remora import netns
from remora.node import process
from remora.node.process import ProcessSpec
from remora.node.store import ContainerRow, Store

BACKOFF_START = 0.5
BACKOFF_CAP = 5.0
BACKOFF_RESET_AFTER = 10.0
LIVENESS_GRACE = 2.0  # SIGTERM to SIGKILL for a container that failed its liveness probe
# what happened to a container, for the node's event recorder: (pod, container, init,
# reason, detail) with reason one of Started, Failed (detail: why), BackOff, Killing,
# Unhealthy (detail: the message), at the moments kubelet records them
# (kuberuntime_container.go, kubelet_pods.go, prober/prober.go)
ContainerEvent = Callable[["PodRef", str, bool, str, str], None]


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str
    netns: str
    restart_policy: str = "Always"

    @property
    def log_dir_name(self) -> str:
        # kubelet's /var/log/pods/<namespace>_<name>_<uid>/ layout
        return f"{self.namespace}_{self.name}_{self.uid}"


@dataclass
class _Container:
    pod: PodRef
    spec: ProcessSpec
    row: ContainerRow
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    backoff: float = 0.0  # the wait before the next restart: the first is immediate
    next_start: float = 0.0
    wanted: bool = True
    kill_at: float | None = None
    cmdline_seen: bool = False
    probe_at: float = 0.0  # when a failing readiness check is next reported (monotonic)
    live_at: float = 0.0  # when the liveness probe is next due (monotonic)
    live_failed: int = 0  # liveness failures in a row


class Supervisor:
    def __init__(self, store: Store, log_root: Path,
                 on_event: ContainerEvent | None = None) -> None:
        self.store = store
        self.log_root = log_root
        self.on_event = on_event
        self._containers: dict[tuple[str, str], _Container] = {}

    def _event(self, entry: _Container, reason: str, detail: str = "") -> None:
        if self.on_event is not None:
            self.on_event(entry.pod, entry.row.name, bool(entry.row.init), reason, detail)

    # -- paths ------------------------------------------------------------------------
    def log_path(self, pod: PodRef, container: str, previous: bool = False) -> Path:
        name = f"{container}.previous.log" if previous else f"{container}.log"
        return self.log_root / pod.log_dir_name / name

    # -- starting and adopting --------------------------------------------------------
    def start_container(self, pod: PodRef, name: str, spec: ProcessSpec, init: bool = False,
                        restarts: int = 0) -> None:
        row = ContainerRow(pod_uid=pod.uid, name=name, init=int(init), restarts=restarts)
        entry = _Container(pod, spec, row, self.log_path(pod, name))
        self._containers[(pod.uid, name)] = entry
        self._spawn(entry, count_restart=False)

    def adopt(self, pod: PodRef, name: str, spec: ProcessSpec, row: ContainerRow) -> bool:
        """Take over a container a previous daemon started; False if it is gone."""
        entry = _Container(pod, spec, row, self.log_path(pod, name))
        self._containers[(pod.uid, name)] = entry
        alive = row.state == "Running" and process.matches(
            row.pid, row.start_ticks, _netns_ino(pod.netns))
        if alive:
            entry.probe_at = time.monotonic() + spec.ready_period
            entry.live_at = time.monotonic() + spec.live_period
            return True
        if row.init and row.state == "Terminated" and row.exit_code == 0:
            return True  # a completed init container stays completed
        self._exited(entry, None, time.monotonic())
        return False

    def _spawn(self, entry: _Container, count_restart: bool) -> None:
        if count_restart:
            old = entry.row
            old.last_state = {"pid": old.pid, "start_ticks": old.start_ticks,
                              "restarts": old.restarts, "exit_code": old.exit_code,
                              "reason": old.reason if old.state == "Terminated" else
                              ("Completed" if old.exit_code == 0 else "Error"),
                              "started": old.started, "finished": old.finished}
            entry.row.restarts += 1
            if entry.log.exists():
                entry.log.replace(entry.log.with_name(entry.log.name[:-4] + ".previous.log"))
        entry.kill_at = None  # a liveness kill's grace was for the run before
        try:
            entry.popen = process.spawn(entry.pod.netns, entry.spec, entry.log)
        except OSError as exc:
            entry.popen = None
            entry.log.parent.mkdir(parents=True, exist_ok=True)
            with open(entry.log, "a") as log:
                log.write(f"remora: cannot start {entry.spec.argv[:1]}: {exc}\n")
            self._event(entry, "Failed", str(exc))
            self._exited(entry, 128, time.monotonic())
            return
        pid = entry.popen.pid
        entry.row.pid = pid
        entry.row.start_ticks = process.start_ticks(pid) or 0
        entry.row.cmdline = list(entry.spec.argv)
        entry.cmdline_seen = False
        entry.row.state, entry.row.reason, entry.row.ready = "Running", "", 0
        entry.row.started = time.time()
        entry.probe_at = time.monotonic() + _first_probe(entry.spec)
        entry.live_at = time.monotonic() + max(entry.spec.live_delay, entry.spec.live_period)
        entry.live_failed = 0
        self.store.put_container(entry.row)
        self._event(entry, "Started")

    # -- the periodic step ------------------------------------------------------------
    def tick(self) -> bool:
        """Reap, restart, probe, kill; return True when any container changed state."""
        now = time.monotonic()
        changed = False
        for entry in list(self._containers.values()):
            changed |= self._step(entry, now)
        return changed

    def _step(self, entry: _Container, now: float) -> bool:
        row = entry.row
        if row.state == "Running":
            code = self._exit_code(entry)
            if code is not False:
                self._exited(entry, code, now)
                return True
            if entry.kill_at is not None and now >= entry.kill_at:
                process.kill(row.pid, row.start_ticks)  # the grace period is over
                entry.kill_at = None
            if not entry.wanted:
                return False
            self._liveness(entry, now)
            return self._probe(entry)
        if entry.wanted and row.state != "Running" and entry.next_start and \
                now >= entry.next_start:
            entry.next_start = 0.0
            self._spawn(entry, count_restart=True)
            return True
        return False

    def _exit_code(self, entry: _Container) -> int | bool | None:
        """False while running; the exit code (None if unknown, adopted) once exited."""
        if entry.popen is not None:
            code = entry.popen.poll()
            return False if code is None else exit_code(code)
        if process.is_alive(entry.row.pid, entry.row.start_ticks):
            return False
        return None

    def _exited(self, entry: _Container, code: int | None, now: float) -> None:
        row = entry.row
        ran = time.time() - row.started if row.started else 0.0
        row.exit_code, row.ready, entry.popen = code, 0, None
        row.finished = time.time()
        row.state, row.reason = "Terminated", "Completed" if code == 0 else "Error"
        policy = entry.pod.restart_policy
        restart = entry.wanted and (
            (policy == "Always" and not (row.init and code == 0))
            or (policy in ("Always", "OnFailure") and code != 0))
        if restart:
            if ran >= BACKOFF_RESET_AFTER:
                entry.backoff = 0.0
            # kubelet restarts a container that exited at once and backs off from the
            # next exit on: Error (RESTARTS 0) -> Running 1 -> CrashLoopBackOff 1, so
            # RESTARTS always counts the restarts that CrashLoopBackOff reports.
            entry.next_start = now + entry.backoff
            if entry.backoff:
                row.state, row.reason = "Waiting", "CrashLoopBackOff"
                self._event(entry, "BackOff")
            entry.backoff = min(entry.backoff * 2, BACKOFF_CAP) or BACKOFF_START
        self.store.put_container(row)

    def _probe(self, entry: _Container) -> bool:
        row = entry.row
        if not entry.cmdline_seen:
            # record the command line the program itself shows, once it is past the
            # `ip netns exec`/`setpriv` wrappers (for people reading the store; adoption
            # goes by PID, start time and network namespace, which survive an exec)
            seen = process.cmdline(row.pid)
            if seen and not process.in_wrapper(seen):
                entry.cmdline_seen = True
                if seen != row.cmdline:
                    row.cmdline = seen
                    self.store.put_container(row)
        if row.ready:
            return False
        port = entry.spec.ready_port
        if port is not None:
            failed = _connect_error(entry.pod.netns, entry.spec.ready_host, port)
            if failed is not None:
                self._probe_failed(entry, failed)
                return False
        row.ready = 1
        self.store.put_container(row)
        return True

    def _probe_failed(self, entry: _Container, error: str) -> None:
        """kubelet's `Unhealthy` event for a readiness probe that fails: the lab checks
        more often than kubelet probes (a pod is Ready as soon as it accepts), so a
        failure is reported once per probe period, from the first moment kubelet's
        prober would have probed (initialDelaySeconds, and a period after the start:
        its worker's first tick finds the container not yet running), with kubelet's
        message (prober.go: "%s probe failed: %s"); repeats are counted by the
        recorder, as kubelet's are."""
        now = time.monotonic()
        if not entry.spec.ready_target or now < entry.probe_at:
            return
        entry.probe_at = now + entry.spec.ready_period
        self._event(entry, "Unhealthy",
                    f"Readiness probe failed: {entry.spec.ready_target}: {error}")

    def _liveness(self, entry: _Container, now: float) -> None:
        """kubelet's liveness probe (prober/worker.go, kuberuntime_manager.go): once a
        period, a failure is the Warning `Unhealthy` "Liveness probe failed: ..."; at
        failureThreshold failures in a row the container is killed, `Killing` "Container
        C failed liveness probe, will be restarted" (without the restart part under
        restartPolicy Never), SIGTERM then SIGKILL after LIVENESS_GRACE; its exit is
        then a restart like any other (counted, backed off)."""
        spec = entry.spec
        if spec.live_port is None or entry.kill_at is not None or now < entry.live_at:
            return
        entry.live_at = now + spec.live_period
        # a longer wait than readiness's (which tries again on the next tick): a failure
        # here counts towards a kill (kubelet waits timeoutSeconds, 1 s by default; the
        # reconciler thread is not held that long)
        failed = _connect_error(entry.pod.netns, spec.ready_host, spec.live_port, 0.5)
        if failed is None:
            entry.live_failed = 0
            return
        entry.live_failed += 1
        self._event(entry, "Unhealthy", f"Liveness probe failed: {spec.live_target}: {failed}")
        if entry.live_failed < spec.live_failures:
            return
        entry.live_failed = 0
        restart = entry.pod.restart_policy != "Never"
        self._event(entry, "Killing", f"Container {entry.row.name} failed liveness probe"
                    + (", will be restarted" if restart else ""))
        process.terminate(entry.row.pid, entry.row.start_ticks)
        entry.kill_at = now + LIVENESS_GRACE

    # -- stopping ---------------------------------------------------------------------
    def stop_pod(self, pod_uid: str, grace: float = 2.0) -> None:
        for (uid, name) in list(self._containers):
            if uid == pod_uid:
                self.stop_container(pod_uid, name, grace)

    def stop_container(self, pod_uid: str, name: str, grace: float = 2.0) -> None:
        entry = self._containers.get((pod_uid, name))
        if entry is None or not entry.wanted:
            return
        entry.wanted = False
        entry.next_start = 0.0
        if entry.row.state == "Running":
            self._event(entry, "Killing")
            process.terminate(entry.row.pid, entry.row.start_ticks)
            entry.kill_at = time.monotonic() + grace
        else:
            entry.row.state, entry.row.reason = "Terminated", entry.row.reason or "Completed"

    def pod_stopped(self, pod_uid: str) -> bool:
        return all(e.row.state != "Running" for (uid, _), e in self._containers.items()
                   if uid == pod_uid)

    def forget(self, pod_uid: str) -> None:
        for key in [k for k in self._containers if k[0] == pod_uid]:
            entry = self._containers.pop(key)
            if entry.popen is not None:
                entry.popen.poll()

    # -- reading ----------------------------------------------------------------------
    def has(self, pod_uid: str, name: str) -> bool:
        return (pod_uid, name) in self._containers

    def row(self, pod_uid: str, name: str) -> ContainerRow | None:
        entry = self._containers.get((pod_uid, name))
        return None if entry is None else entry.row

    def status(self, pod_uid: str) -> list[ContainerRow]:
        """The pod's containers as the store records them (init containers first)."""
        return [e.row for (uid, _), e in self._containers.items() if uid == pod_uid]

    def logs(self, pod: PodRef, container: str, follow: bool = False,
             previous: bool = False) -> Iterator[bytes]:
        """The container's log; with FOLLOW, keep yielding what is appended (and what
        the next run writes after a restart)."""
        path = self.log_path(pod, container, previous)
        if follow:
            from remora.node.client import follow as tail

            yield from tail(path)
            return
        if path.exists():
            yield path.read_bytes()

    def pids(self) -> list[tuple[int, int]]:
        return [(e.row.pid, e.row.start_ticks) for e in self._containers.values()
                if e.row.state == "Running"]


def _netns_ino(name: str) -> int | None:
    try:
        return netns.resolve(name).stat().st_ino
    except Exception:
        return None


def _first_probe(spec: ProcessSpec) -> float:
    """Seconds from a container's start to kubelet's first probe of it, at the latest."""
    return max(spec.ready_delay, spec.ready_period)


def _connect_error(netns_name: str, host: str, port: int,
                   timeout: float = 0.1) -> str | None:
    """None if HOST:PORT in the pod accepts a connection within TIMEOUT, else why not as
    Go's dialer says it after `dial tcp ADDR: ` (`connect: connection refused`, `i/o
    timeout`)."""
    try:
        sock = netns.socket_in(netns.resolve(netns_name))
    except Exception as exc:
        return f"connect: {exc}"
    sock.settimeout(timeout)
    try:
        code = sock.connect_ex((host, port))
    except TimeoutError:
        return "i/o timeout"
    except OSError as exc:
        code = exc.errno or errno.EIO
    finally:
        sock.close()
    if code == 0:
        return None
    if code in (errno.EAGAIN, errno.EINPROGRESS, errno.ETIMEDOUT):
        return "i/o timeout"
    return f"connect: {os.strerror(code)[:1].lower()}{os.strerror(code)[1:]}"


def restart_backoff(restarts: int) -> float:
    """The wait before restart number RESTARTS+1 of a container that keeps exiting at
    once (pure; documented in docs/node.md): none for the first, then doubling."""
    if restarts <= 0:
        return 0.0
    return float(min(BACKOFF_START * 2 ** (restarts - 1), BACKOFF_CAP))


def exit_code(returncode: int) -> int:
    """A container's exit code as kubelet reports it: a process killed by signal N exits
    128+N (137 for SIGKILL, 143 for SIGTERM), where Popen says -N."""
    return 128 - returncode if returncode < 0 else returncode


