#!/usr/bin/env python3
"""Benchmark: N pods on one node, from apply to all Ready, then down (needs root).

    sudo python3 scripts/bench_node_pods.py [--pods 50] [--replicas-as-deployment]

Prints the wall time to Ready, the time per pod, and the time `down` takes. Uses a
temporary state dir and a unique namespace prefix, and removes everything afterwards.
"""

from __future__ import annotations

import argparse
import time

from remora.node.testing import TempNode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--deployment", action="store_true",
                        help="create the pods as replicas of one Deployment with a Service")
    args = parser.parse_args()
    container = {"name": "app", "image": "local", "command": ["sleep", "600"]}
    if args.deployment:
        objects = [
            {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "bench", "namespace": "bench"},
             "spec": {"replicas": args.pods, "selector": {"matchLabels": {"app": "bench"}},
                      "template": {"metadata": {"labels": {"app": "bench"}},
                                   "spec": {"containers": [container]}}}},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "bench", "namespace": "bench"},
             "spec": {"selector": {"app": "bench"}, "ports": [{"port": 80}]}},
        ]
    else:
        objects = [{"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"pod-{i}", "namespace": "bench"},
                    "spec": {"containers": [container]}} for i in range(args.pods)]
    with TempNode() as node:
        start = time.monotonic()
        node.client.apply(objects)
        pods = node.client.wait_ready("bench", timeout=300)
        ready = time.monotonic() - start
        assert len(pods) == args.pods
        print(f"{args.pods} pods Ready in {ready:.2f} s: {ready / args.pods * 1000:.1f} ms per pod")
        start = time.monotonic()
        node.client.down()
        print(f"down in {time.monotonic() - start:.2f} s")
        left = node.leftovers()
    print("left behind:", left or "nothing")


if __name__ == "__main__":
    main()
