"""Every case of Istio's TestIptables, through remora's generator, byte for byte.

The goldens are Istio's, copied into tests/data/conformance/istio-iptables (origin in
tests/data/README.md).
Istio's stub joins the recorded commands with "\\n" and its golden files end with
one newline (Istio's CompareContent trims it); we compare the exact bytes: the file is the
transcript plus that final newline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remora.capture import model, render
from remora.capture.apply import dry_run
from remora.capture.argv import parse_args
from remora.capture.config import with_overrides
from tests.datafiles import data_path
from tests.unit.capture.conformance import case_config, load_cases

# Read at collection time and required: a missing file fails collection instead of
# parametrizing over nothing (the count test below also pins the number of cases).
CASES_FILE = data_path("conformance", "istio-iptables", "cases.json")
CASE_NAMES = sorted(json.loads(CASES_FILE.read_text())["cases"])


def test_all_27_cases_are_collected(data_dir: Path) -> None:
    cases = load_cases(data_dir / "conformance/istio-iptables")["cases"]
    assert len(cases) == 27
    assert sorted(cases) == CASE_NAMES
    goldens = sorted(p.name for p in (data_dir / "conformance/istio-iptables").glob("*.golden"))
    assert goldens == CASE_NAMES


@pytest.mark.cases(27)  # tests/collection_checks.py: fewer is a collection error
@pytest.mark.parametrize("name", CASE_NAMES)
def test_golden(data_dir: Path, name: str) -> None:
    root = data_dir / "conformance/istio-iptables"
    data = load_cases(root)
    config = case_config(data["base"], data["cases"][name])
    golden = (root / name).read_bytes()
    assert golden.endswith(b"\n") and not golden.endswith(b"\n\n")
    # The pure renderer ...
    assert (render.transcript(model.build(config)) + "\n").encode() == golden
    # ... and the apply path driven by the recording runner (what --dry-run prints).
    assert (dry_run(config) + "\n").encode() == golden


def test_injector_default_args_give_the_derived_block(data_dir: Path) -> None:
    """The sidecar injector's real argv (as the node runs it) -> the nat block derived from
    run.go in tests/data/conformance/ (not an Istio golden: no Istio test covers exactly
    these args)."""
    derived = (data_dir / "conformance/istio-iptables/"
               "DERIVED-default-injection-redirect.txt.notgolden").read_text()
    expected = [line for line in derived.splitlines() if line and not line.startswith("#")]
    argv = ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
            "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020",
            "--log_output_level=default:info"]
    config = with_overrides(parse_args(argv, env={}), enable_ipv6=False)
    assert render.restore(model.build(config).v4).splitlines() == expected
