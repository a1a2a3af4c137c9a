"""What a lab sidecar's start imports: `remora proxy` on the JSON files the lab writes
(the seed's server, mTLS) loads the proxy and nothing of the lab, the node, the control
plane or their clients. Each meshed pod starts one; on the 2-core VM every 10 ms of
import is 0.5 s of CPU for a 50-pod Deployment (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from remora.controlplane.ca import CertificateAuthority
from remora.controlplane.files import write_config
from remora.controlplane.generate import generate
from tests.unit.controlplane.seed import SERVER_IP, seed

# what `remora proxy` must not import to start: PyYAML (the lab's files are JSON), the
# lab and node runtime, the control plane, and their clients and kernel libraries; the
# HTTP/2 stack (ngh2) comes with the first HTTP/2 connection (proxy/http2/codec_choice.py)
NOT_NEEDED = ("yaml", "grpc", "kubernetes", "cryptography", "pyroute2", "remora.lab",
              "remora.node", "remora.kubeapi", "remora.controlplane", "remora.diagnose",
              "remora.capture", "remora.resources", "remora.apps", "ngh2",
              "remora.proxy.http2.downstream", "remora.proxy.http2.upstream")

PROBE = """
import json, sys
from remora.cli.main import main
try:
    main(["proxy", "-c", sys.argv[1], "--mode", "validate", "-l", "warning"])
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps(sorted(sys.modules)))
"""


def test_sidecar_start_imports_only_the_proxy(tmp_path: Path) -> None:
    snap, server, _client = seed()
    certs = tmp_path / "certs"
    CertificateAuthority(tmp_path / "ca").ensure_workload(certs, server.metadata.namespace)
    config = generate(snap, server, SERVER_IP, str(tmp_path / "envoy"), certs_dir=str(certs))
    write_config(config)
    bootstrap = tmp_path / "envoy" / "bootstrap.json"
    done = subprocess.run([sys.executable, "-c", PROBE, str(bootstrap)], capture_output=True,
                          text=True, timeout=60, env=os.environ.copy(), check=False)
    assert done.returncode == 0, done.stderr
    assert "configuration" in done.stdout and "OK" in done.stdout
    modules = json.loads(done.stdout.splitlines()[-1])
    assert "remora.proxy.server.runtime" in modules  # the probe did load the sidecar
    loaded = [m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_NEEDED)]
    assert loaded == []
