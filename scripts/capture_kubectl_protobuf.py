"""Capture the protobuf bodies kubectl's imperative commands send, with the JSON kubectl
prints for the same command (`--dry-run=client -o json`), for tests/data/kubeapi/protobuf.

The bodies come from kubectl's own `-v=9` log (client-go's "Request Body" hex dump), so
nothing but kubectl encodes them. Run against a lab API (KUBECONFIG set) that holds
namespace `x`. (`kubectl run` and `kubectl expose` build their objects as unstructured
and send JSON; `scale`, `label`, `annotate`, `set image`, `edit` send JSON patches.)

    python scripts/capture_kubectl_protobuf.py tests/data/kubeapi/protobuf
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

COMMANDS = {
    "namespace": ["create", "namespace", "cap-ns"],
    "deployment": ["create", "deployment", "cap-deploy", "-n", "x",
                   "--image=vasth/simple-server", "--replicas=0", "--port=8080",
                   "--", "/bin/simple-server", "-port", "8080"],
    "service": ["create", "service", "clusterip", "cap-svc", "-n", "x", "--tcp=80:8080",
                "--tcp=443:8443"],
    "headless": ["create", "service", "clusterip", "cap-hl", "-n", "x", "--clusterip=None",
                 "--tcp=80:80"],
}
HEX_LINE = re.compile(r"^\s*[0-9a-f]{8}  ((?:[0-9a-f]{2} {1,2})+)")


def request_body(log: str) -> bytes:
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if '"Request Body"' in line)
    out = bytearray()
    for line in lines[start + 1:]:
        m = HEX_LINE.match(line)
        if not m:
            break
        out += bytes.fromhex(m.group(1).replace(" ", ""))
    return bytes(out)


def main() -> None:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, args in COMMANDS.items():
        dash = args.index("--") if "--" in args else len(args)
        dry = subprocess.run(["kubectl", *args[:dash], "--dry-run=client", "-o", "json",
                              *args[dash:]], capture_output=True, text=True, check=True)
        sent = subprocess.run(["kubectl", *args[:dash], "--dry-run=server", "-v=9",
                               *args[dash:]], capture_output=True, text=True, check=False)
        body = request_body(sent.stderr)
        (out_dir / f"{name}.bin").write_bytes(body)
        (out_dir / f"{name}.json").write_text(
            json.dumps(json.loads(dry.stdout), indent=1, sort_keys=True) + "\n")
        print(name, len(body), "bytes", "protobuf" if body.startswith(b"k8s\0") else "JSON")


if __name__ == "__main__":
    main()
