"""gRPC on an unnamed Service port, with real Envoy sidecars: the port is sniffed, and
its clusters follow the downstream's protocol (Istio's setUseDownstreamProtocol,
docs/controlplane.md), so the client's h2c call goes on as HTTP/2 to the server sidecar
and from there to the gRPC server, which answers (an HTTP/1.1 hop would be refused by
grpcio). The gRPC seed of `remora demo --grpc`, its Service port's name removed."""

from __future__ import annotations

import re
import time
from importlib import resources as package_files

import pytest

from remora.lab import demo, session
from remora.lab.testing import TempLab

pytestmark = [pytest.mark.netns, pytest.mark.envoy]


def unnamed_port_manifest() -> str:
    text = (package_files.files("remora.lab") / "grpc" / "grpc-server.yaml").read_text()
    assert "  - name: grpc\n    port: 18080\n" in text
    return text.replace("  - name: grpc\n    port: 18080\n", "  - port: 18080\n")


def wait_log(lab: TempLab, namespace: str, pattern: str, timeout: float = 40) -> str:
    node = session.connect(lab.state_dir)
    deadline = time.monotonic() + timeout
    while True:
        pods = [p["metadata"]["name"] for p in node.get("Pod", namespace)
                if "deletionTimestamp" not in p["metadata"]]
        text = "".join(node.logs(namespace, name, "demo")["text"] for name in pods)
        found = re.search(pattern, text)
        if found:
            return found.group(0)
        assert time.monotonic() < deadline, f"{namespace} never logged {pattern}: {text[-800:]}"
        time.sleep(0.3)


@pytest.mark.parametrize("mtls", [False, True], ids=["plaintext", "mtls"])
def test_grpc_on_an_unnamed_port_goes_on_as_http2(mtls: bool) -> None:
    with TempLab() as lab:
        def ok(*args: str, stdin: str | None = None) -> str:
            done = lab.remora(*args, stdin=stdin)
            assert done.returncode == 0, f"remora {' '.join(args)}: {done.stderr}"
            return done.stdout
        ok("up", "--prefix", lab.prefix, "--pod-ip-start", "77", "--sidecar", "envoy",
           "--mtls" if mtls else "--no-mtls")
        ok("apply", "-f", "-", stdin=demo.NAMESPACES)
        ok("apply", "-f", "-", "--wait", "--timeout", "40", stdin=unnamed_port_manifest())
        with package_files.as_file(package_files.files("remora.lab") / "grpc" /
                                   "grpc-client.yaml") as client:
            ok("apply", "-f", str(client), "--wait", "--timeout", "40")
        # the call works end to end: the client gets grpc-status 0, the server logs the
        # peer its sidecar's inbound cluster binds (REDIRECT: 127.0.0.6)
        wait_log(lab, "demo-from", r"status=OK code=0")
        wait_log(lab, "demo-to", r"Peer=ipv4:127\.0\.0\.6:\d+")
        server = next(p["metadata"]["name"] for p in session.connect(lab.state_dir).get(
            "Pod", "demo-to") if "deletionTimestamp" not in p["metadata"])
        sidecar = session.connect(lab.state_dir).logs("demo-to", server, "istio-proxy")["text"]
        # the server sidecar got HTTP/2 from the client's and passed it on (inbound|18080||)
        assert re.search(r'"POST /remora\.demo\.Simple/Sauth HTTP/2" 200 .* inbound\|18080\|\| '
                         r"127\.0\.0\.6:\d+ ", sidecar), sidecar[-1500:]
        lab.close()
        assert lab.leftovers() == []
