"""Admission checks the lab's room for pods (a /24 per node), and `--wait` summarizes
repeated pod states once with a count instead of one entry per pod (issue 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from remora.errors import RemoraError
from remora.lab import manifests, progress
from remora.node import ipam
from remora.node.config import NodeConfig


def deployment(name: str, replicas: int | None, ns: str = "web") -> dict[str, object]:
    spec: dict[str, object] = {"selector": {"matchLabels": {"app": name}}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def room(nodes: int = 1, start: int = 2) -> manifests.Capacity:
    plan = NodeConfig(state_dir=Path("/nonexistent"), nodes=nodes, pod_ip_start=start).plan()
    return manifests.Capacity(nodes, ipam.pods_per_node(plan), plan.max_nodes)


def test_a_node_holds_its_24_minus_gateway_and_the_start_offset() -> None:
    assert room().per_node == 253  # .2 to .254 (the gateway .1 is below the start)
    assert room(start=77).per_node == 178  # the demo's .77 start
    assert room(nodes=3).pods == 3 * 253


def test_500_replicas_are_refused_with_the_limit_and_the_fix() -> None:
    with pytest.raises(RemoraError) as err:
        manifests.check_capacity([deployment("big", 500)], [], room())
    assert err.value.problem == ("the lab has room for 253 pods (1 node(s) x 253 addresses "
                                 "of its /24) and this would make 500 (deployment/big "
                                 "replicas: 500); nothing was applied")
    assert "`remora up --nodes 2` (253 pods each)" in (err.value.fix or "")
    manifests.check_capacity([deployment("big", 500)], [], room(nodes=2))


def test_existing_pods_count_and_a_reapplied_deployment_replaces_its_old_count() -> None:
    running = [deployment("a", 200),
               {"kind": "Pod", "metadata": {"name": "bare", "namespace": "web"}}]
    manifests.check_capacity([deployment("b", 52)], running, room())  # 200 + 1 + 52 = 253
    with pytest.raises(RemoraError, match="would make 254"):
        manifests.check_capacity([deployment("b", 53)], running, room())
    # scaling a down is no new room needed; default replicas are 1
    manifests.check_capacity([deployment("a", 100), deployment("b", 152)], running, room())
    assert manifests.pods_wanted([deployment("c", None)], []) == (1, [])


def test_more_than_the_address_plan_holds_names_the_hard_limit() -> None:
    small = manifests.Capacity(nodes=1, per_node=252, max_nodes=2)
    with pytest.raises(RemoraError) as err:
        manifests.check_capacity([deployment("huge", 1000)], [], small)
    assert "at most 504 pods fit in 2 nodes" in (err.value.fix or "")


def test_repeated_states_are_summarized_once_with_a_count() -> None:
    message = "Pending (node 1 has no free pod address left in 10.20.0.0/24)"
    states = [(f"big-{i}", message) for i in range(249)] + [("big-x", "CrashLoopBackOff")]
    line = progress.summarize(states)
    assert line == f"249 pods {message}, e.g. big-0, big-1, ...; big-x CrashLoopBackOff"
    assert len(line) < 200
    assert progress.first_of([f"pod p{i} is not Ready" for i in range(10)]) == (
        "pod p0 is not Ready; pod p1 is not Ready; pod p2 is not Ready; and 7 more")
