"""The dual-stack lab with a real Envoy (1.40) as every sidecar: the same observations as
with `remora proxy` (test_lab_dual_stack.py)."""

from __future__ import annotations

import pytest

from tests.netns.test_lab_dual_stack import check_dual_stack_lab

pytestmark = [pytest.mark.netns, pytest.mark.envoy]


def test_dual_stack_lab_with_real_envoy() -> None:
    check_dual_stack_lab("envoy")
