"""REDIRECT mode with the injector's real args, in the server namespace, real traffic."""

from __future__ import annotations

import pytest

from remora.capture import apply
from tests.lab import SERVER_IP, Lab
from tests.netns.capture_helpers import BACKENDS, injector_config, listener, original_dst

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("backend", BACKENDS)
def test_inbound_lands_on_15006_with_original_destination(lab: Lab, backend: list[str]) -> None:
    client, server = lab.pair()
    outcome = apply.apply(injector_config("REDIRECT", *backend), server.path)
    assert outcome.action == "applied"
    inbound = listener(lab, server, 15006)
    status = listener(lab, server, 15021)

    conn = lab.socket(client)
    conn.settimeout(5)
    conn.connect((SERVER_IP, 18080))  # nothing listens on 18080: only capture can answer
    accepted, peer = inbound.accept()
    assert peer[0] == client.ip
    assert original_dst(accepted) == (SERVER_IP, 18080)
    accepted.sendall(b"hi")
    assert conn.recv(2) == b"hi"

    # 15021 is in -d (excluded): it reaches its own listener, not the sidecar.
    direct = lab.socket(client)
    direct.settimeout(5)
    direct.connect((SERVER_IP, 15021))
    got, _ = status.accept()
    assert got.getsockname() == (SERVER_IP, 15021)
    inbound.setblocking(False)
    with pytest.raises(BlockingIOError):
        inbound.accept()
    for s in (accepted, conn, direct, got, inbound, status):
        s.close()


def test_without_rules_nothing_is_captured(lab: Lab) -> None:
    """The control case: the same connection is refused when no rules are installed."""
    client, server = lab.pair()
    inbound = listener(lab, server, 15006)
    conn = lab.socket(client)
    conn.settimeout(5)
    with pytest.raises(ConnectionRefusedError):
        conn.connect((SERVER_IP, 18080))
    for s in (conn, inbound):
        s.close()
