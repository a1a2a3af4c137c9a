#!/usr/bin/env python3
"""Benchmark: N meshed pods (istio-init + sidecar, one Deployment with a Service), `remora
up -f DIR --wait` from no lab to all Ready, in a throwaway lab (needs root).

    sudo python3 scripts/bench_lab_pods.py [--pods 20] [--sidecar remora|envoy]

Prints the wall time, the time per pod, the CPU seconds the lab's processes used (daemon
with its reaped init containers, sidecars, DNS) and how many sidecar config writes the
daemon logged. On a shared machine, compare two code versions run one after the other,
several times (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from remora.lab.testing import TempLab

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata:
  name: bench
  labels:
    istio-injection: enabled
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: bench, namespace: bench}}
spec:
  replicas: {pods}
  selector: {{matchLabels: {{app: bench}}}}
  template:
    metadata: {{labels: {{app: bench}}}}
    spec:
      containers:
      - name: app
        image: local
        command: [sleep, "3600"]
        ports: [{{containerPort: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: bench, namespace: bench}}
spec:
  selector: {{app: bench}}
  ports: [{{name: http, port: 80}}]
"""


def cpu_seconds(state_dir: Path) -> dict[str, float]:
    """CPU (user+system, with reaped children) of every process whose command line names
    the lab's state directory, by kind."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(state_dir) not in cmd:
            continue
        kind = ("sidecar" if " proxy " in cmd or "envoy" in cmd
                else "daemon" if "daemon" in cmd else "dns" if "resolver" in cmd else "other")
        fields = stat.rsplit(")", 1)[1].split()
        out[kind] = out.get(kind, 0.0) + sum(int(x) for x in fields[11:15]) / tick
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--sidecar", choices=["remora", "envoy"], default="remora")
    args = parser.parse_args()
    with TempLab() as lab, tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        (Path(tmp) / "bench.yaml").write_text(MANIFEST.format(pods=args.pods))
        start = time.monotonic()
        done = lab.remora(*lab.up_args(), "--sidecar", args.sidecar, "-f", tmp, "--wait",
                          "--timeout", "600", timeout=900)
        wall = time.monotonic() - start
        if done.returncode:
            raise SystemExit(f"up failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        cpu = cpu_seconds(lab.state_dir)
        log = (lab.state_dir / "daemon.log").read_text()
        print(f"{args.pods} meshed pods Ready in {wall:.2f} s: {wall / args.pods * 1000:.0f} "
              f"ms per pod; CPU s {', '.join(f'{k} {v:.1f}' for k, v in sorted(cpu.items()))}; "
              f"{log.count('sidecar config')} sidecar config writes", flush=True)
    print("left behind:", lab.leftovers() or "nothing")


if __name__ == "__main__":
    main()
