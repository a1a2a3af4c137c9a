"""`remora --version` names the copy of remora that runs and its interpreter: with one
.venv per clone (scripts/install), that is how a user and the install tell two clones'
`remora` apart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import remora
from remora import native


def version(**env: str) -> list[str]:
    e = {k: v for k, v in os.environ.items() if k != "REMORA_PURE"}
    return subprocess.run([sys.executable, "-m", "remora", "--version"], capture_output=True,
                          text=True, timeout=60, check=True, env={**e, **env}
                          ).stdout.strip().splitlines()


def test_version_names_the_running_copy_and_interpreter() -> None:
    out = version()
    assert out[0] == (f"remora, version {remora.__version__} from "
                      f"{Path(remora.__file__).parent} (python {sys.executable})")


def test_version_says_whether_the_native_build_runs() -> None:
    """Its second line: the proxy's mypyc-compiled modules in use, or why not
    (remora/native.py); REMORA_PURE=1 forces the pure Python."""
    _, why = native.check()
    assert version()[1] == f"native: {why}"
    assert version(REMORA_PURE="1")[1] == "native: no (REMORA_PURE is set)"
