"""An AuthorizationPolicy reaches a client that keeps its connection alive (a QA finding:
a DENY applied while the seed's client kept calling through its sidecar every second was
never enforced, 200 after 200: the pooled sidecar-to-sidecar connection kept the server
sidecar's old filter chain forever).

The lab's sidecars run with Istio's --drain-time-s 45 --drain-strategy immediate
(lab/sidecar.py), and an LDS update drains the filter chains it replaced (docs/proxy.md
"Draining"): the old connection's next response closes it, the client's next request
arrives on a new connection, under the new chain, and is denied -- within seconds, well
before the drain time is over. Per sidecar (remora proxy, real Envoy)."""

from __future__ import annotations

import time

import pytest

from remora.lab import demo
from remora.lab.settings import LabSettings
from remora.lab.testing import TempLab

pytestmark = pytest.mark.netns


def deny_policy(client_ip: str) -> str:
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-simple-client
  namespace: demo-to
spec:
  selector:
    matchLabels:
      web: server
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: ["{client_ip}/32"]
"""


@pytest.mark.parametrize("sidecar", ["remora", pytest.param("envoy", marks=pytest.mark.envoy)])
def test_deny_reaches_a_kept_alive_client(sidecar: str) -> None:
    with TempLab() as lab:
        r = demo.run(lab.state_dir, LabSettings(sidecar=sidecar), prefix=lab.prefix,
                     timeout=40, echo=lambda _: None)
        logs = ["logs", "-n", "demo-from", r.client_pod]
        before = lab.remora(*logs).stdout
        assert before.strip() and "RBAC" not in before, before
        applied = lab.remora("apply", "-f", "-", stdin=deny_policy(r.client_ip))
        assert applied.returncode == 0, applied.stderr
        t0 = time.monotonic()
        text = ""
        while time.monotonic() - t0 < 30:
            text = lab.remora(*logs).stdout
            if "RBAC: access denied" in text:
                break
            time.sleep(0.5)
        took = time.monotonic() - t0
        assert "RBAC: access denied" in text, text[-2000:]
        # the config's way to the sidecar plus one client interval, not the 45 s drain
        assert took < 20, took
        lab.close()
        assert lab.leftovers() == []
