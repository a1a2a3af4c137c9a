"""The client side of the node API, for the lab CLI (`remora up/apply/get/logs/exec/down`).

    client = ensure_daemon(NodeConfig(state_dir=Path("/var/lib/remora")))
    client.apply(objects)                    # ["deployment/simple-server created", ...]
    client.get("Pod", namespace="demo-to")   # Kubernetes-shaped pods, with a "remora" block
    client.logs("demo-to", pod, "demo")      # {"text", "path", "container"}
    for chunk in follow(Path(client.logs(...)["path"])): ...
    subprocess.run([*client.exec_argv("demo-to", pod), "iptables", "-t", "nat", "-L", "-v"])
    client.down()
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from remora.errors import RemoraError
from remora.node import process
from remora.node.config import NodeConfig

# seconds `down` waits for the node daemon to exit once it has removed the lab (it
# closes its sockets and the Kubernetes API: well under a second)
DAEMON_EXIT_WAIT = 15.0
STILL_RUNNING = "still running: process "  # teardown's entry for a process not ended


def wait_gone(pid: int, ticks: int | None, timeout: float, what: str, fix: str) -> None:
    """Return once process PID (started at TICKS; None: gone already) has exited; a
    RemoraError naming it (WHAT) when it still runs after TIMEOUT seconds."""
    if ticks is None:
        return
    deadline = time.monotonic() + timeout
    while process.is_alive(pid, ticks):
        if time.monotonic() >= deadline:
            raise RemoraError(f"{what} (pid {pid}) is still running {timeout:g}s later", fix)
        time.sleep(0.02)


def refuse_survivors(state_dir: Path, removed: list[str]) -> list[str]:
    """REMOVED (a `down`'s list) without the processes it could not end; a RemoraError
    naming them when there are any (SIGKILL does not end a process in uninterruptible
    sleep)."""
    pids = [r[len(STILL_RUNNING):] for r in removed if r.startswith(STILL_RUNNING)]
    if pids:
        raise RemoraError(f"the lab at {state_dir} is removed, but process(es) "
                          f"{', '.join(pids)} it stopped are still running after SIGTERM "
                          "and SIGKILL",
                          f"look at them with `ps -o pid,stat,wchan,cmd -p {','.join(pids)}` "
                          "(state D: waiting in the kernel, e.g. on a hung mount)")
    return removed


class DaemonExited(RemoraError):
    """The daemon that ensure_daemon started exited before it answered (a refused start:
    another lab's prefix, a bad option): nothing of it runs any more."""


class NodeClient:
    def __init__(self, state_dir: Path, timeout: float = 60.0) -> None:
        self.state_dir = state_dir
        self.socket_path = state_dir / "node.sock"
        self.timeout = timeout

    def call(self, op: str, explain: bool = True, **args: Any) -> Any:
        """One request. EXPLAIN: when no daemon answers, say what still runs of its lab
        (reads the store; alive() polls without it)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(str(self.socket_path))
            except OSError as exc:
                if not explain:
                    raise RemoraError(f"no node daemon at {self.socket_path}") from None
                raise self.not_running(exc.strerror) from None
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        finally:
            sock.close()
        if not data:
            raise RemoraError(f"the node daemon closed the connection during {op!r}",
                              f"see {self.state_dir / 'daemon.log'}")
        reply = json.loads(data)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise RemoraError(err.get("problem", "node daemon error"), err.get("fix"))
        return reply.get("result")

    def not_running(self, why: str | None = None) -> RemoraError:
        """The error for a daemon that does not answer: what still runs of its lab
        (pods, cluster DNS) when there is one, else that there is none."""
        from remora.node import stopped

        try:
            lab = stopped.inspect(self.state_dir)
        except Exception:  # an unreadable store: say what we know
            lab = None
        if lab is not None:
            return stopped.error(self.state_dir, lab)
        return RemoraError(f"no node daemon at {self.socket_path}" + (f" ({why})" if why else ""),
                           "start the lab with `remora up`")

    def alive(self) -> bool:
        try:
            self.call("ping", explain=False)
        except (RemoraError, OSError, ValueError):
            return False
        return True

    # -- the ops ------------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return dict(self.call("ping"))

    def apply(self, objects: list[dict[str, Any]]) -> list[str]:
        return list(self.call("apply", objects=objects)["results"])

    def delete(self, kind: str, name: str, namespace: str = "default") -> list[str]:
        return list(self.call("delete", kind=kind, namespace=namespace, name=name)["results"])

    def get(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return list(self.call("get", kind=kind, namespace=namespace)["items"])

    def logs(self, namespace: str, pod: str, container: str | None = None,
             previous: bool = False, tail: int | None = None) -> dict[str, Any]:
        return dict(self.call("logs", namespace=namespace, pod=pod, container=container,
                              previous=previous, tail=tail))

    def exec_argv(self, namespace: str, pod: str, container: str | None = None) -> list[str]:
        return list(self.call("exec", namespace=namespace, pod=pod, container=container)["argv"])

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.call("nodes")["items"])

    def down(self) -> list[str]:
        """Remove the lab; returns once the daemon, which replies first, has exited too,
        so that `remora down && remora up` never meets the old daemon still closing
        (its socket and pid file, its Kubernetes API)."""
        pid = int(self.call("ping")["pid"])
        ticks = process.start_ticks(pid)
        removed = list(self.call("down")["removed"])
        wait_gone(pid, ticks, DAEMON_EXIT_WAIT,
                  f"the lab at {self.state_dir} is removed, but its node daemon",
                  f"stop it with `kill {pid}` (`kill -9 {pid}` if that does not end it) "
                  "before the next `remora up`")
        return removed

    def wait_ready(self, namespace: str | None = None, timeout: float = 30.0,
                   names: list[str] | None = None) -> list[dict[str, Any]]:
        """Poll until every (named) pod in NAMESPACE is Ready and none is terminating."""
        deadline = time.monotonic() + timeout
        while True:
            pods = self.get("Pod", namespace)
            relevant = [p for p in pods if names is None or p["metadata"]["name"] in names]
            if relevant and all(p["status"]["ready"] and "deletionTimestamp" not in p["metadata"]
                                for p in relevant):
                return relevant
            if time.monotonic() > deadline:
                states = ", ".join(f"{p['metadata']['name']} {p['remora']['status']} "
                                   f"{p['remora']['ready']}" for p in relevant) or "no pods"
                raise RemoraError(f"pods not Ready after {timeout:.0f}s: {states}",
                                  "look at `remora get pods` and `remora logs`")
            time.sleep(0.1)


def daemon_argv(config: NodeConfig, pod_setup: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "remora", "node", "daemon", "--state-dir",
            str(config.state_dir), "--prefix", config.prefix, "--nodes", str(config.nodes),
            "--pod-cidr", config.pod_cidr, "--service-cidr", config.service_cidr,
            "--pod-ip-start", str(config.pod_ip_start)]
    if config.ip_family != "ipv4":
        argv += ["--ip-family", config.ip_family]
    if pod_setup:
        argv += ["--pod-setup", pod_setup]
    return argv


def ensure_daemon(config: NodeConfig, pod_setup: str | None = None,
                  timeout: float = 20.0) -> NodeClient:
    """Return a client of the daemon for CONFIG.state_dir, starting one if none runs."""
    client = NodeClient(config.state_dir)
    if client.alive():
        return client
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with open(config.daemon_log, "ab") as log:
        proc = subprocess.Popen(daemon_argv(config, pod_setup), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.alive():
            return client
        if proc.poll() is not None:
            tail = config.daemon_log.read_text(errors="replace").strip().splitlines()[-1:]
            raise DaemonExited(f"the node daemon exited with {proc.returncode}: "
                              f"{tail[0] if tail else 'no output'}",
                              f"see {config.daemon_log}")
        time.sleep(0.05)
    raise RemoraError(f"the node daemon did not answer within {timeout:.0f}s",
                      f"see {config.daemon_log}")


def follow(path: Path, poll: float = 0.2, from_start: bool = True) -> Iterator[bytes]:
    """Yield what is appended to a container log, across restarts (the file is replaced)."""
    handle = None
    inode = None
    while True:
        try:
            st = path.stat()
        except FileNotFoundError:
            st = None
        if st is not None and st.st_ino != inode:
            if handle is not None:
                rest = handle.read()
                if rest:
                    yield rest
                handle.close()
            handle = open(path, "rb")  # noqa: SIM115 - kept open across iterations
            if not from_start and inode is None:
                handle.seek(0, os.SEEK_END)
            inode = st.st_ino
        chunk = handle.read() if handle is not None else b""
        if chunk:
            yield chunk
        else:
            time.sleep(poll)
