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

import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from remora import netns
from remora.node import probes, process
from remora.node.process import ProcessSpec
from remora.node.store import ContainerRow, Store

BACKOFF_START = 0.5
BACKOFF_CAP = 5.0
BACKOFF_RESET_AFTER = 10.0
LIVENESS_GRACE = 2.0  # SIGTERM to SIGKILL for a container that failed its liveness probe
# Probes run off the reconciler thread (each blocks up to its timeoutSeconds): a small
# pool, the reconciler submits due probes and takes the results on a later tick.
PROBE_WORKERS = 4
# While a container is not ready, a failed readiness probe is tried again this soon:
# kubelet's prober manager triggers a readiness run on each pod status update of an
# unready container (prober_manager.go UpdatePodStatus, manualTriggerCh), so a pod turns
# Ready soon after it can; its Unhealthy events still come once a period.
UNREADY_RETRY = 0.2
# what happened to a container, for the node's event recorder: (pod, container, init,
# reason, detail) with reason one of Started, Failed (detail: why), BackOff, Killing,
# Unhealthy and ProbeWarning (detail: the message), at the moments kubelet records them
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
    ready_probe: _ProbeState = field(default_factory=lambda: _ProbeState())
    live_probe: _ProbeState = field(default_factory=lambda: _ProbeState())
    startup_probe: _ProbeState = field(default_factory=lambda: _ProbeState())
    started_ok: bool = True  # the startup probe succeeded (or there is none)
    unhealthy_at: float = 0.0  # when a failing unready readiness probe is next reported


@dataclass
class _ProbeState:
    """kubelet's prober worker for one probe of one container run (prober/worker.go):
    when it is next due, the last result and how many times in a row it came, and the
    run in flight on the probe pool (with the PID it was started for: a result that
    comes back after a restart is dropped)."""

    due: float = 0.0
    last: bool | None = None
    run: int = 0
    pending: Future[probes.Result] | None = None
    pending_pid: int = 0


class Supervisor:
    def __init__(self, store: Store, log_root: Path,
                 on_event: ContainerEvent | None = None) -> None:
        self.store = store
        self.log_root = log_root
        self.on_event = on_event
        self._containers: dict[tuple[str, str], _Container] = {}
        self._pool = ThreadPoolExecutor(PROBE_WORKERS, thread_name_prefix="probe")

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
            # a new prober for a running container: kubelet's readiness starts from
            # Failure and its startup from Unknown, so a startup-probed container is
            # probed again before liveness and readiness resume
            self._reset_probes(entry, time.monotonic(), ran=True)
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
        self._reset_probes(entry, time.monotonic())
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
            return self._probes(entry, now)
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

    def _reset_probes(self, entry: _Container, now: float, ran: bool = False) -> None:
        """Fresh prober workers for a new run of the container (kubelet keys results by
        container ID): each first due after initialDelaySeconds (liveness a period after
        the start at the earliest, as the lab always did: its worker's first tick finds
        the container not yet running). RAN: an adopted container, running already."""
        spec = entry.spec
        ready, live, startup = spec.readiness, spec.liveness, spec.startup
        entry.ready_probe = _ProbeState(due=now + (ready.delay if ready and not ran else 0.0))
        entry.live_probe = _ProbeState(due=now + (max(live.delay, live.period) if live else 0.0))
        entry.startup_probe = _ProbeState(due=now + (startup.delay if startup else 0.0))
        # a daemon that adopts a running container keeps what its startup probe decided
        entry.started_ok = startup is None or bool(ran and entry.row.startup_done)
        entry.row.startup_done = int(entry.started_ok)
        entry.unhealthy_at = now + (ready.period if ran and ready else _first_probe(spec))

    def _result(self, entry: _Container, state: _ProbeState, probe: probes.Probe,
                now: float) -> probes.Result | None:
        """The result of STATE's probe if one came back by this tick; submits the next
        run when it is due (never two at once)."""
        if state.pending is not None:
            if not state.pending.done():
                return None
            future, pid = state.pending, state.pending_pid
            state.pending = None
            if pid != entry.row.pid:
                return None  # a run of the container before this one
            return future.result()
        if now >= state.due:
            state.pending = self._pool.submit(probes.run, probe, entry.pod.netns)
            state.pending_pid = entry.row.pid
        return None

    @staticmethod
    def _count(state: _ProbeState, ok: bool, probe: probes.Probe) -> bool | None:
        """worker.go doProbe: the same result RUN times in a row; the result becomes the
        container's only at successThreshold successes or failureThreshold failures
        (None: below threshold, nothing changes)."""
        if state.last == ok:
            state.run += 1
        else:
            state.last, state.run = ok, 1
        if state.run < (probe.success if ok else probe.failure):
            return None
        return ok

    def _probes(self, entry: _Container, now: float) -> bool:
        """kubelet's three probers for a running container (prober/worker.go and
        prober_manager.go): the startup probe first, liveness and readiness only once it
        succeeded; a container without a readiness probe is ready while running (and
        started). Returns True when the container's readiness changed."""
        self._note_cmdline(entry)
        spec, row = entry.spec, entry.row
        if not entry.started_ok:
            assert spec.startup is not None
            if entry.kill_at is None:
                self._startup(entry, spec.startup, now)
            if not entry.started_ok:
                return False
        if spec.liveness is not None and entry.kill_at is None:
            self._liveness(entry, spec.liveness, now)
        if spec.readiness is None:
            if row.ready:
                return False
            row.ready = 1
            self.store.put_container(row)
            return True
        return self._readiness(entry, spec.readiness, now)

    def _note_cmdline(self, entry: _Container) -> None:
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

    def _readiness(self, entry: _Container, probe: probes.Probe, now: float) -> bool:
        """The readiness probe for the container's whole life: once a period while ready,
        failureThreshold failures in a row make it unready (the pod's Ready condition and
        its Service endpoints follow), successThreshold successes in a row ready again.
        While unready a failure is tried again after UNREADY_RETRY (kubelet's manual
        triggers), a success towards successThreshold after a period."""
        state, row = entry.ready_probe, entry.row
        result = self._result(entry, state, probe, now)
        if result is None:
            return False
        verdict = self._count(state, result.ok, probe)
        # an exec probe is a process: quick retries of many unready pods would load the host
        retry = UNREADY_RETRY if probe.action != "exec" else min(probe.period, 1.0)
        state.due = now + (probe.period if row.ready or result.ok else retry)
        if result.outcome is probes.Outcome.WARNING:
            self._event(entry, "ProbeWarning", f"Readiness probe warning: {result.message}")
        if not result.ok and (row.ready or now >= entry.unhealthy_at):
            # every probe kubelet runs that fails is an Unhealthy event; the lab's quick
            # retries while unready are reported once a period, as kubelet would probe
            entry.unhealthy_at = now + probe.period
            self._event(entry, "Unhealthy", f"Readiness probe failed: {result.message}")
        if verdict is None or bool(row.ready) == verdict:
            return False
        row.ready = int(verdict)
        self.store.put_container(row)
        return True

    def _periodic(self, entry: _Container, state: _ProbeState, probe: probes.Probe,
                  now: float, kind: str) -> bool | None:
        """The startup and liveness probers' step (worker.go doProbe) on a result that
        came back this tick: the next run a period on, kubelet's ProbeWarning/Unhealthy
        event for it ("KIND probe failed: ..."), and the verdict _count gives. None: no
        result this tick, or one below its threshold (both change nothing)."""
        result = self._result(entry, state, probe, now)
        if result is None:
            return None
        state.due = now + probe.period
        verdict = self._count(state, result.ok, probe)
        if result.outcome is probes.Outcome.WARNING:
            self._event(entry, "ProbeWarning", f"{kind} probe warning: {result.message}")
        if not result.ok:
            self._event(entry, "Unhealthy", f"{kind} probe failed: {result.message}")
        return verdict

    def _startup(self, entry: _Container, probe: probes.Probe, now: float) -> None:
        """kubelet's startup probe: once a period from initialDelaySeconds until it
        succeeds (liveness and readiness wait for it); failureThreshold failures in a row
        and the container is killed: `Killing` "Container C failed startup probe, will be
        restarted" (kuberuntime_manager.go computePodActions)."""
        state = entry.startup_probe
        verdict = self._periodic(entry, state, probe, now, "Startup")
        if verdict is None:
            return
        if verdict:
            entry.started_ok = True
            entry.row.startup_done = 1
            self.store.put_container(entry.row)
            # liveness and readiness start now, at their workers' next tick
            entry.live_probe.due = now + (entry.spec.liveness.period
                                          if entry.spec.liveness else 0.0)
            entry.ready_probe.due = now
            return
        state.run = 0  # worker.go: on hold until the new container, the run reset
        self._kill(entry, "startup", now)

    def _liveness(self, entry: _Container, probe: probes.Probe, now: float) -> None:
        """kubelet's liveness probe (prober/worker.go, kuberuntime_manager.go): once a
        period, a failure is the Warning `Unhealthy` "Liveness probe failed: ..."; at
        failureThreshold failures in a row the container is killed, `Killing` "Container
        C failed liveness probe, will be restarted" (without the restart part under
        restartPolicy Never), SIGTERM then SIGKILL after LIVENESS_GRACE; its exit is
        then a restart like any other (counted, backed off)."""
        state = entry.live_probe
        if self._periodic(entry, state, probe, now, "Liveness") is False:
            state.run = 0
            self._kill(entry, "liveness", now)

    def _kill(self, entry: _Container, which: str, now: float) -> None:
        restart = entry.pod.restart_policy != "Never"
        self._event(entry, "Killing", f"Container {entry.row.name} failed {which} probe"
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
    """Seconds from a container's start to kubelet's first readiness probe of it, at the
    latest (when the first Unhealthy event of a failing one is due)."""
    if spec.readiness is None:
        return 0.0
    return max(spec.readiness.delay, spec.readiness.period)


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


