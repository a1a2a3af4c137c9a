"""Route and header matchers, compiled once per route table, decide as Envoy's matching
rules read (RouteMatch prefix/path/safe_regex with case_sensitive; HeaderMatcher exact,
prefix, suffix, contains, safe_regex, present, with invert_match and ignore_case): every
combination below against a direct reading of those rules."""

from __future__ import annotations

import itertools
import re

from remora.proxy.http.route_config import HeaderMatcher, Route


def _rule(m: HeaderMatcher, headers: dict[str, str]) -> bool:
    got = headers.get(m.name)
    if m.kind == "present":
        ok = (got is not None) == bool(m.value)
    elif got is None:
        ok = False
    else:
        subject = got.lower() if m.ignore_case else got
        ok = {"exact": lambda: subject == m.value,
              "prefix": lambda: subject.startswith(m.value),
              "suffix": lambda: subject.endswith(m.value),
              "contains": lambda: m.value in subject,
              "regex": lambda: m.value.fullmatch(got) is not None}[m.kind]()
    return ok != m.invert


VALUES = ["abc", "ABC", "xabcx", "ab", "", "a1"]
HEADERS = [{}, *({"x-h": v} for v in VALUES), {"other": "abc"}]


def test_header_matchers_decide_as_the_rules_read() -> None:
    specs: list[tuple[str, object]] = [
        ("exact", "abc"), ("prefix", "ab"), ("suffix", "bc"), ("contains", "bc"),
        ("regex", re.compile("a[0-9]")), ("present", True), ("present", False)]
    checked = 0
    for (kind, value), invert, icase in itertools.product(specs, (False, True), (False, True)):
        m = HeaderMatcher("x-h", kind, value, invert, icase)
        for headers in HEADERS:
            assert m.matches(headers) == _rule(m, headers), (kind, value, invert, icase,
                                                             headers)
            checked += 1
    assert checked == len(specs) * 4 * len(HEADERS)


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
