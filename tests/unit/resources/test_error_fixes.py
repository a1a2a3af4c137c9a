"""Every error the manifest readers raise says how to fix it, not only what is wrong."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import remora.resources
from remora.errors import RemoraError
from remora.resources import loader

RESOURCES = Path(remora.resources.__file__).parent
# the calls that build an error, and how many positional arguments come before `fix`
ERROR_CALLS = {"RemoraError": 1, "ObjectError": 3, "error": 2}


def _missing_fixes(path: Path) -> list[str]:
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else (
            func.attr if isinstance(func, ast.Attribute) else "")
        if name not in ERROR_CALLS:
            continue
        if name == "error" and not (isinstance(func, ast.Attribute)
                                    and ast.unparse(func.value).endswith("ctx")):
            continue
        if len(node.args) > ERROR_CALLS[name] or any(k.arg == "fix" for k in node.keywords):
            continue
        missing.append(f"{path.name}:{node.lineno}: {ast.unparse(node)[:80]}")
    return missing


def test_every_error_raised_in_resources_carries_a_fix() -> None:
    missing = [m for p in sorted(RESOURCES.glob("*.py")) for m in _missing_fixes(p)]
    assert missing == []


@pytest.mark.parametrize(("yaml_text", "problem", "fix"), [
    ("apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: demo-to}\n"
     "spec: {selector: {app: s}, ports: [{port: 99999}]}\n",
     "spec.ports[0].port: 99999 is out of range 1-65535", "use a port between 1 and 65535"),
    ("apiVersion: v1\nkind: Namespace\nmetadata: {name: Demo_To}\n",
     "invalid name 'Demo_To'", "lower-case"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: []}\n",
     "at least one port is required", "spec.ports"),
])
def test_bad_manifests_name_the_problem_and_the_fix(tmp_path: Path, yaml_text: str,
                                                    problem: str, fix: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(RemoraError) as caught:
        loader.load_file(path)
    assert problem in caught.value.problem
    assert caught.value.fix and fix in caught.value.fix
    assert "(fix: " in caught.value.one_line()
