"""Outbound capture in the client namespace: everyone but the proxy's group goes to 15001."""

from __future__ import annotations

import subprocess
import sys

import pytest

from remora.capture import apply
from tests.lab import SERVER_IP, Lab, Namespace
from tests.netns.capture_helpers import BACKENDS, injector_config, listener, original_dst

pytestmark = pytest.mark.netns

CONNECT = (
    "import socket, sys\n"
    "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
    "s.sendall(b'from-child')\n"
    "print(s.recv(16).decode(), flush=True)\n"
)


def _connect(lab: Lab, ns: Namespace, group: int | None) -> subprocess.Popen[bytes]:
    return lab.spawn(ns, [sys.executable, "-c", CONNECT, SERVER_IP, "18080"], group=group)


@pytest.mark.parametrize("backend", BACKENDS)
def test_proxy_group_bypasses_and_others_land_on_15001(lab: Lab, backend: list[str]) -> None:
    client, server = lab.pair()
    assert apply.apply(injector_config("REDIRECT", *backend), client.path).action == "applied"
    sidecar = listener(lab, client, 15001)
    app = listener(lab, server, 18080)

    # gid 1337 (the sidecar's own group): straight to the server, not captured.
    proxy = _connect(lab, client, group=1337)
    served, peer = app.accept()
    assert peer[0] == client.ip
    assert served.recv(10) == b"from-child"
    served.sendall(b"direct")
    out, _ = proxy.communicate(timeout=10)
    assert out.decode().strip() == "direct"
    sidecar.setblocking(False)
    with pytest.raises(BlockingIOError):
        sidecar.accept()
    sidecar.setblocking(True)
    sidecar.settimeout(5)

    # Any other process: redirected to 15001, original destination kept.
    other = _connect(lab, client, group=None)
    captured, _ = sidecar.accept()
    assert original_dst(captured) == (SERVER_IP, 18080)
    assert captured.recv(10) == b"from-child"
    captured.sendall(b"sidecar")
    out, _ = other.communicate(timeout=10)
    assert out.decode().strip() == "sidecar"
    app.setblocking(False)
    with pytest.raises(BlockingIOError):
        app.accept()
    for s in (served, captured, sidecar, app):
        s.close()
