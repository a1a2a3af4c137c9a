#!/usr/bin/env python3
"""CPU per request of `remora proxy` (or Envoy) serving HTTP/2 on one hop, on loopback, no root.

The HTTP/2 counterpart of scripts/bench_http_cpu.py, for issue #11's h2load figures
(scripts/bench_proxy.py --protocol h2) without netns. A tiny backend (its own process)
answers every request with a 2-byte body, over HTTP/1.1 (``--upstream http1``: what
bench_proxy's reference config gives, a cluster without protocol options) or HTTP/2
(``--upstream h2``: the cluster's typed_extension_protocol_options with explicit
http2_protocol_options; the backend then speaks h2c through ngh2). The proxy runs as
`remora proxy -c <bootstrap>` (one worker) with an HTTP connection manager (codec_type
AUTO, as the reference config, or ``--codec HTTP2``), the router and a file access log.
h2load (Debian's nghttp2-client) sends GETs with h2c prior knowledge: ``-c`` connections
x ``-m`` concurrent streams each, ``-n`` requests in all, one thread.

The figure is the proxy's user+system CPU (from /proc/<pid>/stat) over the measured
requests divided by their count, in µs; the machine's other load makes it rough (compare
runs made one after the other, ``--proxy envoy`` for Envoy 1.40 on the same config).

With ``--callgrind`` the proxy runs under ``valgrind --tool=callgrind`` and the figure is
the instructions it executed per measured request (the counters are zeroed after the
warm-up and dumped after the run with callgrind_control): slow, but the same on a busy
and a quiet machine, so two versions of the code can be compared exactly.

    python3 scripts/bench_h2_cpu.py --requests 20000 [--upstream h2] [--proxy envoy]
    python3 scripts/bench_h2_cpu.py --requests 2000 --callgrind [--upstream h2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

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

# h2c prior knowledge through ngh2 (the proxy's own codec, compiled): the backend's cost
# stays small beside the proxy's
BACKEND_H2 = r"""
import asyncio, sys, ngh2
HEAD = [(b":status", b"200"), (b"content-length", b"2"), (b"content-type", b"text/plain")]
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
        self.c = ngh2.Connection(ngh2.Role.SERVER, ngh2.Configuration())
        self.c.initiate_connection({ngh2.Setting.MAX_CONCURRENT_STREAMS: 1000})
        t.write(self.c.data_to_send())
    def data_received(self, d):
        c = self.c
        try:
            c.receive_data(d)
            for ev in c.events():
                if isinstance(ev, ngh2.RequestReceived) and ev.end_stream or (
                        isinstance(ev, (ngh2.DataReceived, ngh2.TrailersReceived))
                        and getattr(ev, "end_stream", True)):
                    c.send_response(ev.stream_id, HEAD)
                    c.send_data(ev.stream_id, b"ok", end_stream=True)
            out = c.data_to_send()
        except ngh2.NGH2Error:
            self.t.close()
            return
        if out:
            self.t.write(out)
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


def bootstrap(listen: int, backend: int, admin: int, log: str, codec: str,
              upstream: str) -> dict[str, object]:
    hcm: dict[str, object] = {
        "@type": HCM, "stat_prefix": "bench",
        "route_config": {"name": "r", "virtual_hosts": [{
            "name": "v", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER}}],
        "access_log": [{"name": "envoy.access_loggers.file",
                        "typed_config": {"@type": FILE_LOG, "path": log}}]}
    if codec != "AUTO":
        hcm["codec_type"] = codec
    cluster: dict[str, object] = {
        "name": "backend", "type": "STATIC", "connect_timeout": "10s",
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


def h2load(port: int, requests: int, connections: int, streams: int,
           timeout: float) -> float:
    """h2load's run of REQUESTS GETs; the wall time. Stops on any non-2xx response."""
    argv = ["h2load", "-t1", f"-c{connections}", f"-m{streams}", f"-n{requests}",
            f"http://127.0.0.1:{port}/bench"]
    started = time.monotonic()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"h2load did not finish in {timeout:.0f} s") from None
    wall = time.monotonic() - started
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", r.stdout)
    if r.returncode != 0 or m is None or int(m.group(1)) != requests:
        tail = " ".join(r.stdout.split("\n")[-8:])[-400:]
        raise SystemExit(f"h2load: not every request got a 2xx (rc {r.returncode}): {tail}")
    return wall


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
    ap.add_argument("--connections", type=int, default=1, help="h2load -c")
    ap.add_argument("--streams", type=int, default=10, help="h2load -m (per connection)")
    ap.add_argument("--upstream", choices=("http1", "h2"), default="http1",
                    help="the cluster's protocol (h2: explicit http2_protocol_options)")
    ap.add_argument("--codec", choices=("AUTO", "HTTP2"), default="AUTO",
                    help="the connection manager's codec_type")
    ap.add_argument("--proxy", choices=("remora", "envoy"), default="remora")
    ap.add_argument("--callgrind", action="store_true",
                    help="count the proxy's instructions per request under valgrind")
    ap.add_argument("--keep", type=Path, default=None,
                    help="--callgrind: copy the measured dump here (for callgrind_annotate)")
    ap.add_argument("--cprofile", type=Path, default=None,
                    help="run the proxy under cProfile, its stats written here at the end "
                         "(warm-up included; calls per request: ncalls / all requests)")
    args = ap.parse_args()
    if args.cprofile is not None and (args.callgrind or args.proxy == "envoy"):
        raise SystemExit("bench_h2_cpu: --cprofile profiles remora alone, without --callgrind")
    if args.callgrind and args.proxy == "envoy":
        # tried: Envoy's worker threads leave no dump callgrind_control can take here
        raise SystemExit("bench_h2_cpu: --callgrind counts remora only; compare Envoy by "
                         "CPU per request (drop --callgrind)")
    if shutil.which("h2load") is None:
        raise SystemExit("bench_h2_cpu: h2load not found (apt-get install nghttp2-client)")
    listen, backend, admin = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bootstrap.json"
        cfg.write_text(json.dumps(bootstrap(listen, backend, admin, str(Path(tmp) / "a.log"),
                                            args.codec, args.upstream)))
        be = subprocess.Popen([sys.executable, "-c",
                               BACKEND_H2 if args.upstream == "h2" else BACKEND_HTTP1,
                               str(backend)])
        if args.proxy == "remora":
            argv = [sys.executable, "-m", "remora", "proxy", "-c", str(cfg),
                    "--concurrency", "1"]
            if args.cprofile is not None:
                argv[1:1] = ["-m", "cProfile", "-o", str(args.cprofile.resolve())]
        else:
            argv = ["envoy", "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
                    "--log-level", "warning"]
        out = Path(tmp) / "callgrind.out"
        if args.callgrind:
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]
        px = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL if args.callgrind else None)
        slow = 50.0 if args.callgrind else 1.0  # valgrind's slowdown, for the timeouts
        try:
            wait_listening(backend, be)
            wait_listening(listen, px, 600 if args.callgrind else 20)
            warm = 200 if args.callgrind else 2000
            warm = max(warm, args.connections * args.streams * 2)
            h2load(listen, warm, args.connections, args.streams, 60 * slow)  # warm-up
            if args.callgrind:
                subprocess.run(["callgrind_control", "-z", str(px.pid)], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            before = cpu_seconds(px.pid)
            wall = h2load(listen, args.requests, args.connections, args.streams,
                          max(120.0, args.requests / 500) * slow)
            used = cpu_seconds(px.pid) - before
            if args.callgrind:
                subprocess.run(["callgrind_control", "-d", str(px.pid)], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                instructions = _callgrind_total(Path(tmp))
                if args.keep is not None:
                    for dump in Path(tmp).glob("callgrind.out.*"):
                        shutil.copy(dump, args.keep)
        finally:
            for p in (px, be):
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    n = args.requests
    what = (f"{args.proxy}: {n} requests, h2 c{args.connections} m{args.streams}, "
            f"upstream {args.upstream}")
    if args.callgrind:
        print(f"{what}: {instructions / n / 1000:.1f} k instructions per request (callgrind)")
        return 0
    print(f"{what}: {used * 1e6 / n:.1f} µs CPU per request, {n / wall:.0f} req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
