"""The mypyc build of the proxy's hot modules (remora/native.py, scripts/build_native.py): a
process uses it only while it matches the sources, and it answers as the Python does.

The build itself takes a minute, so these tests use the clone's own build/native (made by
scripts/install or scripts/build_native.py) and skip when there is none or it is stale.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from remora import native

CLONE = native.SRC.parent
# tests that patch compiled classes or functions: skipped in a compiled process, run here
PURE_ONLY_FILES = ("tests/unit/proxy/http/test_in_flight.py",
                   "tests/unit/proxy/http2/test_in_flight.py",
                   "tests/unit/proxy/http2/test_trailers.py",
                   "tests/unit/proxy/http2/test_early_response.py")
_FILES, _STATUS = native.check()
needs_build = pytest.mark.skipif(
    _FILES is None, reason=f"no current native build ({_STATUS}): scripts/build_native.py")

# what a process reports: its mode and where remora.proxy.http.codec came from
PROBE = ("import remora.native as n, remora.proxy.http.codec as c, remora.proxy.http.headers as h;"
         "print(n.status()); print(c.__file__); print(h.__file__)")


def probe(src: Path, **env: str) -> list[str]:
    e = {k: v for k, v in os.environ.items() if k != "REMORA_PURE"}
    e.update(env, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, "-c", PROBE], env=e, capture_output=True, text=True,
                         timeout=60, check=True, cwd="/")
    return out.stdout.splitlines()


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of this clone's src/ and build/native/, side by side as in a clone."""
    shutil.copytree(native.SRC / "remora", tmp_path / "src" / "remora",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(native.BUILD, tmp_path / "build" / "native")
    return tmp_path


@needs_build
def test_a_current_build_is_used_and_an_edited_source_runs_pure(copy: Path) -> None:
    src = copy / "src"
    status, codec, hcm = probe(src)
    assert status == f"yes ({len(native.MODULES)} modules)"
    assert codec.startswith(str(copy / "build" / "native")) and codec.endswith(".so")
    assert hcm.endswith(".so")
    # REMORA_PURE: the same build left alone
    status, codec, _ = probe(src, REMORA_PURE="1")
    assert (status, codec) == ("no (REMORA_PURE is set)", str(src / "remora/proxy/http/codec.py"))
    # a file outside what the compiled modules import changes nothing
    cli = src / "remora" / "cli" / "main.py"
    cli.write_text(cli.read_text() + "\n# edited\n")
    assert probe(src)[0].startswith("yes (")
    # an edit to a compiled module: every module is the Python source again, at once
    path = src / "remora" / "proxy" / "http" / "codec.py"
    original = path.read_text()
    path.write_text(original + "\n# edited\n")
    status, codec, hcm = probe(src)
    assert status == "no (stale: the sources changed since the build)"
    assert (codec, hcm) == (str(path), str(src / "remora/proxy/http/headers.py"))
    # undone: the build matches again
    path.write_text(original)
    assert probe(src)[0].startswith("yes (")
    # a file the compiled ones import (their code depends on it) counts too
    dep = src / "remora" / "proxy" / "http" / "__init__.py"
    dep.write_text(dep.read_text() + "\n# edited\n")
    assert probe(src)[0] == "no (stale: the sources changed since the build)"


@needs_build
def test_a_build_for_another_python_or_module_list_is_refused(copy: Path) -> None:
    stamp = copy / "build" / "native" / native.STAMP
    text = stamp.read_text()
    stamp.write_text(text.replace(native.python_tag(), "cpython-399 3.99.0"))
    assert probe(copy / "src")[0] == (
        f"no (built for Python cpython-399 3.99.0, this is {native.python_tag()})")
    stamp.write_text(text.replace('"remora.proxy.http.codec"', '"remora.proxy.http.cors"'))
    assert probe(copy / "src")[0] == "no (stale: built for another module list)"
    stamp.unlink()
    assert probe(copy / "src")[0] == "no (not built: scripts/build_native.py)"


@needs_build
def test_the_pure_codec_and_stream_tests_pass_too() -> None:
    """This suite runs compiled when the build is current; the HTTP/1.1 codec's and the
    connection manager's own tests once more as pure Python, in one subprocess (both
    forms of the code answer alike), with the tests that patch a compiled module and are
    skipped when it is (native_mode.py)."""
    tests = ["tests/unit/proxy/http/test_codec_framing.py",
             "tests/unit/proxy/http/test_codec_state.py",
             "tests/unit/proxy/http/test_header_map.py",
             "tests/unit/proxy/http/test_hcm_stats.py", *PURE_ONLY_FILES]
    env = dict(os.environ, REMORA_PURE="1", PYTHONPATH=str(native.SRC))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "no:xdist", *tests], env=env, cwd=CLONE, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.stdout.splitlines()[-1]
