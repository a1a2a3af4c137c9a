"""The seed's whole story with a real Envoy (1.40) as every sidecar, from the same
generated files: the same observations as with `remora proxy`."""

from __future__ import annotations

import pytest

from tests.netns.test_seed_demo import assert_seed_observations, run_demo

pytestmark = [pytest.mark.netns, pytest.mark.envoy]


def test_seed_demo_with_real_envoy() -> None:
    result, lines, left = run_demo("envoy")
    assert lines[0].endswith("sidecar: real Envoy")
    assert_seed_observations(result, lines)
    assert left == []
