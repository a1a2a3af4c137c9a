"""The seed's story over IPv6 with a real Envoy (1.40) as every sidecar, from the same
generated files: the same observations as with `remora proxy` (test_lab_ipv6.py)."""

from __future__ import annotations

import pytest

from remora.lab.testing import TempLab
from tests.netns.test_lab_ipv6 import assert_ipv6_story, run

pytestmark = [pytest.mark.netns, pytest.mark.envoy]


def test_ipv6_demo_with_real_envoy() -> None:
    with TempLab() as lab:
        result, lines = run(lab, "envoy")
        assert lines[0].endswith("sidecar: real Envoy, IPv6")
        assert_ipv6_story(result, lines)
        lab.close()
        assert lab.leftovers() == []
