"""Paths for the diagnose tests: the seed's listings, the reference configs and Istio's
goldens, all under tests/data/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.datafiles import data_path

DATA = data_path("diagnose")


@pytest.fixture(scope="session")
def data() -> Path:
    return DATA


@pytest.fixture(scope="session")
def reference(data_dir: Path) -> Path:
    return data_dir / "reference" / "envoy-sidecar"


@pytest.fixture(scope="session")
def goldens(data_dir: Path) -> Path:
    return data_dir / "conformance" / "istio-iptables"
