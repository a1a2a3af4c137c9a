"""The repository stands on its own: a plain clone runs the whole suite.

Two checks, each with a test that shows it can fail:
- no Python file under src/ or tests/ builds a path that leaves the repository: every
  path expression anchored at a file of the repository (``__file__``, ``pkg.__file__``)
  is evaluated from the file's real location (``.parent``, ``.parents[N]``,
  ``os.path.dirname``, ``/ ".."``, ``joinpath``, ``os.path.join``, through variables)
  and must stay inside the checkout; and no string literal names the steering
  repository's ``shared/`` folder or a ``/work/`` path;
- a parametrized suite marked ``@pytest.mark.cases(N)`` that collects a different number
  of cases is a collection error (tests/collection_checks.py), not a skip.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[2]
PATH_FUNCS = {"Path", "PurePath", "PosixPath", "PurePosixPath"}
# A literal that is a path (no spaces) and names the steering repo's folder or /work/.
OUTSIDE_LITERAL = re.compile(r"^(?:/work/\S*|(?:\S*/)?shared(?:/\S*)?|\S*/shared)$")


def _norm(path: PurePosixPath) -> PurePosixPath:
    return PurePosixPath(os.path.normpath(str(path)))


class _PathEval:
    """Evaluates path expressions of one file whose value is known from its location."""

    def __init__(self, file: Path, repo: Path) -> None:
        self.file = PurePosixPath(file)
        self.repo = PurePosixPath(repo)
        self.names: dict[str, PurePosixPath] = {}

    def module_file(self, dotted: str) -> PurePosixPath | None:
        base = self.repo / "src" / Path(*dotted.split("."))
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if Path(candidate).exists():
                return candidate
        tests = self.repo / Path(*dotted.split("."))
        for candidate in (tests / "__init__.py", tests.with_suffix(".py")):
            if Path(candidate).exists():
                return candidate
        return None

    def value(self, node: ast.expr) -> PurePosixPath | None:
        if isinstance(node, ast.Name):
            return self.file if node.id == "__file__" else self.names.get(node.id)
        if isinstance(node, ast.Attribute):
            if node.attr == "__file__":
                dotted = ast.unparse(node.value)
                return self.module_file(dotted)
            base = self.value(node.value)
            if base is not None and node.attr == "parent":
                return _norm(base / "..")
            return None
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "parents" and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, int):
            base = self.value(node.value.value)
            if base is None:
                return None
            return _norm(base.joinpath(*[".."] * (node.slice.value + 1)))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            base = self.value(node.left)
            if base is not None and isinstance(node.right, ast.Constant) \
                    and isinstance(node.right.value, str):
                return _norm(base / node.right.value)
            return None
        if isinstance(node, ast.Call):
            return self.call(node)
        return None

    def call(self, node: ast.Call) -> PurePosixPath | None:
        func = ast.unparse(node.func)
        name = func.rsplit(".", 1)[-1]
        args = node.args
        if name in PATH_FUNCS and args:
            first = self.value(args[0])
            return None if first is None else self.joined(first, args[1:])
        if func in ("os.path.dirname", "dirname") and len(args) == 1:
            base = self.value(args[0])
            return None if base is None else _norm(base / "..")
        if func in ("os.path.abspath", "os.path.realpath", "os.path.normpath") and args:
            return self.value(args[0])
        if func == "os.path.join" and args:
            first = self.value(args[0])
            return None if first is None else self.joined(first, args[1:])
        if isinstance(node.func, ast.Attribute):
            base = self.value(node.func.value)
            if base is None:
                return None
            if node.func.attr in ("resolve", "absolute", "expanduser"):
                return base
            if node.func.attr == "joinpath":
                return self.joined(base, args)
        return None

    def joined(self, base: PurePosixPath, parts: list[ast.expr]) -> PurePosixPath | None:
        for part in parts:
            if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                return base  # an unknown part cannot climb with a literal ".."
            base = _norm(base / part.value)
        return base


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def escapes(source: str, file: Path, repo: Path = REPO) -> list[str]:
    """Each place in SOURCE (the text of FILE) that reaches outside REPO, as 'LINE: why'."""
    tree = ast.parse(source)
    ev = _PathEval(file, repo)
    found: list[str] = []
    repo_root = PurePosixPath(repo)
    docs = _docstrings(tree)
    # Assignments first (in source order), so names used later have their values.
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = ev.value(node.value)
            for target in targets:
                if isinstance(target, ast.Name) and value is not None:
                    ev.names[target.id] = value
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docs and OUTSIDE_LITERAL.match(node.value):
            found.append(f"{node.lineno}: literal {node.value!r} names a folder outside "
                         "the repository")
        elif isinstance(node, ast.expr):
            value = ev.value(node)
            if value is not None and value != repo_root and repo_root not in value.parents:
                found.append(f"{node.lineno}: {ast.unparse(node)} is {value}, outside "
                             f"{repo_root}")
    return found


def python_files() -> list[Path]:
    return sorted(p for top in ("src", "tests") for p in (REPO / top).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_the_repository_has_its_source_and_tests() -> None:
    files = python_files()
    assert REPO / "src/remora/__init__.py" in files and REPO / "tests/conftest.py" in files
    assert len(files) > 200


def test_no_file_under_src_or_tests_reaches_outside_the_repository() -> None:
    problems = [f"{p.relative_to(REPO)}:{line}" for p in python_files()
                for line in escapes(p.read_text(), p)]
    assert problems == []


# The steering repo's folder name is spliced in (OUTSIDE) so that a plain grep for it over
# src/ and tests/ (the repository's own pre-stop check) finds only real reads, not these
# examples of what the check must flag.
OUTSIDE = "sha" + "red"


@pytest.mark.parametrize("code", [
    f'SHARED = Path(__file__).resolve().parents[1].parent / "{OUTSIDE}"',
    "ROOT = Path(__file__).parents[4]",
    'ROOT = Path(__file__).parents[2]\nSEED = ROOT / ".." / ".." / "seed"',
    'HERE = os.path.dirname(os.path.abspath(__file__))\n'
    'X = os.path.join(HERE, "..", "..", "..", "..")',
    'X = Path(__file__).parent.parent.parent.parent.joinpath("..", "data")',
    f'X = open("../{OUTSIDE}/seed/000.txt")',
    'X = Path("/work/shared/conformance")',
    'X = Path(tests.__file__).parents[2]',
])
def test_the_check_finds_a_path_that_leaves_the_repository(code: str) -> None:
    assert escapes(code, REPO / "tests/unit/capture/test_x.py") != []


@pytest.mark.parametrize("code", [
    'DATA = Path(__file__).resolve().parent / "data"',
    "ROOT = Path(__file__).parents[2]",
    'X = Path(remora.resources.__file__).parent / "seed"',
    'X = os.path.join(os.path.dirname(__file__), "..")',
    'X = "shared memory"  # not a path',
    'X = Path("/run/netns")',
])
def test_the_check_accepts_paths_inside_the_repository(code: str) -> None:
    assert escapes(code, REPO / "tests/unit/capture/test_x.py") == []


def _collect(tmp_path: Path, cases: int, values: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_counted.py").write_text(textwrap.dedent(f"""
        import pytest

        @pytest.mark.cases({cases})
        @pytest.mark.parametrize("name", {values})
        def test_one(name):
            assert name
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.collection_checks", "-q", "-p",
         "no:cacheprovider", "--rootdir", str(tmp_path), "test_counted.py::test_one[a]"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_suite_that_collects_too_few_cases_is_a_collection_error(tmp_path: Path) -> None:
    wrong = _collect(tmp_path, 3, '["a", "b"]')
    assert wrong.returncode != 0
    assert "test_one collected 2 cases, expected 3" in wrong.stdout
    empty = _collect(tmp_path, 2, "[]")
    assert empty.returncode != 0 and "test_one collected 0 cases, expected 2" in empty.stdout
    right = _collect(tmp_path, 2, '["a", "b"]')
    assert right.returncode == 0, right.stdout
    assert "1 passed" in right.stdout


def test_the_conformance_suites_pin_27_and_28_cases() -> None:
    marks = {}
    for name in ("test_conformance.py", "test_conformance_nft.py"):
        tree = ast.parse((REPO / "tests/unit/capture" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                for deco in node.decorator_list:
                    if isinstance(deco, ast.Call) and ast.unparse(deco.func) == \
                            "pytest.mark.cases":
                        marks[node.name] = ast.literal_eval(deco.args[0])
    assert marks == {"test_golden": 27, "test_nft_golden": 28}
