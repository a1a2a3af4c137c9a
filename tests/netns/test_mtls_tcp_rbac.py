"""envoy.filters.network.rbac on a TCP port: the server sidecar closes a connection from a
source the policy does not allow, logs the matched policy in
CONNECTION_TERMINATION_DETAILS and counts tcp.rbac.denied, in REDIRECT and TPROXY, the
same on remora proxy and on Envoy."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from remora import netns
from tests import proxyharness as ph
from tests.lab import CLIENT_IP, SERVER_IP, Lab, Namespace
from tests.netns.mtls_mesh import mesh

pytestmark = pytest.mark.netns
TCP_PORT = 9000
OTHER_IP = "10.20.0.79"
# Neither a TLS record (0x16) nor an HTTP method: both inspectors decide on byte one. (A
# short text line keeps http_inspector waiting for its end, on Envoy as on remora.)
PAYLOAD = b"\x00\x01 ping from the client\n"
ONLY_CLIENT = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: demo-to}
spec:
  rules: [{from: [{source: {ipBlocks: ["10.20.0.78"]}}]}]
"""


def exchange(ns: Namespace, source: str) -> bytes:
    sock = netns.socket_in(ns.path)
    sock.settimeout(5)
    try:
        sock.bind((source, 0))
        sock.connect((SERVER_IP, TCP_PORT))
        # No half-close: tls_inspector/http_inspector must decide on the first bytes, and
        # Envoy closes a connection whose peer shuts down before they have
        # (downstream_listener_filter_remote_close).
        sock.sendall(PAYLOAD)
        return ph.recv_all(sock)
    except OSError:
        return b""
    finally:
        sock.close()


@pytest.mark.parametrize("mode", ["redirect", "tproxy"])
@pytest.mark.parametrize("kind", ["remora", pytest.param("envoy", marks=pytest.mark.envoy)])
def test_tcp_rbac_by_source_ip(tmp_path: Path, kind: str, mode: str) -> None:
    if kind == "remora" and ph.remora_proxy_problem():
        pytest.skip(str(ph.remora_proxy_problem()))
    with Lab("mr") as lab:
        m = mesh(lab, tmp_path, kind, None, mode=mode, policies=ONLY_CLIENT, tcp_port=TCP_PORT)
        got: list[tuple[str, bytes]] = []

        def pong(conn: socket.socket) -> None:
            data = conn.recv(1024)
            got.append((conn.getpeername()[0], data))
            conn.sendall(b"pong:" + data)

        app = ph.PeerServer(m.server, TCP_PORT, pong)
        try:
            lab.run(m.client, ["ip", "addr", "add", f"{OTHER_IP}/24", "dev", "eth0"])
            assert exchange(m.client, CLIENT_IP) == b"pong:" + PAYLOAD
            assert exchange(m.client, OTHER_IP) == b""
            lines = [ph.parse_access_log(x) for x in m.server_sidecar.wait_access_log(2)]
            denied = [x for x in lines if x["downstream_remote_address"].startswith(OTHER_IP)]
            assert [x["connection_termination_details"] for x in denied] == [
                "rbac_access_denied_matched_policy[none]"], lines
            stats = m.server_sidecar.stats()
            assert stats["tcp.rbac.denied"] == 1 and stats["tcp.rbac.allowed"] == 1
            # only the allowed connection's bytes reached the app; the source it sees depends
            # on the mode. (Envoy's tcp_proxy opens the upstream connection before RBAC
            # decides on the first byte, so under Envoy the app also sees an empty
            # connection from the denied peer; remora decides first and never connects.)
            seen = "127.0.0.6" if mode == "redirect" else CLIENT_IP
            assert [(ip, data) for ip, data in got if data] == [(seen, PAYLOAD)]
            if kind == "remora":
                assert len(app.peers) == 1
        finally:
            app.close()
