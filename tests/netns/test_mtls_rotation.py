"""Certificate rotation without dropping connections.

A mesh client (here a plain Python TLS client holding the client workload's certificate,
speaking to the server sidecar's mTLS TCP chain with Istio's TCP ALPN) keeps one
connection open while the CA replaces the server's certificate: the open connection keeps
working, and the next handshake presents the new certificate (new serial). Checked on
remora proxy and on Envoy, which both reload from the SDS/PEM files the CA replaces.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509

from remora import netns
from tests import proxyharness as ph
from tests.lab import SERVER_IP, Lab
from tests.netns.mtls_mesh import Mesh, mesh

pytestmark = pytest.mark.netns
TCP_PORT = 9000


def _echo(conn: socket.socket) -> None:
    while True:
        data = conn.recv(1024)
        if not data:
            return
        conn.sendall(data)


def _connect(m: Mesh) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(m.client_certs / "root-cert.pem"))
    ctx.load_cert_chain(str(m.client_certs / "cert-chain.pem"), str(m.client_certs / "key.pem"))
    ctx.set_alpn_protocols(["istio-peer-exchange", "istio"])
    raw = netns.socket_in(m.client.path)
    raw.settimeout(5)
    raw.connect((SERVER_IP, TCP_PORT))
    return ctx.wrap_socket(raw, server_hostname="outbound_.9000_._.simple-server-svc.demo-to"
                                                ".svc.cluster.local")


def _serial(s: ssl.SSLSocket) -> int:
    der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _roundtrip(s: ssl.SSLSocket, data: bytes) -> bytes:
    s.sendall(data)
    return s.recv(1024)


@pytest.mark.parametrize("kind", ["remora", pytest.param("envoy", marks=pytest.mark.envoy)])
def test_rotation_keeps_open_connections_and_serves_the_new_cert(tmp_path: Path,
                                                                 kind: str) -> None:
    if kind == "remora" and ph.remora_proxy_problem():
        pytest.skip(str(ph.remora_proxy_problem()))
    with Lab("mo") as lab:
        m = mesh(lab, tmp_path, kind, None, tcp_port=TCP_PORT)
        app = ph.PeerServer(m.server, TCP_PORT, _echo)
        try:
            first = _connect(m)
            assert _roundtrip(first, b"\x00one") == b"\x00one"
            old = _serial(first)
            m.ca.write_workload(m.server_certs, m.ca.issue("demo-to"))
            deadline = time.monotonic() + 10
            new = old
            while new == old and time.monotonic() < deadline:
                time.sleep(0.2)
                probe = _connect(m)
                new = _serial(probe)
                assert _roundtrip(probe, b"\x00probe") == b"\x00probe"
                probe.close()
            assert new != old, "the sidecar still presents the old certificate"
            assert _roundtrip(first, b"\x00two") == b"\x00two"  # not dropped
            first.close()
        finally:
            app.close()
