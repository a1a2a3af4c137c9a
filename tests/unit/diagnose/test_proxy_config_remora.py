"""remora proxy's own /config_dump reads into the same tables as the control plane's files."""

import json
from pathlib import Path

import pytest

from remora.controlplane.files import write_config
from remora.controlplane.generate import generate
from remora.diagnose.proxy_config.dump import from_xds_files, parse_config_dump
from remora.diagnose.proxy_config.render import render
from remora.proxy.admin.config_dump import config_dump
from remora.proxy.config.bootstrap import parse_bootstrap
from remora.proxy.server.runtime import Server
from tests.unit.controlplane.seed import CLIENT_IP, SERVER_IP, seed


@pytest.mark.parametrize("which", ["server", "client"])
def test_tables_from_remora_proxy_dump_equal_tables_from_files(tmp_path: Path,
                                                               which: str) -> None:
    snap, server_pod, client_pod = seed(tproxy=True)
    pod, ip = (server_pod, SERVER_IP) if which == "server" else (client_pod, CLIENT_IP)
    cfg = generate(snap, pod, ip, str(tmp_path))
    write_config(cfg)
    path = tmp_path / "bootstrap.json"
    proxy = Server(parse_bootstrap(json.loads(path.read_text()), str(path)))
    proxy.load()
    live = parse_config_dump(json.dumps(config_dump(proxy, include_eds=True)))
    files = from_xds_files(cfg.files)
    for what in ("listener", "cluster", "endpoint"):
        assert render(live, what) == render(files, what), what
    # route configs: the dump lists them in the proxy's order (istioctl prints that order),
    # the files carry them inline in the listeners; the same rows either way
    live_rows, file_rows = (render(x, "route").splitlines() for x in (live, files))
    assert live_rows[0] == file_rows[0] and sorted(live_rows) == sorted(file_rows)
    assert "10.20.0.77:18080" in render(live, "endpoint")
