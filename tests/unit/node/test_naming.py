from __future__ import annotations

import pytest

from remora.errors import UsageError
from remora.node import naming


def test_names_carry_the_prefix_and_fit_interface_limits() -> None:
    assert naming.node_name("remora-", 1) == "remora-node-1"
    assert naming.fabric_name("remora-") == "remora-fabric"
    pod = naming.pod_netns("remora-", "uid-1")
    assert pod.startswith("remora-pod-") and pod == naming.pod_netns("remora-", "uid-1")
    assert pod != naming.pod_netns("remora-", "uid-2")
    assert len(naming.pod_veth("uid-1")) <= naming.IFNAMSIZ
    assert len(naming.BRIDGE) <= naming.IFNAMSIZ


def test_is_ours_only_matches_the_lab_patterns() -> None:
    assert naming.is_ours("remora-", "remora-node-2")
    assert naming.is_ours("remora-", naming.pod_netns("remora-", "u"))
    assert naming.is_ours("remora-", "remora-fabric")
    assert not naming.is_ours("remora-", "remora-other")
    assert not naming.is_ours("remora-", "rt12node-1")
    assert not naming.is_ours("rn1-", "remora-node-1")


def test_bad_prefix_is_refused() -> None:
    for bad in ("", "Remora", "a/b", "x" * 30, "-x"):
        with pytest.raises(UsageError):
            naming.check_prefix(bad)
    assert naming.check_prefix("rn123x4-") == "rn123x4-"


def test_pod_suffix_and_chain_hash_look_like_kubernetes() -> None:
    suffix = naming.pod_suffix("seed")
    assert len(suffix) == 5 and set(suffix) <= set("bcdfghjklmnpqrstvwxz2456789")
    chain = naming.chain_hash("demo-to/simple-server-svc", "tcp")
    assert len(chain) == 16 and set(chain) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    assert chain == naming.chain_hash("demo-to/simple-server-svc", "tcp")
