"""Pod references: NAME, pod/NAME, deploy/NAME, NAME.NAMESPACE."""

from __future__ import annotations

from typing import Any

import pytest

from remora.errors import RemoraError
from remora.lab.pods import resolve_pod, split_dotted


class FakeClient:
    def __init__(self, pods: list[dict[str, Any]],
                 deployments: list[dict[str, Any]] | None = None) -> None:
        self.pods = pods
        self.deployments = deployments or []

    def get(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        if kind == "Deployment":
            return self.deployments
        assert kind == "Pod"
        return [p for p in self.pods if p["metadata"]["namespace"] == namespace]


def pod(name: str, owner: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "demo-to",
                            "ownerReferences": [{"kind": "Deployment", "name": owner}]}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta}


def test_references() -> None:
    client: Any = FakeClient([pod("simple-server-a-old", "simple-server", deleting=True),
                              pod("simple-server-b-new", "simple-server")])
    assert resolve_pod(client, "demo-to", "x") == "x"
    assert resolve_pod(client, "demo-to", "pod/x") == "x"
    assert resolve_pod(client, "demo-to", "deploy/simple-server") == "simple-server-b-new"
    assert resolve_pod(client, "demo-to", "deployment/simple-server") == "simple-server-b-new"
    with pytest.raises(RemoraError, match=r'deployments\.apps "other" not found'):
        resolve_pod(client, "demo-to", "deploy/other")
    # a forgotten -n: where the Deployment is, not "has no pods" (kubectl: NotFound)
    client.deployments = [{"metadata": {"name": "other", "namespace": "demo-from"}},
                          {"metadata": {"name": "idle", "namespace": "demo-to"}}]
    with pytest.raises(RemoraError) as err:
        resolve_pod(client, "demo-to", "deploy/other")
    assert "(it is in demo-from)" in err.value.problem
    assert err.value.fix == "did you mean -n demo-from?"
    with pytest.raises(RemoraError, match="has no pods"):
        resolve_pod(client, "demo-to", "deploy/idle")
    with pytest.raises(RemoraError, match="does not name pods"):
        resolve_pod(client, "demo-to", "svc/simple-server-svc")
    assert split_dotted("simple-server-x.demo-to", "default") == ("simple-server-x", "demo-to")
    assert split_dotted("p", "ns") == ("p", "ns")
