"""The test lab itself: namespaces joined by a veth carry traffic, and go away after."""

import subprocess

import pytest

from tests.lab import CLIENT_IP, SERVER_IP, Lab

pytestmark = pytest.mark.netns


def test_pair_connects_and_cleans_up() -> None:
    with Lab(prefix="rsm") as lab:
        client, server = lab.pair()
        listener = lab.socket(server)
        listener.bind((SERVER_IP, 18080))
        listener.listen()
        conn = lab.socket(client)
        conn.connect((SERVER_IP, 18080))
        accepted, peer = listener.accept()
        assert peer[0] == CLIENT_IP
        for s in (accepted, conn, listener):
            s.close()
        names = [ns.name for ns in lab.namespaces]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names)
