#!/usr/bin/env python3
"""Memory of a sidecar with N workers on loopback: RSS and PSS per process and summed.

Starts each proxy (`remora proxy`, and the real Envoy when installed) with
`--concurrency N` on the reference server-side bootstrap (tests/data/reference, every port
moved to a free loopback port) plus one HTTP listener that carries the same
HttpConnectionManager as the reference's 18080 inbound chain, routed to the seed's demo
server; sends REQUESTS requests over CONNECTIONS keep-alive connections (so every worker
has served traffic: the kernel spreads the connections over the workers' SO_REUSEPORT
sockets), then prints per process VmRSS and PSS (/proc/PID/smaps_rollup) and the sums
over the proxy's process tree.

RSS counts a page shared by the forked workers once per process; PSS divides it among the
processes sharing it, so the summed PSS is the memory the sidecar really costs. A script,
not a test: no root, no namespaces, loopback only; it prints figures and asserts nothing.

    python3 scripts/proxy_memory.py [--concurrency 2] [--proxies remora,envoy]
        [--connections 16] [--requests 2000]
"""

from __future__ import annotations

import argparse
import copy
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_proxy import pss_kib, tree_rss_kib  # noqa: E402
from tests import proxyharness as ph  # noqa: E402

REQUEST = (b"GET /common/sauth HTTP/1.1\r\nHost: srv.default.svc.cluster.local:18080\r\n"
           b"User-Agent: proxy_memory\r\n\r\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def bootstrap(backend_port: int) -> tuple[dict[str, Any], int, int]:
    """(the bootstrap, its admin port, its HTTP listener's port)."""
    doc: dict[str, Any] = json.loads((ph.REFERENCE / "server-redirect.json").read_text())
    admin = _free_port()
    doc["admin"]["address"] = _addr(admin)
    listeners = doc["static_resources"]["listeners"]
    for listener in listeners:
        listener["address"]["socket_address"]["port_value"] = _free_port()
    inbound = next(fc for fc in listeners[0]["filter_chains"]
                   if fc.get("filter_chain_match", {}).get("destination_port") == 18080)
    hcm = copy.deepcopy(inbound["filters"][0])
    hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = \
        "mem_backend"
    hcm["typed_config"]["access_log"][0]["typed_config"]["path"] = "/dev/null"
    http_port = _free_port()
    listeners.append({"name": "mem_http", "address": _addr(http_port),
                      "filter_chains": [{"filters": [hcm]}]})
    doc["static_resources"]["clusters"].append({
        "name": "mem_backend", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "mem_backend", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _addr(backend_port)}}]}]}})
    return doc, admin, http_port


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"proxy_memory: the proxy exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"proxy_memory: admin port {port} not ready in {timeout:.0f} s")


def _read_response(sock: socket.socket, buf: bytearray) -> None:
    while True:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = bytes(buf[:head_end]).lower()
            length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            if len(buf) >= head_end + 4 + length:
                del buf[:head_end + 4 + length]
                return
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the proxy closed the connection mid-response")
        buf += chunk


def _rollup_kib(pid: int, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith(field))


def load(port: int, connections: int, requests: int) -> None:
    """REQUESTS requests round-robin over CONNECTIONS keep-alive connections."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10)
             for _ in range(connections)]
    bufs = [bytearray() for _ in socks]
    try:
        for i in range(requests):
            sock = socks[i % connections]
            sock.sendall(REQUEST)
            _read_response(sock, bufs[i % connections])
    finally:
        for sock in socks:
            sock.close()


def measure(kind: str, args: argparse.Namespace, workdir: Path, backend: int) -> None:
    doc, admin, http_port = bootstrap(backend)
    config = workdir / f"{kind}.json"
    config.write_text(json.dumps(doc))
    proc = subprocess.Popen(ph.sidecar_argv(kind, config, args.concurrency),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(admin, proc)
        load(http_port, args.connections, args.requests)
        time.sleep(1.0)  # a --concurrency worker's stats snapshot, Envoy's stats flush
        pids = ph._process_tree(proc.pid)
        for pid in pids:
            # Private_Dirty: what this process wrote since the fork (or allocated), so
            # no longer shares with the others
            print(f"{kind:<7} pid {pid:>7}  RSS {tree_rss_kib([pid]) / 1024:6.1f} MiB  "
                  f"PSS {pss_kib([pid]) / 1024:6.1f} MiB  (anon "
                  f"{_rollup_kib(pid, 'Pss_Anon:') / 1024:.1f}, file "
                  f"{_rollup_kib(pid, 'Pss_File:') / 1024:.1f})  private dirty "
                  f"{_rollup_kib(pid, 'Private_Dirty:') / 1024:6.1f} MiB")
        print(f"{kind:<7} total ({len(pids)} processes)  RSS {tree_rss_kib(pids) / 1024:6.1f} MiB"
              f"  PSS {pss_kib(pids) / 1024:6.1f} MiB", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--proxies", default="remora,envoy", type=lambda s: s.split(","))
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    backend_port = _free_port()
    app = subprocess.Popen([sys.executable, "-m", "remora.apps.simple_server", "--host",
                            "127.0.0.1", "--port", str(backend_port), "--quiet"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", backend_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("proxy_memory: the demo server did not start") from None
                time.sleep(0.05)
        with tempfile.TemporaryDirectory(prefix="proxy-memory-") as tmp:
            for kind in args.proxies:
                if kind == "envoy":
                    try:
                        ph.envoy_binary()
                    except RuntimeError as exc:
                        print(f"envoy   not run: {exc}")
                        continue
                measure(kind, args, Path(tmp), backend_port)
    finally:
        app.terminate()
        app.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
