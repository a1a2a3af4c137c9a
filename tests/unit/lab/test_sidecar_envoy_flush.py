"""The lab's Envoy sidecar writes its access log as Istio's does: pilot-agent starts Envoy
with --file-flush-interval-msec 1000 (istio/istio pkg/envoy/proxy.go), so a connection's
line is in the file about a second after it ended, not after Envoy's default 10 s. Run
for real: the argv the lab gives the envoy sidecar (lab/sidecar.py), on loopback, no root.

Needs the envoy binary (marker `envoy`)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from remora.lab import sidecar
from remora.lab.settings import LabSettings
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy import proxy_helpers as ph

pytestmark = pytest.mark.envoy


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def test_envoy_sidecar_access_log_line_is_written_within_istios_flush_interval(
        tmp_path: Path) -> None:
    backend = lp.thread_server(_echo)
    port, admin = ph.free_port(), ph.free_port()
    log = tmp_path / "access.log"
    boot = {"admin": {"address": ph.addr("127.0.0.1", admin)},
            "static_resources": {
                "listeners": [ph.tcp_listener("l", port, "echo", str(log))],
                "clusters": [ph.static_cluster("echo", backend.getsockname()[1])]}}
    cfg = tmp_path / "bootstrap.json"
    cfg.write_text(json.dumps(boot))
    settings = LabSettings(sidecar="envoy").check()
    proc = subprocess.Popen(sidecar.argv(settings, cfg), stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "envoy.err").open("wb"))
    try:
        lp.wait_listening(port, proc, "envoy")

        def connection() -> float:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"ping")
                assert s.recv(16) == b"ping"
            return time.monotonic()

        # Envoy's flush thread writes the file's first buffered line at once; the lines
        # after it wait for the flush timer
        connection()
        first = lp.wait_lines(log, 1, timeout=15.0)
        assert first, (tmp_path / "envoy.err").read_text()
        ended = connection()
        # the 1 s timer, with room for a loaded machine; Envoy's own default (10 s) would
        # leave the line out for the whole wait
        lines = lp.wait_lines(log, len(first) + 1, timeout=5.0)
        assert len(lines) > len(first), lines
        assert time.monotonic() - ended < 5.0
    finally:
        lp.stop(proc)
        backend.close()
