"""The generated files run under a real Envoy, and an endpoint change reaches it live.

Only loopback is used: the two bound listeners are moved to 127.0.0.1 port 0 (ephemeral)
and the admin API to 127.0.0.1:0 in the test's copy; the path-watched LDS/CDS/EDS files
are the generated ones, so this checks that Envoy loads them, and picks up an EDS file
replaced by rename, without a restart.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane.files import write_config
from remora.controlplane.generate import LISTENER_TYPE, SidecarConfig, discovery_response, generate
from remora.controlplane.model import Snapshot
from remora.diagnose.proxy_config.dump import parse_config_dump
from remora.diagnose.proxy_config.render import endpoint_rows, render
from tests.unit.controlplane.seed import CLIENT_IP, seed

pytestmark = pytest.mark.envoy
OUTBOUND = "outbound|18080||simple-server-svc.demo-to.svc.cluster.local"
Writer = Callable[[Snapshot], None]


def loopback_copy(cfg: SidecarConfig) -> SidecarConfig:
    """Every bound listener (LDS and the bootstrap's 15021/15090) on 127.0.0.1:0."""
    static = cfg.bootstrap["static_resources"]["listeners"]
    for listener in [*cfg.listeners, *static]:
        if listener.get("bind_to_port", True):
            listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": 0}
    assert cfg.files["bootstrap.json"] is cfg.bootstrap
    cfg.bootstrap["admin"]["address"]["socket_address"]["port_value"] = 0
    cfg.files["lds.json"] = discovery_response(LISTENER_TYPE, cfg.listeners)
    return cfg


def wait_for(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def envoy_for(tmp_path: Path) -> Iterator[Callable[[Snapshot], tuple[str, Writer]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(snap: Snapshot) -> tuple[str, Writer]:
        _, _, client = seed()
        d = tmp_path / "client"

        def write(s: Snapshot) -> None:
            write_config(loopback_copy(generate(s, client, CLIENT_IP, str(d))))

        write(snap)
        admin_file = tmp_path / "admin-address"
        procs.append(subprocess.Popen(
            ["envoy", "-c", str(d / "bootstrap.json"), "--admin-address-path", str(admin_file),
             "--disable-hot-restart", "-l", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        admin = wait_for(lambda: admin_file.exists() and admin_file.read_text().strip(),
                         "Envoy's admin address")
        return str(admin), write

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def config_dump(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{admin}/config_dump?include_eds", timeout=5) as r:
        return dict(json.load(r))


def test_real_envoy_runs_the_files_and_follows_endpoint_changes(envoy_for: Any) -> None:
    snap, _, _ = seed()
    admin, write = envoy_for(snap)

    def endpoints() -> list[str]:
        dump = parse_config_dump(config_dump(admin))
        return [row[0] for row in endpoint_rows(dump, cluster=OUTBOUND)]

    assert wait_for(lambda: endpoints() == ["10.20.0.77:18080"], "the EDS endpoint")
    dump = parse_config_dump(config_dump(admin))
    names = {listener["name"] for listener in dump.listeners}
    assert {"virtualInbound", "virtualOutbound", "172.16.234.188_18080"} <= names
    assert "Cluster: outbound|18080||simple-server-svc.demo-to.svc.cluster.local" in \
        render(dump, "listener", port=18080)
    # the server pod is replaced (new IP): only its EDS file changes, Envoy follows
    moved = replace(snap, workloads=(replace(snap.workloads[0], ip="10.20.0.91"),
                                     snap.workloads[1]))
    write(moved)
    wait_for(lambda: endpoints() == ["10.20.0.91:18080"], "the new endpoint")
