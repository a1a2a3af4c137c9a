"""The node API's answers to a pod that is not there, over a real store and runtime
(no daemon, no namespaces: nothing is started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from remora.errors import RemoraError
from remora.node.api import Api
from remora.node.config import NodeConfig
from remora.node.runtime import Runtime


async def _no_down() -> list[str]:
    return []


@pytest.mark.parametrize("op", ["logs", "exec"])
def test_a_missing_pod_names_its_namespace_in_the_fix(tmp_path: Path, op: str) -> None:
    # the fix is a command to paste: `remora get pods -n demo-to`, not "-n NAMESPACE"
    api = Api(Runtime(NodeConfig(state_dir=tmp_path)), _no_down)
    with pytest.raises(RemoraError) as err:
        api.handle({"op": op, "namespace": "demo-to", "pod": "nosuchpod"})
    assert err.value.one_line() == (
        "pod 'nosuchpod' not found in namespace 'demo-to' "
        "(fix: list pods with `remora get pods -n demo-to`)")
