"""TPROXY mode: original destination kept, and the client's address usable upstream.

This is the kernel half of "the server sees the client's IP": the TPROXY rule hands the
connection to a transparent listener on 15006 with the original destination as its local
address, and a socket bound to the client's address (IP_TRANSPARENT + SO_MARK 1337, what
Envoy's original_src does) reaches the app, whose replies come back through the CONNMARK
rules and the `fwmark 1337 lookup 133` policy route.
"""

from __future__ import annotations

import socket

import pytest

from remora.capture import apply
from tests.lab import CLIENT_IP, SERVER_IP, Lab
from tests.netns.capture_helpers import BACKENDS, IP_TRANSPARENT, injector_config, ip, listener

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("backend", BACKENDS)
def test_tproxy_capture_and_original_source(lab: Lab, backend: list[str]) -> None:
    client, server = lab.pair()
    config = injector_config("TPROXY", *backend)
    assert apply.apply(config, server.path).action == "applied"
    assert "fwmark 0x539 lookup 133" in ip(lab, server, "rule")
    assert "local default dev lo" in ip(lab, server, "route", "show", "table", "133")

    sidecar = listener(lab, server, 15006, transparent=True)
    app = lab.socket(server)
    app.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    app.bind((SERVER_IP, 18080))
    app.listen(8)
    app.settimeout(5)

    # The client connects to the app's port; TPROXY delivers it to the sidecar instead.
    conn = lab.socket(client)
    conn.settimeout(5)
    conn.connect((SERVER_IP, 18080))
    downstream, peer = sidecar.accept()
    assert downstream.getsockname() == (SERVER_IP, 18080)  # original destination
    assert peer[0] == CLIENT_IP
    app.setblocking(False)
    with pytest.raises(BlockingIOError):
        app.accept()  # the app did not get the client's connection directly
    app.setblocking(True)
    app.settimeout(5)

    # The sidecar's upstream connection, bound to the client's address (original_src).
    upstream = lab.socket(server)
    upstream.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    upstream.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(config.inbound_tproxy_mark))
    upstream.bind((CLIENT_IP, 0))
    upstream.settimeout(5)
    upstream.connect((SERVER_IP, 18080))
    served, app_peer = app.accept()
    assert app_peer[0] == CLIENT_IP  # the app sees the client's IP, not 127.0.0.6
    served.sendall(b"pong")  # the reply must find its way back to the transparent socket
    assert upstream.recv(4) == b"pong"

    # And end to end: relay the app's bytes to the real client.
    downstream.sendall(b"hello")
    assert conn.recv(5) == b"hello"
    for s in (served, upstream, downstream, conn, app, sidecar):
        s.close()


def test_tproxy_cleanup_removes_routing(lab: Lab) -> None:
    _, server = lab.pair()
    config = injector_config("TPROXY")
    apply.apply(config, server.path)
    apply.cleanup(config, server.path)
    assert "lookup 133" not in ip(lab, server, "rule")
    assert ip(lab, server, "route", "show", "table", "all", "type", "local").count("table 133") == 0
