"""The istio-init container's process: `python -m remora.lab.istio_init ARGS...`.

The injector gives istio-init the args `istio-iptables -p 15001 -z 15006 -u 1337 -m
REDIRECT ...` (remora.controlplane.injection.istio_init_args). The node runtime starts
this module with exactly those args inside the pod's network namespace as uid 0, as
kubelet runs the init container; it parses them with istio-iptables' flag rules and
applies the rules through the capture API (docs/capture.md), then exits 0 so the pod's
app containers start. A failure prints one line and exits 1: the pod stays at
`Init:Error`, and `remora logs POD -c istio-init` shows why.
"""

from __future__ import annotations

import os
import sys

from remora.capture.apply import apply
from remora.capture.argv import parse_args
from remora.errors import RemoraError


def main(argv: list[str]) -> int:
    try:
        config = parse_args(argv, os.environ)
        outcome = apply(config)
    except RemoraError as exc:
        print(f"istio-init: error: {exc.one_line()}", flush=True)
        return 1
    detail = f" ({outcome.rules})" if outcome.rules else ""
    print(f"istio-init: capture rules {outcome.action}{detail}", flush=True)
    for note in outcome.notes:
        print(f"istio-init: {note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
