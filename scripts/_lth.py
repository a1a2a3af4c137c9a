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
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from proxy_cpu_harness import BACKEND_HTTP1, bootstrap, free_port, measure, proxy_argv

REQUEST = b"GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n\r\n"


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--proxy", choices=("remora", "envoy"), default="remora")
    ap.add_argument("--callgrind", action="store_true",
                    help="count the proxy's instructions per request under valgrind")
    ap.add_argument("--keep", type=Path, default=None,
                    help="--callgrind: copy the measured dump here (for callgrind_annotate)")
    ap.add_argument("--cprofile", type=Path, default=None,
                    help="run the proxy under cProfile, its stats written here at the end "
                         "(warm-up included; calls per request: ncalls / all requests)")
    ap.add_argument("--no-access-log", action="store_true",
                    help="no access log (its flush timer fires every 10 ms of wall time, so "
                         "under callgrind its share per request follows the machine's load; "
                         "without it two versions compare within a few hundred instructions)")
    args = ap.parse_args()
    if args.cprofile is not None and (args.callgrind or args.proxy == "envoy"):
        raise SystemExit("bench_http_cpu: --cprofile profiles remora alone, without "
                         "--callgrind")
    listen, backend, admin = free_port(), free_port(), free_port()
    warm = 100 if args.callgrind else 500
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bootstrap.json"
        log = None if args.no_access_log else str(Path(tmp) / "a.log")
        cfg.write_text(json.dumps(bootstrap(listen, backend, admin, log)))
        argv = proxy_argv(args.proxy, cfg)
        if args.cprofile is not None:
            argv[1:1] = ["/tmp/exp/linetrace.py", str(args.cprofile.resolve())]
        m = measure(Path(tmp), argv, BACKEND_HTTP1, backend, listen,
                    callgrind=args.callgrind, keep=args.keep,
                    warm_up=lambda: run_clients(listen, warm * args.connections,
                                                args.connections),
                    run=lambda: run_clients(listen, args.requests, args.connections))
    n = (args.requests // args.connections) * args.connections
    if args.callgrind:
        print(f"{args.proxy}: {n} requests, c{args.connections}: "
              f"{m.instructions / n / 1000:.1f} k instructions per request (callgrind)")
        return 0
    print(f"{args.proxy}: {n} requests, c{args.connections}: "
          f"{m.cpu * 1e6 / n:.1f} µs CPU per request, {n / m.wall:.0f} req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
