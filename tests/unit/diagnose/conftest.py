"""Shared paths for the diagnose tests: the seed's listings (copied into data/) and the
shared reference configs and Istio goldens."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data() -> Path:
    return DATA


@pytest.fixture(scope="session")
def reference(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "envoy-sidecar"


@pytest.fixture(scope="session")
def goldens(shared_dir: Path) -> Path:
    return shared_dir / "conformance" / "istio-iptables"
