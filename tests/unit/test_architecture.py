"""The import directions docs/architecture.md draws, read from the real imports.

Every ``import remora.X`` / ``from remora.X import ...`` / relative import /
``importlib.import_module("remora.X")`` in src/remora, at any depth (imports inside
functions count too), is an edge from the importing package to X. The pure packages
never reach the lab, the node runtime or the CLI; the rest goes only where the table
below (the same as the one in docs/architecture.md) says.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "remora"

# package -> the packages it may import ("remora" itself, i.e. __version__, is always
# allowed). `diagnose.evidence` is diagnose's I/O edge: the subpackage
# remora.diagnose.evidence, the evidence sources (files, the lab, a cluster's API).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "native": set(),
    "netns": {"errors"},
    "resources": {"errors"},
    "capture": {"errors", "netns"},
    "proxy": {"errors", "native"},
    "controlplane": {"errors", "resources"},
    "diagnose": {"errors", "resources", "capture", "proxy"},
    # controlplane: the live probe speaks the protocol Istio gives the port (protocol.py)
    "diagnose.evidence": {"errors", "resources", "capture", "proxy", "netns", "diagnose",
                          "node", "lab", "controlplane"},
    "apps": set(),
    "node": {"errors", "netns", "resources"},
    "lab": {"errors", "netns", "resources", "capture", "controlplane", "node"},
    "kubeapi": {"errors", "resources", "controlplane", "node", "lab"},
    "cli": {"errors", "native", "netns", "resources", "capture", "proxy", "controlplane",
            "diagnose", "diagnose.evidence", "apps", "node", "lab", "kubeapi"},
    "__main__": {"cli"},
}
PURE = ("errors", "native", "netns", "resources", "capture", "proxy", "controlplane", "diagnose",
        "apps")
RUNTIME = ("lab", "node", "cli", "diagnose.evidence", "kubeapi")


def group_of(module: str) -> str:
    """remora.diagnose.evidence.lab -> diagnose.evidence; remora.node.store -> node."""
    parts = module.split(".")
    if len(parts) < 2:
        return "remora"
    if parts[1] == "diagnose" and len(parts) > 2 and parts[2] == "evidence":
        return "diagnose.evidence"
    return parts[1]


def module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    return (SRC / name).is_dir() or (SRC / f"{name}.py").is_file()


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported remora module) for every import in SOURCE, the text of MODULE."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            # `from remora import lab` imports the package remora.lab; `from remora import
            # __version__` only the top-level module
            found += [(node.lineno, f"{target}.{a.name}" if target == "remora"
                       and _is_module(a.name) else target) for a in node.names]
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "importlib.import_module", "import_module") and node.args \
                and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            found.append((node.lineno, node.args[0].value))
    return [(line, m) for line, m in found if m == "remora" or m.startswith("remora.")]


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    here = group_of(module)
    # remora/__init__.py holds only __version__ and imports nothing of remora
    allowed = set() if here == "remora" else ALLOWED.get(here)
    if allowed is None:
        return [f"{module}: package {here!r} is not in the import table "
                "(add it to docs/architecture.md and to ALLOWED)"]
    out = []
    for line, target in imports(source, module, is_package):
        there = group_of(target)
        if there in ("remora", here) or there in allowed:
            continue
        out.append(f"{module}:{line} imports {target} ({here} -> {there})")
    return out


def source_modules() -> list[tuple[Path, str]]:
    return [(p, module_name(p)) for p in sorted(SRC.rglob("*.py"))
            if "__pycache__" not in p.parts]


def test_every_import_follows_the_table() -> None:
    modules = source_modules()
    assert len(modules) > 150
    problems = [v for path, name in modules
                for v in violations(path.read_text(), name, path.name == "__init__.py")]
    assert problems == []


def test_pure_packages_never_import_the_lab_the_node_runtime_or_the_cli() -> None:
    for pure in PURE:
        assert not ALLOWED[pure] & set(RUNTIME), pure
    hits = [f"{name}:{line} {target}" for path, name in source_modules()
            if group_of(name) in PURE
            for line, target in imports(path.read_text(), name, path.name == "__init__.py")
            if group_of(target) in RUNTIME]
    assert hits == []


def test_the_table_is_the_one_in_the_docs() -> None:
    """docs/architecture.md lists each package's allowed imports in a table; it is the
    same as ALLOWED, so the doc cannot drift from what is checked."""
    text = (REPO / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `([\w.]+)` \| ([^|]*) \|", text, re.M)
    documented = {name: set(re.findall(r"`([\w.]+)`", deps)) for name, deps in rows}
    assert documented == ALLOWED


@pytest.mark.parametrize(("module", "code"), [
    ("remora.capture.bad", "from remora.lab import session"),
    ("remora.controlplane.bad", "import remora.node.store"),
    ("remora.proxy.bad", "def f():\n    from remora.node.client import NodeClient"),
    ("remora.resources.bad", "from remora import lab"),
    ("remora.diagnose.source_ip.bad", "from remora.diagnose.evidence.lab import LiveRun"),
    ("remora.diagnose.source_ip.bad", "from ..evidence import kube"),
    ("remora.diagnose.envoy.bad", "from remora.kubeapi import server"),
    ("remora.diagnose.bad", "importlib.import_module('remora.lab.session')"),
    ("remora.node.bad", "from remora.lab.setup import MeshSetup"),
    ("remora.capture.bad", "from ..node import netlink"),
])
def test_the_check_finds_a_forbidden_import(module: str, code: str) -> None:
    assert violations(code, module) != []


@pytest.mark.parametrize(("module", "code"), [
    ("remora.controlplane.ok", "from remora.resources import selection"),
    ("remora.diagnose.evidence.ok", "from remora.node.client import NodeClient"),
    ("remora.diagnose.evidence.ok", "from remora.diagnose.source_ip.evidence import Evidence"),
    ("remora.capture.ok", "from . import model\nfrom remora import __version__"),
    ("remora.lab.ok", "from remora.controlplane.generate import generate"),
])
def test_the_check_accepts_an_allowed_import(module: str, code: str) -> None:
    assert violations(code, module) == []
