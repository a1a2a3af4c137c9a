#!/usr/bin/env python3
"""CPU per request of `remora proxy` (or Envoy) on one HTTP/1.1 hop, on loopback, no root.

A tiny backend (its own process) answers every request with a 2-byte body; the proxy runs
as `remora proxy -c <bootstrap>` (one worker) with an HTTP connection manager, the router
and a file access log; C client connections send N keep-alive requests in total, one at a
time each. The figure is the proxy's user+system CPU (from /proc/<pid>/stat) over the
measured requests divided by their count, in µs: the Python work per request that issue
#10 is about, without netns or wrk. The machine's other load makes it rough; compare runs
made one after the other.

With ``--callgrind`` the proxy runs under ``valgrind --tool=callgrind`` and the figure is
the instructions it executed per measured request (the counters are zeroed after the
warm-up and dumped after the run with callgrind_control): slow, but the same on a busy
and a quiet machine, so two versions of the code can be compared exactly.

    python3 scripts/bench_http_cpu.py --requests 20000 --connections 4 [--proxy envoy]
    python3 scripts/bench_http_cpu.py --requests 1000 --callgrind
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
REQUEST = b"GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n\r\n"

BACKEND = r"""
import asyncio, sys
RESP = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.t.write(RESP * n)
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    await srv.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def addr(port: int) -> dict[str, object]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def bootstrap(listen: int, backend: int, admin: int, log: str) -> dict[str, object]:
    hcm = {"@type": HCM, "stat_prefix": "bench",
           "route_config": {"name": "r", "virtual_hosts": [{
               "name": "v", "domains": ["*"],
               "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": ROUTER}}],
           "access_log": [{"name": "envoy.access_loggers.file",
                           "typed_config": {"@type": FILE_LOG, "path": log}}]}
    return {"admin": {"address": addr(admin)}, "static_resources": {
        "listeners": [{"name": "web", "address": addr(listen), "filter_chains": [{
            "filters": [{"name": "envoy.filters.network.http_connection_manager",
                         "typed_config": hcm}]}]}],
        "clusters": [{"name": "backend", "type": "STATIC", "connect_timeout": "1s",
                      "load_assignment": {"cluster_name": "backend", "endpoints": [{
                          "lb_endpoints": [{"endpoint": {"address": addr(backend)}}]}]}}]}}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def client(port: int, count: int, errors: list[str]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            s.sendall(REQUEST)
            data = b""
            while not data.endswith(b"\r\n\r\nok"):
                chunk = s.recv(65536)
                if not chunk:
                    errors.append("closed")
                    return
                data += chunk
            if not data.startswith(b"HTTP/1.1 200"):
                errors.append(data[:40].decode("latin-1"))
                return


def run_clients(port: int, total: int, connections: int) -> float:
    errors: list[str] = []
    per = total // connections
    threads = [threading.Thread(target=client, args=(port, per, errors))
               for _ in range(connections)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"client errors: {errors[:3]}")
    return time.monotonic() - started


def _callgrind_total(folder: Path) -> int:
    """The instructions in the dumps written after zeroing (callgrind_control -d)."""
    total = 0
    for dump in folder.glob("callgrind.out*"):
        if dump.name == "callgrind.out":
            continue  # the final dump at exit, written after the process ends
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                break
    if not total:
        raise SystemExit("no callgrind dump found")
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--proxy", choices=("remora", "envoy"), default="remora")
    ap.add_argument("--callgrind", action="store_true",
                    help="count the proxy's instructions per request under valgrind")
    args = ap.parse_args()
    listen, backend, admin = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bootstrap.json"
        cfg.write_text(json.dumps(bootstrap(listen, backend, admin, str(Path(tmp) / "a.log"))))
        be = subprocess.Popen([sys.executable, "-c", BACKEND, str(backend)])
        if args.proxy == "remora":
            argv = [sys.executable, "-m", "remora", "proxy", "-c", str(cfg),
                    "--concurrency", "1"]
        else:
            argv = ["envoy", "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
                    "--log-level", "warning"]
        out = Path(tmp) / "callgrind.out"
        if args.callgrind:
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]
        px = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL if args.callgrind else None)
        try:
            wait_listening(backend, be)
            wait_listening(listen, px, 600 if args.callgrind else 20)
            warm = 100 if args.callgrind else 500
            run_clients(listen, warm * args.connections, args.connections)  # warm-up
            if args.callgrind:
                subprocess.run(["callgrind_control", "-z", str(px.pid)], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            before = cpu_seconds(px.pid)
            wall = run_clients(listen, args.requests, args.connections)
            used = cpu_seconds(px.pid) - before
            if args.callgrind:
                subprocess.run(["callgrind_control", "-d", str(px.pid)], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                instructions = _callgrind_total(Path(tmp))
        finally:
            for p in (px, be):
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    n = (args.requests // args.connections) * args.connections
    if args.callgrind:
        print(f"{args.proxy}: {n} requests, c{args.connections}: "
              f"{instructions / n / 1000:.1f} k instructions per request (callgrind)")
        return 0
    print(f"{args.proxy}: {n} requests, c{args.connections}: "
          f"{used * 1e6 / n:.1f} µs CPU per request, {n / wall:.0f} req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
