"""Workload certificates on an idle lab: MeshSetup's timer re-issues them before expiry.

A lab with a 70 s certificate lifetime (the `cert_ttl` setting) runs the seed's server
and client; nothing is applied afterwards, so no cluster change triggers a rewrite. The
server's certificate (`remora proxy-config secret -o json`: Envoy's own SecretsConfigDump,
or the SDS files for `remora proxy`) gets a new serial within a few checks, and the
client's requests keep succeeding across the rotation (no dropped connection, no error).
"""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
from cryptography import x509

from remora.lab import demo, session
from remora.lab.settings import LabSettings
from remora.lab.testing import TempLab

pytestmark = pytest.mark.netns


def workload_serial(lab: TempLab, pod: str) -> int:
    proc = lab.remora("proxy-config", "secret", pod, "-n", "demo-to", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)["dynamicActiveSecrets"][0]
    assert entry["name"] == "default"
    pem = base64.b64decode(entry["secret"]["tls_certificate"]["certificate_chain"]
                           ["inline_bytes"])
    return x509.load_pem_x509_certificate(pem).serial_number


def server_200s(lab: TempLab, pod: str) -> int:
    log = lab.remora("logs", "-n", "demo-to", pod, "-c", "istio-proxy").stdout
    return len(re.findall(r'"GET /common/sauth HTTP/1\.1" 200 ', log))


@pytest.mark.parametrize("sidecar", ["remora", pytest.param("envoy", marks=pytest.mark.envoy)])
def test_idle_lab_rotates_certificates_without_dropping_traffic(sidecar: str) -> None:
    with TempLab() as lab:
        session.up(lab.state_dir, LabSettings(sidecar=sidecar, cert_ttl="70s"),
                   prefix=lab.prefix, pod_ip_start=77)
        assert lab.remora("apply", "-f", "-", stdin=demo.NAMESPACES).returncode == 0
        with demo.seed_paths() as (server, client):
            for path in (server, client):
                proc = lab.remora("apply", "-f", str(path), "--wait", "--timeout", "40")
                assert proc.returncode == 0, proc.stderr
        pods = json.loads(lab.remora("get", "po", "-n", "demo-to", "-o", "json").stdout)
        pod = pods["items"][0]["metadata"]["name"]
        first = workload_serial(lab, pod)
        # 70 s from 60 s before issue: half its life is gone 5 s after issue; the timer
        # looks every 7 s
        deadline = time.monotonic() + 30
        while workload_serial(lab, pod) == first:
            assert time.monotonic() < deadline, "the certificate was not rotated"
            time.sleep(1)
        served = server_200s(lab, pod)
        deadline = time.monotonic() + 10
        while server_200s(lab, pod) < served + 2:
            assert time.monotonic() < deadline, "requests stopped after the rotation"
            time.sleep(0.5)
        client_log = lab.remora("logs", "-n", "demo-from", "-l", "web=client",
                                "--tail", "-1").stdout
        assert client_log.strip() and "err" not in client_log, client_log
        lab.close()
        assert lab.leftovers() == []
