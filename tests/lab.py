"""Namespaces, links and processes for root tests, all removed on exit.

A ``Lab`` creates uniquely named network namespaces (prefix + pid + counter, so parallel
runs and leftovers of a crashed run never collide), veth pairs between them, and processes
inside them; leaving the ``with`` block kills every process it started (by PID) and
deletes every namespace it created, whatever happened in the test.

    with Lab() as lab:
        client, server = lab.pair()      # 10.20.0.78 <-veth-> 10.20.0.77, like the seed
        proc = lab.spawn(server, ["python3", "-m", "http.server", "18080"])
        out = lab.run(client, ["curl", "-s", "http://10.20.0.77:18080/"])
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from remora import netns

_counter = itertools.count()

CLIENT_IP = "10.20.0.78"
SERVER_IP = "10.20.0.77"


@dataclass
class Namespace:
    name: str
    path: Path
    ips: list[str] = field(default_factory=list)

    @property
    def ip(self) -> str:
        return self.ips[0]


class Lab:
    def __init__(self, prefix: str = "rt") -> None:
        self.prefix = prefix
        self.namespaces: list[Namespace] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(self.procs):
            self._stop(proc)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)
        self.namespaces.clear()

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        # Each process leads its own process group (start_new_session), so helpers it
        # forked go too; only PIDs this lab started are signalled.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    # -- namespaces and links --------------------------------------------------------
    def namespace(self, role: str = "ns") -> Namespace:
        name = f"{self.prefix}{os.getpid()}{next(_counter)}{role}"[:15]
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        ns = Namespace(name=name, path=netns.NETNS_RUN_DIR / name)
        self.namespaces.append(ns)
        self.run(ns, ["ip", "link", "set", "lo", "up"])
        return ns

    def veth(self, a: Namespace, a_ip: str, b: Namespace, b_ip: str, prefix_len: int = 24) -> None:
        """Join A and B with a veth pair, eth0 on both sides, addresses A_IP and B_IP."""
        tmp_a = f"v{os.getpid() % 100000}{next(_counter)}a"[:15]
        tmp_b = tmp_a[:-1] + "b"
        subprocess.run(
            ["ip", "link", "add", tmp_a, "netns", a.name, "type", "veth", "peer", "name", tmp_b,
             "netns", b.name],
            check=True, capture_output=True,
        )
        for ns, tmp, ip in ((a, tmp_a, a_ip), (b, tmp_b, b_ip)):
            self.run(ns, ["ip", "link", "set", tmp, "name", "eth0"])
            self.run(ns, ["ip", "addr", "add", f"{ip}/{prefix_len}", "dev", "eth0"])
            self.run(ns, ["ip", "link", "set", "eth0", "up"])
            ns.ips.append(ip)

    def pair(self) -> tuple[Namespace, Namespace]:
        """The seed's topology: a client (10.20.0.78) and a server (10.20.0.77) namespace."""
        client = self.namespace("cli")
        server = self.namespace("srv")
        self.veth(client, CLIENT_IP, server, SERVER_IP)
        return client, server

    # -- processes -------------------------------------------------------------------
    def run(
        self, ns: Namespace | None, argv: list[str], check: bool = True, input: bytes | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[bytes]:
        path = ns.path if ns else None
        result = subprocess.run(
            netns.command(path, argv), capture_output=True, input=input, timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{argv} in {ns.name if ns else 'host'} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace')}"
            )
        return result

    def spawn(
        self, ns: Namespace | None, argv: list[str], env: dict[str, str] | None = None,
        stdout: int | None = subprocess.PIPE, stderr: int | None = subprocess.STDOUT,
        user: int | None = None, group: int | None = None,
    ) -> subprocess.Popen[bytes]:
        path = ns.path if ns else None
        proc = subprocess.Popen(
            netns.command(path, argv), env={**os.environ, **(env or {})}, stdout=stdout,
            stderr=stderr, start_new_session=True, user=user, group=group,
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        self._stop(proc)

    # -- waiting ---------------------------------------------------------------------
    @staticmethod
    def wait_port(ns: Namespace | None, ip: str, port: int, timeout: float = 10.0) -> None:
        """Wait until something accepts TCP connections at IP:PORT inside NS."""
        deadline = time.monotonic() + timeout
        last: OSError | None = None
        while time.monotonic() < deadline:
            sock = netns.socket_in(ns.path if ns else None)
            sock.settimeout(0.5)
            try:
                sock.connect((ip, port))
                return
            except OSError as exc:
                last = exc
                time.sleep(0.05)
            finally:
                sock.close()
        raise AssertionError(f"nothing listening on {ip}:{port} after {timeout}s: {last}")

    @staticmethod
    def socket(ns: Namespace | None, family: int = socket.AF_INET) -> socket.socket:
        return netns.socket_in(ns.path if ns else None, family)
