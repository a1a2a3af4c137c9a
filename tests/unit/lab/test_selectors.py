"""kubectl -l selectors."""

from __future__ import annotations

import pytest

from remora.errors import UsageError
from remora.lab.selectors import parse


@pytest.mark.parametrize(("selector", "labels", "matches"), [
    ("web=server", {"web": "server"}, True),
    ("web=server", {"web": "client"}, False),
    ("web==server,tier", {"web": "server", "tier": "x"}, True),
    ("web!=server", {}, True),
    ("!canary", {"canary": "1"}, False),
    ("env in (a, b),web", {"env": "b", "web": "x"}, True),
    ("env notin (a,b)", {"env": "a"}, False),
    (None, {}, True),
])
def test_selectors(selector: str | None, labels: dict[str, str], matches: bool) -> None:
    assert parse(selector)(labels) is matches


def test_bad_selector() -> None:
    with pytest.raises(UsageError, match="label selector"):
        parse("a b=c")
