"""The node runtime's settings and its state-directory layout."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from remora.node import naming
from remora.node.etcfiles import ETC_NETNS
from remora.node.ipam import (
    DEFAULT_NODE_CIDR,
    DEFAULT_POD_CIDR,
    DEFAULT_SERVICE_CIDR,
    AddressPlan,
)

DEFAULT_STATE_DIR = Path("/var/lib/remora")


def default_state_dir() -> Path:
    return Path(os.environ.get("REMORA_STATE_DIR") or DEFAULT_STATE_DIR)


def lab_command(command: str, state_dir: Path | str) -> str:
    """``remora COMMAND`` for the lab at STATE_DIR, as a hint to print: with
    ``--state-dir DIR`` unless it is the default. Compared with /var/lib/remora, not with
    REMORA_STATE_DIR: the variable does not survive ``sudo`` (env_reset), so a hint that
    relied on it would act on another lab ("No lab to remove", this one left running).
    No ``sudo`` in front either: it is often absent, and the lab's commands run as root."""
    where = "" if Path(state_dir) == DEFAULT_STATE_DIR else f" --state-dir {state_dir}"
    return f"remora {command}{where}"


@dataclass(frozen=True)
class NodeConfig:
    state_dir: Path
    prefix: str = naming.DEFAULT_PREFIX
    nodes: int = 1
    pod_cidr: str = DEFAULT_POD_CIDR
    service_cidr: str = DEFAULT_SERVICE_CIDR
    node_cidr: str = DEFAULT_NODE_CIDR
    dns_ip: str | None = None
    pod_ip_start: int = 2
    domain: str = "cluster.local"
    etc_netns: Path = ETC_NETNS
    stop_grace: float = 2.0
    ip_family: str = "ipv4"  # ipv4 | ipv6 | dual (remora.node.ipam.IP_FAMILIES)

    def plan(self) -> AddressPlan:
        return AddressPlan.build(self.pod_cidr, self.service_cidr, self.node_cidr, self.dns_ip,
                                 self.pod_ip_start, self.ip_family)

    # -- state directory layout -----------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.state_dir / "remora.db"

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "node.sock"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "daemon.pid"

    @property
    def daemon_log(self) -> Path:
        return self.state_dir / "daemon.log"

    @property
    def log_root(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pods_root(self) -> Path:
        return self.state_dir / "pods"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state_dir"] = str(self.state_dir)
        data["etc_netns"] = str(self.etc_netns)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeConfig:
        data = dict(data)
        data["state_dir"] = Path(data["state_dir"])
        data["etc_netns"] = Path(data.get("etc_netns") or ETC_NETNS)
        return cls(**data)
