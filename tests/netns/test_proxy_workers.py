"""`remora proxy --concurrency 2` behind the reference capture rules (REDIRECT and TPROXY):
the virtualInbound listener (0.0.0.0:15006, `transparent` under TPROXY) has one
SO_REUSEPORT socket per worker, so captured connections spread over both workers (Envoy's
per-worker stats listener.<prefix>.worker_<i>.*), and each is relayed to the app with the
client's address, as with one worker."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.lab import CLIENT_IP, SERVER_IP, Lab
from tests.netns.test_proxy_core import APP, Conn, apply_capture, sidecar_config, stats

pytestmark = pytest.mark.netns

INBOUND = "listener.0.0.0.0_15006."


@pytest.mark.parametrize("mode", ["REDIRECT", "TPROXY"])
def test_captured_connections_spread_over_both_workers(
        lab: Lab, data_dir: Path, tmp_path: Path, mode: str) -> None:
    client, server = lab.pair()
    lab.spawn(server, [sys.executable, "-c", APP, "18080"])
    lab.wait_port(server, SERVER_IP, 18080)
    config = tmp_path / "sidecar.json"
    config.write_text(json.dumps(sidecar_config(data_dir, mode, tmp_path / "access.log")))
    apply_capture(lab, server, data_dir, mode)
    out = tmp_path / "proxy.out"
    with out.open("wb") as fh:
        lab.spawn(server, [sys.executable, "-m", "remora", "proxy", "-c", str(config),
                           "--group", "1337", "--concurrency", "2"], stdout=fh, stderr=fh)
    lab.wait_port(server, "127.0.0.1", 15000)
    conns = [Conn(client) for _ in range(32)]
    try:
        # the app saw the client itself (REDIRECT: from 127.0.0.6, the inbound
        # passthrough's source; TPROXY: the client's own address, original_src)
        peers = {c.greeting.split("=")[1].rsplit(":", 1)[0] for c in conns}
        assert peers == ({"127.0.0.6"} if mode == "REDIRECT" else {CLIENT_IP})
        assert all(c.echo(f"hello {i}") == f"hello {i}" for i, c in enumerate(conns))
        deadline = time.monotonic() + 10
        while (s := stats(server)).get(INBOUND + "downstream_cx_active") != 32:
            assert time.monotonic() < deadline, s
            time.sleep(0.1)
        shares = [s[f"{INBOUND}worker_{i}.downstream_cx_active"] for i in range(2)]
        assert sum(shares) == 32 and min(shares) >= 1, shares
    finally:
        for c in conns:
            c.close()
