"""`remora --version` names the copy of remora that runs and its interpreter: with one
.venv per clone (scripts/install), that is how a user and the install tell two clones'
`remora` apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import remora


def test_version_names_the_running_copy_and_interpreter() -> None:
    out = subprocess.run([sys.executable, "-m", "remora", "--version"], capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    assert out == (f"remora, version {remora.__version__} from "
                   f"{Path(remora.__file__).parent} (python {sys.executable})")
