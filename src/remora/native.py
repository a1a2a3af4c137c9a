"""The proxy's hot modules compiled with mypyc, used only while they match the sources.

``scripts/build_native.py`` (run by ``scripts/install``) compiles ``MODULES`` into C
extensions under ``<clone>/build/native/`` (outside ``src/``, gitignored) and writes
``stamp.json`` there: the Python version, the mypy version, the compiled modules, every
remora source file they import (transitively) and one hash of those files' contents.

``activate()`` (called by ``remora/proxy/__init__.py``, before any compiled module can be
imported) hashes the same files again; only when the hash, the Python version and the
module list all equal the stamp's does it put a finder first on ``sys.meta_path`` that
answers exactly those module names (and the mypyc group's runtime library,
``remora_native__mypyc``) with the built extensions. Otherwise, or with ``REMORA_PURE=1``,
nothing changes and every module is the Python source: an edit to a compiled module (or
to anything it imports) takes effect at once, as pure Python, until the next build.
docs/architecture.md "Native build" has the rest.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    # what mypyc reads on a compiled class (mypy resolves this name to mypy_extensions);
    # mypyc does not call it on native classes, so a compiled module needs nothing at run
    # time and the pure one the no-op below: mypy_extensions is no dependency of remora
    from mypy_extensions import mypyc_attr as mypyc_attr
else:
    _C = TypeVar("_C")

    def mypyc_attr(*attrs: str, **kwattrs: Any) -> Any:
        def keep(cls: _C) -> _C:
            return cls
        return keep

# mypyc's group name: its runtime library is the extension module f"{GROUP}__mypyc"
GROUP = "remora_native"
# where the lab path's instructions go (docs/proxy-http.md "Native build"); every module here
# is mypy-strict and compiles as it is, apart from the few changes whose comments say so
MODULES: tuple[str, ...] = (
    "remora.proxy.http.codec",
    "remora.proxy.http.codec_state",
    "remora.proxy.http.connection",
    "remora.proxy.http.filter",
    "remora.proxy.http.hcm",
    "remora.proxy.http.header_map",
    "remora.proxy.http.header_mutation",
    "remora.proxy.http.headers",
    "remora.proxy.http.pool",
    "remora.proxy.http.retry",
    "remora.proxy.http.router",
    "remora.proxy.http.stream",
    "remora.proxy.http.upstream_request",
    "remora.proxy.deferred_write",
    "remora.proxy.stats",
)
STAMP = "stamp.json"
SRC = Path(__file__).resolve().parent.parent  # the folder holding the remora package
BUILD = SRC.parent / "build" / "native"

_status: str | None = None


def source_hash(files: Sequence[str], src: Path = SRC) -> str:
    """One hash of the files (paths relative to ``src``), names and contents."""
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.encode() + b"\0")
        h.update((src / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def python_tag() -> str:
    return f"{sys.implementation.cache_tag} {sys.version.split()[0]}"


def module_file(build: Path, name: str) -> Path:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return build.joinpath(*name.split(".")).with_name(name.rsplit(".", 1)[-1] + suffix)


def check(build: Path = BUILD, src: Path = SRC) -> tuple[dict[str, str] | None, str]:
    """(module name -> extension file, "yes (N modules)") when the build in ``build``
    matches the sources in ``src``; (None, "no (why)") otherwise."""
    try:
        stamp = json.loads((build / STAMP).read_text())
    except FileNotFoundError:
        return None, "no (not built: scripts/build_native.py)"
    except (OSError, ValueError) as e:
        return None, f"no (unreadable {build / STAMP}: {e})"
    if stamp.get("python") != python_tag():
        return None, f"no (built for Python {stamp.get('python')}, this is {python_tag()})"
    if stamp.get("modules") != list(MODULES):
        return None, "no (stale: built for another module list)"
    try:
        now = source_hash(stamp["files"], src)
    except (OSError, KeyError, TypeError):
        return None, "no (stale: a source file it was built from is gone)"
    if now != stamp.get("hash"):
        return None, "no (stale: the sources changed since the build)"
    files = {name: module_file(build, name) for name in (*MODULES, GROUP + "__mypyc")}
    missing = [n for n, f in files.items() if not f.is_file()]
    if missing:
        return None, f"no (incomplete build: {missing[0]} is missing)"
    return {n: str(f) for n, f in files.items()}, f"yes ({len(MODULES)} modules)"


class _Finder(importlib.abc.MetaPathFinder):
    """Answers the compiled modules' names with their extension files, nothing else."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, file)
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def activate() -> str:
    """Uses the native build when it is current (once per process); returns the status
    ``remora --version`` prints: "yes (N modules)" or "no (why)"."""
    global _status
    if _status is not None:
        return _status
    if os.environ.get("REMORA_PURE"):
        _status = "no (REMORA_PURE is set)"
        return _status
    files, status = check()
    if files is not None:
        early = [m for m in MODULES if m in sys.modules]
        if early:  # imported as Python already: mixing the two would break isinstance
            status = f"no ({early[0]} was imported before remora.native.activate)"
        else:
            sys.meta_path.insert(0, _Finder(files))
    _status = status
    return status


def status() -> str:
    """The mode this process runs in (activating the build if nothing did yet)."""
    return activate()
