"""The generated files load in `remora proxy` (issue 3's strict reader), static and dynamic.

Nothing is bound: Server.load() parses and validates every listener and cluster and reads
the LDS/CDS/EDS files; binding happens only in start().
"""

import json
from pathlib import Path

import pytest

from remora.controlplane.files import write_config
from remora.controlplane.generate import generate, static_bootstrap
from remora.proxy.config.bootstrap import parse_bootstrap
from remora.proxy.server.runtime import Server
from tests.unit.controlplane.seed import CLIENT_IP, SERVER_IP, seed

OUTBOUND = "outbound|18080||simple-server-svc.demo-to.svc.cluster.local"


def load(path: Path) -> Server:
    server = Server(parse_bootstrap(json.loads(path.read_text()), str(path)))
    server.load()
    return server


@pytest.mark.parametrize("tproxy", [False, True])
@pytest.mark.parametrize("static", [False, True])
def test_remora_proxy_loads_generated_config(tmp_path: Path, tproxy: bool, static: bool) -> None:
    snap, server_pod, client_pod = seed(tproxy)
    for pod, ip in ((server_pod, SERVER_IP), (client_pod, CLIENT_IP)):
        d = tmp_path / pod.metadata.name
        cfg = generate(snap, pod, ip, str(d))
        write_config(cfg)
        path = d / "bootstrap.json"
        if static:
            path = tmp_path / f"{pod.metadata.name}.json"
            path.write_text(json.dumps(static_bootstrap(cfg)))
        proxy = load(path)
        assert {"virtualInbound", "virtualOutbound", "172.16.234.188_18080"} <= set(
            proxy.listeners)
        # only the server is patched to TPROXY
        assert proxy.listeners["virtualInbound"].config.transparent is (tproxy and
                                                                       pod is server_pod)
        cluster = proxy.cluster_manager.get(OUTBOUND)
        assert cluster is not None
        assert [h.key for h in cluster.hosts] == ["10.20.0.77:18080"]
        assert (proxy.cluster_manager.get("inbound|18080||") is not None) is (pod is server_pod)
