"""What scripts/bench_http_cpu.py and scripts/bench_h2_cpu.py share: a loopback bootstrap
(one HTTP connection manager with the router and a file access log, one STATIC cluster),
a tiny HTTP/1.1 backend, and one measured run of a proxy process (warm-up, then CPU from
/proc/<pid>/stat or, under valgrind, callgrind's instruction count after zeroing)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# answers every request with a 2-byte body, pipelined requests in one write
BACKEND_HTTP1 = r"""
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


def bootstrap(listen: int, backend: int, admin: int, log: str | None, *, codec: str = "AUTO",
              upstream: str = "http1", connect_timeout: str = "1s") -> dict[str, object]:
    """One listener with the HCM (router only, file access log at LOG, none when LOG is
    None) to the cluster "backend" on 127.0.0.1:BACKEND; UPSTREAM h2 gives the cluster
    explicit HTTP/2."""
    hcm: dict[str, object] = {
        "@type": HCM, "stat_prefix": "bench",
        "route_config": {"name": "r", "virtual_hosts": [{
            "name": "v", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER}}]}
    if log is not None:
        hcm["access_log"] = [{"name": "envoy.access_loggers.file",
                              "typed_config": {"@type": FILE_LOG, "path": log}}]
    if codec != "AUTO":
        hcm["codec_type"] = codec
    cluster: dict[str, object] = {
        "name": "backend", "type": "STATIC", "connect_timeout": connect_timeout,
        "load_assignment": {"cluster_name": "backend", "endpoints": [{
            "lb_endpoints": [{"endpoint": {"address": addr(backend)}}]}]}}
    if upstream == "h2":
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}}}}
    return {"admin": {"address": addr(admin)}, "static_resources": {
        "listeners": [{"name": "web", "address": addr(listen), "filter_chains": [{
            "filters": [{"name": "envoy.filters.network.http_connection_manager",
                         "typed_config": hcm}]}]}],
        "clusters": [cluster]}}


def proxy_argv(proxy: str, cfg: Path) -> list[str]:
    if proxy == "remora":
        return [sys.executable, "-m", "remora", "proxy", "-c", str(cfg), "--concurrency", "1"]
    return ["envoy", "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
            "--log-level", "warning"]


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


def callgrind_total(folder: Path) -> int:
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


@dataclass
class Measured:
    wall: float  # seconds of the measured run
    cpu: float  # the proxy's user+system CPU seconds during it
    instructions: int  # with callgrind: instructions during it (else 0)


def measure(tmp: Path, argv: list[str], backend_src: str, backend: int, listen: int, *,
            callgrind: bool, warm_up: Callable[[], object], run: Callable[[], float],
            keep: Path | None = None) -> Measured:
    """Start the backend and the proxy (ARGV, under callgrind if asked), warm up, then
    measure RUN (it returns its wall time); both processes are ended whatever happens."""
    be = subprocess.Popen([sys.executable, "-c", backend_src, str(backend)])
    if callgrind:
        argv = ["valgrind", "--tool=callgrind",
                f"--callgrind-out-file={tmp / 'callgrind.out'}", *argv]
    px = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL if callgrind else None)
    try:
        wait_listening(backend, be)
        wait_listening(listen, px, 600 if callgrind else 20)
        warm_up()
        if callgrind:
            subprocess.run(["callgrind_control", "-z", str(px.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = cpu_seconds(px.pid)
        wall = run()
        used = cpu_seconds(px.pid) - before
        instructions = 0
        if callgrind:
            subprocess.run(["callgrind_control", "-d", str(px.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            instructions = callgrind_total(tmp)
            if keep is not None:
                for dump in tmp.glob("callgrind.out.*"):
                    shutil.copy(dump, keep)
    finally:
        for p in (px, be):
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return Measured(wall, used, instructions)
