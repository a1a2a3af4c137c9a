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
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proxy_cpu_harness import BACKEND_HTTP1, bootstrap, free_port, measure, proxy_argv

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
    slow = 50.0 if args.callgrind else 1.0  # valgrind's slowdown, for the timeouts
    warm = max(200 if args.callgrind else 2000, args.connections * args.streams * 2)
    argv_extra: list[str] = []
    if args.cprofile is not None:
        argv_extra = ["/tmp/exp/linetrace.py", str(args.cprofile.resolve())]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bootstrap.json"
        cfg.write_text(json.dumps(bootstrap(listen, backend, admin, str(Path(tmp) / "a.log"),
                                            codec=args.codec, upstream=args.upstream,
                                            connect_timeout="10s")))
        argv = proxy_argv(args.proxy, cfg)
        argv[1:1] = argv_extra
        m = measure(Path(tmp), argv, BACKEND_H2 if args.upstream == "h2" else BACKEND_HTTP1,
                    backend, listen, callgrind=args.callgrind, keep=args.keep,
                    warm_up=lambda: h2load(listen, warm, args.connections, args.streams,
                                           60 * slow),
                    run=lambda: h2load(listen, args.requests, args.connections, args.streams,
                                       max(120.0, args.requests / 500) * slow))
    n = args.requests
    what = (f"{args.proxy}: {n} requests, h2 c{args.connections} m{args.streams}, "
            f"upstream {args.upstream}")
    if args.callgrind:
        print(f"{what}: {m.instructions / n / 1000:.1f} k instructions per request (callgrind)")
        return 0
    print(f"{what}: {m.cpu * 1e6 / n:.1f} µs CPU per request, {n / m.wall:.0f} req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
