"""The one way tests reach their data: files under tests/data/, inside the repository.

Nothing in the suite reads a folder outside the checkout (a plain clone runs it all).
Where each file came from is written in tests/data/README.md; copies of third-party
material (Istio's goldens, the reference Envoy configs, the seed) keep their origin and
licence there.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def data_path(*parts: str) -> Path:
    """tests/data/<parts...>; a missing file is an error naming it, never a silent skip."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"test data {path} is missing (expected inside the repository)")
    return path
