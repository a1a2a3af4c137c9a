"""A pod calling its own Service through its own sidecar, on either sidecar and in either
interception mode, as on Istio.

The sidecar's upstream connection to its own pod IP leaves through `lo`. In REDIRECT mode
istio-iptables sends it back to the inbound listener by `-A ISTIO_OUTPUT ! -d 127.0.0.1/32
-o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT`, which only a uid 1337 sidecar
matches (a uid 0 / gid 1337 one is let straight to the app by `-o lo -m owner !
--uid-owner 1337 -j RETURN`: the app then got the outbound mTLS handshake, 503 UF
WRONG_VERSION_NUMBER). In TPROXY mode the sidecar is uid 0 / gid 1337 (Istio's injection
template) and the mangle OUTPUT rules mark the connection 1338 by uid *or* gid, which
PREROUTING's TPROXY rule then takes to 15006 (istio/istio#31165). Either way the request
shows in the sidecar's access log twice, outbound then inbound. The app's own call to its
pod IP is not captured in either mode (uid 0: the `-o lo` RETURN rules), so the app sees
its own address.
"""

from __future__ import annotations

import json
import re
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from remora.lab.testing import TempLab

pytestmark = pytest.mark.netns

IMAGES = 'images: {nginx: "python3 -m http.server 80"}\n'


def manifest(mode: str) -> str:
    annotations = ("      annotations: {sidecar.istio.io/interceptionMode: TPROXY}\n"
                   if mode == "TPROXY" else "")
    return textwrap.dedent("""\
        apiVersion: v1
        kind: Namespace
        metadata: {name: web, labels: {istio-injection: enabled}}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web, namespace: web}
        spec:
          selector: {matchLabels: {app: web}}
          template:
            metadata:
              labels: {app: web}
        """) + annotations + textwrap.dedent("""\
            spec:
              containers:
              - {name: web, image: nginx}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: web}
        spec:
          selector: {app: web}
          ports: [{port: 80, name: http}]
        """)


@pytest.fixture
def lab() -> Iterator[TempLab]:
    with TempLab() as lab:
        yield lab
        lab.close()
        assert lab.leftovers() == []


def ok(lab: TempLab, *args: str) -> str:
    proc = lab.remora(*args)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def fs_ids(pid: int) -> tuple[int, int]:
    """The fsuid/fsgid iptables' owner match tests (the 4th value of Uid:/Gid:)."""
    lines = dict(line.split(":", 1) for line in
                 Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(lines["Uid"].split()[3]), int(lines["Gid"].split()[3])


def waited_log(lab: TempLab, pod: str, container: str, needle: str, count: int) -> list[str]:
    """The container's log lines holding NEEDLE, once there are COUNT of them (Envoy
    flushes its access log every second)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in ok(lab, "logs", "-n", "web", pod, "-c", container)
                 .splitlines() if needle in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


@pytest.mark.parametrize("mode", ["REDIRECT", "TPROXY"])
@pytest.mark.parametrize("sidecar", ["remora", pytest.param("envoy", marks=pytest.mark.envoy)])
def test_a_pod_calls_its_own_service_through_its_sidecar(
        lab: TempLab, tmp_path: Path, sidecar: str, mode: str) -> None:
    (tmp_path / "imap.yaml").write_text(IMAGES)
    (tmp_path / "web.yaml").write_text(manifest(mode))
    ok(lab, *lab.up_args(), "--sidecar", sidecar, "--image-map", str(tmp_path / "imap.yaml"),
       "-f", str(tmp_path / "web.yaml"), "--wait", "--timeout", "40")
    [pod] = json.loads(ok(lab, "get", "po", "-n", "web", "-o", "json"))["items"]
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    pids = {c["name"]: c["remora"]["pid"] for c in pod["status"]["containerStatuses"]}
    # Istio's injected securityContext: runAsUser 1337 (REDIRECT) or 0 (TPROXY), group 1337
    assert fs_ids(pids["istio-proxy"]) == ((1337, 1337) if mode == "REDIRECT" else (0, 1337))

    rid = str(uuid.uuid4())
    code = ok(lab, "exec", "-n", "web", name, "--", "curl", "-s", "-m", "10", "-o",
              "/dev/null", "-w", "%{http_code}", "-H", f"x-request-id: {rid}",
              "http://web.web/")
    assert code == "200"
    outbound, inbound = sorted(waited_log(lab, name, "istio-proxy", rid, 2),
                               key=lambda line: "inbound|" in line)
    assert '" 200 ' in outbound and "outbound|80||web.web.svc.cluster.local" in outbound
    assert '" 200 ' in inbound and "inbound|80||" in inbound
    # who the app saw: the inbound sidecar's 127.0.0.6 in REDIRECT mode; with TPROXY's
    # original_src, the caller's address, which is this pod's own
    seen = "127.0.0.6" if mode == "REDIRECT" else ip
    assert re.search(rf"inbound\|80\|\| {re.escape(seen)}:\d+ ", inbound), inbound
    app = waited_log(lab, name, "web", '"GET / HTTP/1.1" 200', 1)
    assert [line.split()[0] for line in app] == [seen]

    # the app's own call to its pod IP is not captured (uid 0 over lo): it sees itself
    code = ok(lab, "exec", "-n", "web", name, "--", "curl", "-s", "-m", "10", "-o",
              "/dev/null", "-w", "%{http_code}", f"http://{ip}/")
    assert code == "200"
    app = waited_log(lab, name, "web", '"GET / HTTP/1.1" 200', 2)
    assert [line.split()[0] for line in app] == [seen, ip]
    time.sleep(1.5)  # past Envoy's 1 s access-log flush: a line for it would be there
    assert len(waited_log(lab, name, "istio-proxy", '"GET / HTTP/1.1"', 2)) == 2
