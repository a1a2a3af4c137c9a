"""A parametrized suite that collects fewer (or more) cases than it should is a failure.

pytest turns ``parametrize`` over an empty list into one skipped item ("got empty
parameter set"), so a suite whose case list went missing used to pass quietly. Mark such
a test with ``@pytest.mark.cases(N)``: collecting its module is then an error (``ERROR
collecting ...``, non-zero exit) unless exactly N real cases come out of it.

The count is taken on the module's collect report, i.e. on everything the module
generates before ``-k`` or a node id narrows the run, so running one case still checks
the whole list. tests/conftest.py loads this hook; tests/unit/test_self_contained.py runs
it on a module with a wrong count and expects the error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator, Sequence

import pytest

EMPTY_SET_REASON = "got empty parameter set"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cases(n): the parametrized test must collect exactly n cases")


def _is_real_case(item: pytest.Item) -> bool:
    skip = item.get_closest_marker("skip")
    reason = str(skip.kwargs.get("reason", "")) if skip is not None else ""
    return not reason.startswith(EMPTY_SET_REASON)


def count_problems(items: Sequence[pytest.Item | pytest.Collector]) -> list[str]:
    """One line per test marked ``cases(N)`` whose collected case count is not N."""
    expected: dict[str, int] = {}
    got: Counter[str] = Counter()
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        marker = item.get_closest_marker("cases")
        if marker is None:
            continue
        if len(marker.args) != 1 or not isinstance(marker.args[0], int):
            return [f"{item.originalname}: use @pytest.mark.cases(N) with one integer"]
        expected[item.originalname] = marker.args[0]
        got[item.originalname] += _is_real_case(item)
    return [f"{name} collected {got[name]} cases, expected {want}: its case list is missing "
            "or changed (see tests/data/README.md)"
            for name, want in sorted(expected.items()) if got[name] != want]


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
        collector: pytest.Collector) -> Generator[None, pytest.CollectReport,
                                                   pytest.CollectReport]:
    report = yield
    if isinstance(collector, pytest.Module | pytest.Class) and report.passed:
        problems = count_problems(report.result)
        if problems:
            report.outcome = "failed"
            report.longrepr = "\n".join(problems)
            report.result = []
    return report
