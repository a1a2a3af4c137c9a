#!/usr/bin/env python3
"""Compiles the proxy's hot modules (remora.native.MODULES) with mypyc into build/native/.

    python3 scripts/build_native.py [--force] [--quiet]

Writes the C extensions and stamp.json (remora/native.py reads it) into build/native/ of
this clone, never into src/: a module edited after the build runs as Python until the next
build. Nothing is rebuilt when the stamp already matches the sources (--force rebuilds).
Needs mypy (mypyc), setuptools, a C compiler and the Python headers; exits 1 with one line
on stderr when the build fails. The new build replaces the old one only once it is whole.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

CLONE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CLONE / "src"))
os.environ["REMORA_PURE"] = "1"  # this process imports remora.native only for its lists

from remora import native  # noqa: E402


def module_path(name: str) -> Path | None:
    base = native.SRC.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def imports(path: Path, name: str) -> set[str]:
    """The remora modules ``path`` (module ``name``) imports, anywhere in it (functions,
    TYPE_CHECKING blocks): what mypy reads to type it, so what mypyc's code depends on."""
    out: set[str] = set()
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m == "remora" or m.startswith("remora.")}


def closure(modules: tuple[str, ...]) -> list[str]:
    """Every remora source file the modules depend on, with their packages' __init__s,
    as paths relative to src/."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_path(name)
        if path is None:  # `from pkg import function`: not a module
            continue
        seen[name] = path
        todo.extend(imports(path, name))
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)
    return sorted(str(p.relative_to(native.SRC)) for p in seen.values())


def mypy_version() -> str:
    from mypy.version import __version__

    return __version__


def build(out: Path, files: list[str], quiet: bool) -> None:
    from mypyc.build import mypycify
    from setuptools import Distribution  # type: ignore[import-untyped]

    work = out.with_name(out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    paths = [str(module_path(m).relative_to(CLONE)) for m in native.MODULES]  # type: ignore[union-attr]
    log = io.StringIO()
    old = os.getcwd()
    os.chdir(CLONE)  # mypy reads pyproject.toml's [tool.mypy] from here
    try:
        with contextlib.redirect_stdout(log) if quiet else contextlib.nullcontext():
            exts = mypycify(paths, opt_level="3", group_name=native.GROUP,
                            target_dir=str(work / "c"))
            dist = Distribution({"name": "remora_native", "ext_modules": exts})
            cmd = dist.get_command_obj("build_ext")
            cmd.build_lib = str(work / "lib")
            cmd.build_temp = str(work / "tmp")
            dist.run_command("build_ext")
    finally:
        os.chdir(old)
    lib = work / "lib"
    stamp = {"python": native.python_tag(), "mypy": mypy_version(),
             "modules": list(native.MODULES), "files": files,
             "hash": native.source_hash(files), "built": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                    time.gmtime())}
    (lib / native.STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    old_out = out.with_name(out.name + ".old")
    shutil.rmtree(old_out, ignore_errors=True)
    if out.exists():
        out.rename(old_out)
    lib.rename(out)
    shutil.rmtree(old_out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when current")
    ap.add_argument("--quiet", action="store_true", help="only the result line")
    ap.add_argument("--out", type=Path, default=native.BUILD, help=argparse.SUPPRESS)
    args = ap.parse_args()
    files = closure(native.MODULES)
    _, status = native.check(args.out)
    if status.startswith("yes") and not args.force:
        print(f"native build: current ({status}, {args.out})")
        return 0
    started = time.monotonic()
    try:
        build(args.out, files, args.quiet)
    except (Exception, SystemExit) as e:  # setuptools reports a compiler failure as SystemExit
        shutil.rmtree(args.out.with_name(args.out.name + ".work"), ignore_errors=True)
        print(f"native build failed ({type(e).__name__}: {str(e).strip()[:200]})",
              file=sys.stderr)
        return 1
    _, status = native.check(args.out)
    print(f"native build: {status}, {len(files)} source files hashed, "
          f"{time.monotonic() - started:.0f} s, {args.out}")
    return 0 if status.startswith("yes") else 1


if __name__ == "__main__":
    sys.exit(main())
