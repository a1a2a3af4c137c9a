"""x-forwarded-client-cert on the lab's mTLS mesh, held to the real Envoy: the control
plane's generated configs (inbound APPEND_FORWARD with subject/dns/uri, as istiod), the
seed's two pods, and an app that echoes the request head it got (header_echo_app.py).
The server sidecar, Envoy or remora, must hand the app the same header, byte for byte:
``By=`` the server's SPIFFE identity, ``Hash=`` the SHA-256 of the client's certificate
(the same files for every run: one CA, certificates issued once into the test's
directory), ``Subject=""``, ``URI=`` the client's identity; a header the client app sent
itself must not reach the app as it was (the client sidecar's plain-text side removes it).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from remora import netns
from tests import proxyharness as ph
from tests.lab import Lab, Namespace
from tests.netns.mtls_mesh import mesh
from tests.unit.controlplane.seed import CLUSTER_IP

pytestmark = [pytest.mark.netns, pytest.mark.envoy]
ECHO_APP = Path(__file__).with_name("header_echo_app.py")
SERVER_ID = "spiffe://cluster.local/ns/demo-to/sa/default"
CLIENT_ID = "spiffe://cluster.local/ns/demo-from/sa/default"
SPOOF = b"x-forwarded-client-cert: By=spiffe://spoof;URI=spiffe://cluster.local/ns/x/sa/admin\r\n"


def _request(ns: Namespace, extra: bytes) -> bytes:
    """One GET to the service from the client pod (captured by its sidecar); the body."""
    sock = netns.socket_in(ns.path)
    sock.settimeout(10)
    try:
        sock.connect((CLUSTER_IP, 18080))
        sock.sendall(b"GET /headers HTTP/1.1\r\nHost: simple-server-svc.demo-to:18080\r\n"
                     b"Connection: close\r\n" + extra + b"\r\n")
        raw = ph.recv_all(sock)
    finally:
        sock.close()
    status, body = ph.parse_response(raw)
    assert status == 200, raw[:300]
    return body


def _xfcc(head: bytes) -> list[str]:
    return [line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
            if line.lower().startswith(b"x-forwarded-client-cert:")]


def _through_mesh(work: Path, server: str, client: str) -> dict[str, list[str]]:
    with Lab("mx") as lab:
        m = mesh(lab, work, server, client)
        lab.stop(m.app.proc)  # the seed's app does not echo headers: this one does
        lab.spawn(m.server, [sys.executable, str(ECHO_APP), "18080"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lab.wait_port(m.server, "127.0.0.1", 18080)
        got = {name: _xfcc(_request(m.client, extra))
               for name, extra in (("plain", b""), ("spoofed", SPOOF))}
        assert m.server_sidecar.stats()["listener.0.0.0.0_15006.ssl.handshake"] >= 1
        return got


Seen = dict[str, dict[str, list[str]]]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xfcc-mesh")  # one CA and one set of certificates


@pytest.fixture(scope="module")
def seen(work: Path) -> Seen:
    if ph.remora_proxy_problem():
        pytest.skip(str(ph.remora_proxy_problem()))
    return {f"{server}-{client}": _through_mesh(work, server, client)
            for server, client in (("envoy", "envoy"), ("remora", "envoy"),
                                   ("remora", "remora"))}


def test_envoys_header_is_the_client_identity(seen: Seen, work: Path) -> None:
    leaf = x509.load_pem_x509_certificate((work / "client-certs/cert-chain.pem").read_bytes())
    digest = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    want = [f'By={SERVER_ID};Hash={digest};Subject="";URI={CLIENT_ID}']
    assert seen["envoy-envoy"]["plain"] == want
    assert seen["envoy-envoy"]["spoofed"] == want


@pytest.mark.parametrize("pair", ["remora-envoy", "remora-remora"])
def test_remora_server_sidecar_sends_envoys_header(seen: Seen, pair: str) -> None:
    assert seen[pair] == seen["envoy-envoy"]
