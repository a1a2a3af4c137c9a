"""`remora proxy --concurrency N`: one SO_REUSEPORT socket per worker per listener, bound
before the fork, as Envoy's listeners on Linux (enable_reuse_port defaults to true: one
socket per worker thread, the kernel hashes each connection to one of them). Each worker
counts what it accepted under Envoy's per-handler stats listener.<prefix>.worker_<i>.*,
and /proc tells which process really holds each socket."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from remora.proxy.config.bootstrap import parse_bootstrap
from remora.proxy.server.runtime import Server
from tests.unit.proxy.proxy_helpers import addr, free_port, static_cluster, tcp_listener

TCP_LISTEN, TCP_ESTABLISHED = "0A", "01"


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return str(resp.read().decode())


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        out.extend(int(c) for c in (task / "children").read_text().split())
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if m := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(int(m.group(1)))
    return inodes


def _tcp_sockets(pid: int, port: int, state: str) -> set[int]:
    """Inodes of the IPv4 TCP sockets in STATE on local PORT that PID holds open."""
    held = _socket_inodes(pid)
    found = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == state and int(fields[9]) in held:
            found.add(int(fields[9]))
    return found


def _stat(text: str, name: str) -> int:
    m = re.search(rf"^{re.escape(name)}: (\d+)$", text, re.M)
    assert m, f"{name} not in /stats:\n{text}"
    return int(m.group(1))


@contextmanager
def _proxy(doc: dict[str, Any], tmp_path: Path, concurrency: int) -> Iterator[
        subprocess.Popen[bytes]]:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(doc))
    aport = doc["admin"]["address"]["socket_address"]["port_value"]
    proc = subprocess.Popen([sys.executable, "-m", "remora", "proxy", "-c", str(path),
                             "--concurrency", str(concurrency)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if "LIVE" in _get(aport, "/ready"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "proxy did not become ready"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_stats(aport: int, name: str, value: int) -> str:
    """/stats once NAME shows VALUE (workers send their counts twice a second)."""
    deadline = time.monotonic() + 10
    while True:
        text = _get(aport, "/stats")
        if f"\n{name}: {value}\n" in "\n" + text:
            return text
        assert time.monotonic() < deadline, text
        time.sleep(0.1)


def test_every_worker_accepts_a_share_and_owns_its_connections(tmp_path: Path) -> None:
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(128)  # tcp_proxy's upstream connects complete in the backlog
    lport, aport = free_port(), free_port()
    listener = tcp_listener("l", lport, "c")
    listener["stat_prefix"] = "l"
    doc = {"admin": {"address": addr("127.0.0.1", aport)},
           "static_resources": {"listeners": [listener],
                                "clusters": [static_cluster("c", upstream.getsockname()[1])]}}
    clients: list[socket.socket] = []
    try:
        with _proxy(doc, tmp_path, concurrency=2) as proc:
            workers = [proc.pid, *_children(proc.pid)]
            assert len(workers) == 2
            # one listening socket per worker, each its own (the SO_REUSEPORT group)
            listening = [_tcp_sockets(pid, lport, TCP_LISTEN) for pid in workers]
            assert [len(x) for x in listening] == [1, 1]
            assert listening[0] != listening[1]
            # no pause after /ready: every worker's socket is bound before the fork
            clients = [socket.create_connection(("127.0.0.1", lport)) for _ in range(32)]
            upstream.settimeout(10)
            ends = [upstream.accept()[0] for _ in clients]
            text = _wait_stats(aport, "listener.l.downstream_cx_active", 32)
            per_worker = [_stat(text, f"listener.l.worker_{i}.downstream_cx_active")
                          for i in range(2)]
            assert sum(per_worker) == 32
            assert min(per_worker) >= 1, per_worker  # all on one: 2 ** -31 with a fair hash
            assert [_stat(text, f"listener.l.worker_{i}.downstream_cx_total")
                    for i in range(2)] == per_worker
            # each worker's count is the connections its own process holds
            held = [len(_tcp_sockets(pid, lport, TCP_ESTABLISHED)) for pid in workers]
            assert held == per_worker
            prom = _get(aport, "/stats/prometheus")
            for i, n in enumerate(per_worker):
                assert (f'envoy_listener_worker_downstream_cx_active{{envoy_worker_id="{i}",'
                        f'envoy_listener_address="l"}} {n}') in prom
            for end in [*clients, *ends]:
                end.close()
            text = _wait_stats(aport, "listener.l.downstream_cx_active", 0)
            assert [_stat(text, f"listener.l.worker_{i}.downstream_cx_active")
                    for i in range(2)] == [0, 0]
    finally:
        for client in clients:
            client.close()
        upstream.close()


def test_unix_socket_listener_is_one_socket_every_worker_accepts_from(tmp_path: Path) -> None:
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(64)
    aport = free_port()
    path = str(tmp_path / "l.sock")
    listener = tcp_listener("l", 0, "c")
    listener["address"] = {"pipe": {"path": path}}
    doc = {"admin": {"address": addr("127.0.0.1", aport)},
           "static_resources": {"listeners": [listener],
                                "clusters": [static_cluster("c", upstream.getsockname()[1])]}}
    try:
        with _proxy(doc, tmp_path, concurrency=2) as proc:
            inode = next(int(line.split()[6]) for line in
                         Path("/proc/net/unix").read_text().splitlines()[1:]
                         if line.split()[-1] == path)
            # a path names one socket: both workers hold the same one (two binds would
            # unlink each other's path and leave one worker's socket unreachable)
            assert all(inode in _socket_inodes(pid) for pid in [proc.pid, *_children(proc.pid)])
            for _ in range(8):
                with socket.socket(socket.AF_UNIX) as client:
                    client.connect(path)
                    upstream.settimeout(5)
                    conn, _ = upstream.accept()
                    conn.close()
            _wait_stats(aport, "tcp.l.downstream_cx_total", 8)
    finally:
        upstream.close()


def test_sockets_per_worker_are_bound_before_the_fork(tmp_path: Path) -> None:
    """Server.bind_workers (before the fork) binds one SO_REUSEPORT socket per worker per
    address; keep_worker(i) (after it) keeps worker i's and closes the others' here.
    A listener that does not bind (bind_to_port: false) gets none; one that says
    enable_reuse_port: false gets one socket, without SO_REUSEPORT, that every worker
    shares (Envoy: "all worker threads share one socket")."""
    port, extra = free_port(), free_port()
    listener = tcp_listener("l", port, "c")
    listener["additional_addresses"] = [{"address": addr("127.0.0.1", extra)}]
    virtual = tcp_listener("v", free_port(), "c")
    virtual["bind_to_port"] = False
    shared = tcp_listener("s", free_port(), "c")
    shared["enable_reuse_port"] = False
    doc = {"static_resources": {"listeners": [listener, virtual, shared],
                                "clusters": [static_cluster("c", 1)]}}
    server = Server(parse_bootstrap(doc, str(tmp_path / "b.json")), concurrency=3)
    server.load()
    server.bind_workers()
    active = server.listeners["l"]
    assert len(active.worker_socks) == 3
    every = [sock for own in active.worker_socks for sock in own]
    assert len({id(s) for s in every}) == 6
    assert [[s.getsockname()[1] for s in own] for own in active.worker_socks] == \
        [[port, extra]] * 3
    assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1 for s in every)
    assert server.listeners["v"].socks == [] and server.listeners["v"].worker_socks == []
    [one] = {id(x[0]): x[0] for x in server.listeners["s"].worker_socks}.values()
    assert len(server.listeners["s"].worker_socks) == 3
    assert one.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    mine = active.worker_socks[1]
    server.keep_worker(1)
    assert server.worker_index == 1
    assert active.socks == mine and active.worker_socks == []
    assert [s.fileno() == -1 for s in every] == [True, True, False, False, True, True]
    assert server.listeners["s"].socks == [one] and one.fileno() != -1
    for name in ("l", "s"):
        server.listeners[name].stop_accepting()


def test_one_worker_binds_as_before_without_reuse_port(tmp_path: Path) -> None:
    """--concurrency 1: one socket, bound when the server starts, SO_REUSEPORT only when
    the listener asks for it (enable_reuse_port), as before."""
    import asyncio

    from tests.unit.proxy.proxy_helpers import running

    port = free_port()
    doc = {"static_resources": {"listeners": [tcp_listener("l", port, "c")],
                                "clusters": [static_cluster("c", 1)]}}

    async def main() -> None:
        async with running(doc, tmp_path) as server:
            [sock] = server.listeners["l"].socks
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
            worker = f"listener.127.0.0.1_{port}.worker_0."
            # listed at 0 before the first connection, as Envoy lists them
            assert dict(server.stats.counters)[worker + "downstream_cx_total"] == 0
            assert dict(server.stats.gauges)[worker + "downstream_cx_active"] == 0

    asyncio.run(main())


def test_a_port_taken_stops_the_proxy_before_it_forks(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    doc = {"static_resources": {"listeners": [tcp_listener("l", port, "c")],
                                "clusters": [static_cluster("c", 1)]}}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc))
    try:
        result = subprocess.run([sys.executable, "-m", "remora", "proxy", "-c", str(path),
                                 "--concurrency", "2"], capture_output=True, text=True,
                                timeout=60, check=False)
    finally:
        taken.close()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"remora: error: cannot bind 127.0.0.1:{port}: Address already in use (fix: stop "
        "whatever listens there or change the port)"]


def test_listeners_lds_adds_after_the_fork_are_bound_by_every_worker(tmp_path: Path) -> None:
    """An LDS update reaches every worker (each watches the file): each binds its own
    SO_REUSEPORT socket of the new listener (each of Envoy's workers gets its socket of a
    new listener), a unix-socket listener is bound by worker 0 alone, and a listener
    whose address is unchanged keeps each worker's socket (in-place update)."""
    from remora.proxy.config.listener import LISTENER_TYPE
    from tests.unit.proxy.proxy_helpers import write_atomic

    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(64)
    first, second, aport = free_port(), free_port(), free_port()
    path = str(tmp_path / "dyn.sock")
    lds_path = tmp_path / "lds.json"

    def lds(version: str, *listeners: dict[str, Any]) -> dict[str, Any]:
        return {"version_info": version,
                "resources": [{"@type": LISTENER_TYPE, **x} for x in listeners]}

    pipe = tcp_listener("p", 0, "c")
    pipe["address"] = {"pipe": {"path": path}}
    write_atomic(lds_path, lds("1", tcp_listener("a", first, "c")))
    doc = {"admin": {"address": addr("127.0.0.1", aport)},
           "static_resources": {"clusters": [static_cluster("c", upstream.getsockname()[1])]},
           "dynamic_resources": {"lds_config": {"path_config_source": {"path": str(lds_path)}}}}
    try:
        with _proxy(doc, tmp_path, concurrency=2) as proc:
            workers = [proc.pid, *_children(proc.pid)]
            before = [_tcp_sockets(pid, first, TCP_LISTEN) for pid in workers]
            assert [len(x) for x in before] == [1, 1] and before[0] != before[1]
            # a: same address, other cluster settings (in place); b: new; p: a pipe
            changed = tcp_listener("a", first, "c", idle_timeout="7s")
            write_atomic(lds_path, lds("2", changed, tcp_listener("b", second, "c"), pipe))
            deadline = time.monotonic() + 10
            while not all(_tcp_sockets(pid, second, TCP_LISTEN) for pid in workers):
                assert time.monotonic() < deadline, "a worker did not bind listener b"
                time.sleep(0.05)
            after = [_tcp_sockets(pid, second, TCP_LISTEN) for pid in workers]
            assert [len(x) for x in after] == [1, 1] and after[0] != after[1]
            assert [_tcp_sockets(pid, first, TCP_LISTEN) for pid in workers] == before
            unix = [int(line.split()[6]) for line in
                    Path("/proc/net/unix").read_text().splitlines()[1:]
                    if line.split()[-1] == path]
            assert len(unix) == 1
            assert [unix[0] in _socket_inodes(pid) for pid in workers] == [True, False]
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(path)
                upstream.settimeout(5)
                upstream.accept()[0].close()
    finally:
        upstream.close()
