"""Route and header matchers, compiled once per route table, decide as Envoy's matching
rules read (RouteMatch prefix/path/safe_regex with case_sensitive; HeaderMatcher exact,
prefix, suffix, contains, safe_regex, present, with invert_match and ignore_case): every
combination below against a direct reading of those rules."""

from __future__ import annotations

import itertools
import re

from remora.proxy.http.header_matcher import RepeatedHeaders, simple_atoi
from remora.proxy.http.route_config import HeaderMatcher, Route


def _rule(m: HeaderMatcher, headers: dict[str, str]) -> bool:
    """Envoy 1.40's HeaderDataBaseImpl read directly: an absent header matches only
    present_match false (or an inverted present_match), unless treat_missing_header_as_empty
    makes it one empty value; a repeated non-inline header matches when one of its values
    does, an inverted matcher when none does."""
    got = headers.get(m.name)
    values: list[str] | None
    if got is None:
        values = [""] if m.missing_as_empty else None
    else:
        values = getattr(headers, "repeated", {}).get(m.name) or [got]
    if values is None:
        return m.kind == "present" and (not m.value) != m.invert
    if m.kind == "present":
        return bool(m.value) != m.invert

    def one(v: str) -> bool:
        subject = v.lower() if m.ignore_case else v
        return {"exact": lambda: subject == m.value,
                "any": lambda: True,
                "prefix": lambda: subject.startswith(str(m.value)),
                "suffix": lambda: subject.endswith(str(m.value)),
                "contains": lambda: str(m.value) in subject,
                "range": lambda: v.strip().lstrip("+-").isdigit()
                and m.value[0] <= int(v) < m.value[1],  # type: ignore[index]
                "regex": lambda: m.value.fullmatch(v) is not None,  # type: ignore[union-attr]
                }[m.kind]()
    return any(one(v) for v in values) != m.invert


VALUES = ["abc", "ABC", "xabcx", "ab", "", "a1", "a,b", "3", " +4 ", "-2"]
REPEATED = [["abc", "x"], ["x", "ABC"], ["a", "b"], ["", "ab"], ["9", "3"], ["x", "y", "a1"]]
HEADERS: list[dict[str, str]] = [
    {}, *({"x-h": v} for v in VALUES), {"other": "abc"},
    *(RepeatedHeaders({"x-h": ",".join(vs)}, {"x-h": vs}) for vs in REPEATED)]


def test_header_matchers_decide_as_the_rules_read() -> None:
    specs: list[tuple[str, object]] = [
        ("exact", "abc"), ("exact", "a,b"), ("any", ""), ("prefix", "ab"), ("suffix", "bc"),
        ("contains", "bc"), ("contains", ","), ("regex", re.compile("a[0-9]")),
        ("range", (1, 5)), ("present", True), ("present", False)]
    checked = 0
    for (kind, value), invert, icase, empty in itertools.product(
            specs, (False, True), (False, True), (False, True)):
        m = HeaderMatcher("x-h", kind, value, invert, icase, empty)  # type: ignore[arg-type]
        for headers in HEADERS:
            assert m.matches(headers) == _rule(m, headers), (kind, value, invert, icase,
                                                             empty, headers)
            checked += 1
    assert checked == len(specs) * 8 * len(HEADERS)


def test_absent_header_and_invert() -> None:
    """Envoy 1.40: invert_match does not make an absent header match (the QA case: a route
    on x-foo exact bar, inverted, must fall through without x-foo)."""
    assert not HeaderMatcher("x-foo", "exact", "bar", invert=True).matches({})
    assert HeaderMatcher("x-foo", "exact", "bar", invert=True).matches({"x-foo": "baz"})
    assert HeaderMatcher("x-foo", "present", True, invert=True).matches({})
    assert HeaderMatcher("x-foo", "present", False).matches({})
    assert not HeaderMatcher("x-foo", "present", False, invert=True).matches({})
    assert HeaderMatcher("x-foo", "exact", "bar", True, missing_as_empty=True).matches({})
    assert not HeaderMatcher("x-foo", "present", False, missing_as_empty=True).matches({})


def test_repeated_header_matches_value_by_value() -> None:
    """Lines ``good`` and ``evil`` of a non-inline header: ``exact: evil`` matches (an RBAC
    DENY on it denies), ``exact: "good,evil"`` does not; a value replaced since decoding
    is one value again."""
    two = RepeatedHeaders({"x-role": "good,evil"}, {"x-role": ["good", "evil"]})
    assert HeaderMatcher("x-role", "exact", "evil").matches(two)
    assert not HeaderMatcher("x-role", "exact", "good,evil").matches(two)
    assert not HeaderMatcher("x-role", "exact", "evil", invert=True).matches(two)
    assert HeaderMatcher("x-role", "exact", "good,evil").matches({"x-role": "good,evil"})
    replaced = RepeatedHeaders({"x-role": "a,b"}, {"x-role": ["good", "evil"]})
    assert HeaderMatcher("x-role", "exact", "a,b").matches(replaced)


def test_path_matchers_decide_as_the_rules_read() -> None:
    paths = ["/api/v1?x=/API", "/API/v1", "/api", "/apix", "/a/12", "/a/12?q", "/", "*"]
    routes = [
        Route("p", prefix="/api"), Route("pci", prefix="/API", case_sensitive=False),
        Route("e", path="/api"), Route("eci", path="/API", case_sensitive=False),
        Route("r", regex=re.compile("/a/[0-9]+")), Route("all", prefix=""),
    ]
    expected = {
        "p": {"/api/v1?x=/API", "/api", "/apix"},
        "pci": {"/api/v1?x=/API", "/API/v1", "/api", "/apix"},
        "e": {"/api"}, "eci": {"/api"},
        "r": {"/a/12", "/a/12?q"}, "all": set(paths),
    }
    for r in routes:
        assert {p for p in paths if r.matches(p, {})} == expected[r.name or ""], r.name
    with_header = Route("h", prefix="/", headers=(HeaderMatcher("x-h", "exact", "1"),))
    assert with_header.matches("/x", {"x-h": "1"})
    assert not with_header.matches("/x", {"x-h": "2"})


def test_range_reads_values_as_simple_atoi() -> None:
    assert [simple_atoi(v) for v in ("3", " +4 ", "-2", "1_0", "", "4x", "99999999999999999999")] \
        == [3, 4, -2, None, None, None, None]
