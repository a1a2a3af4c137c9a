"""config.route.v3.HeaderMatcher as Envoy 1.40 decides it: route matches, RBAC header
permissions and principals, fault filter headers all use this one matcher.

Envoy's HeaderUtility::HeaderDataBaseImpl (source/common/http/header_utility.cc) and its
per-kind subclasses; what follows is what Envoy 1.40 does, checked against the binary
(tests/unit/proxy/test_header_matcher_envoy_parity.py):

- A header that is absent does not match, inverted or not, unless the matcher is
  present_match (``present_match: false`` and an inverted ``present_match: true`` match an
  absent header) or ``treat_missing_header_as_empty`` is set, which makes the absent
  header one empty value (present, to present_match).
- A header sent on several lines that Envoy's header map keeps as separate entries (any
  name that is not inline, header_map.py) is matched value by value: the matcher matches
  when ONE value does, an inverted one when NONE does. There is no joined ``a,b`` value
  to match (``exact: "a,b"`` does not match lines ``a`` and ``b``, ``contains: ","`` does
  not either). An inline header's lines are one joined value already (user-agent,
  x-forwarded-for, ...), matched as that one value.
- The legacy ``exact_match: ""`` matches any value (HeaderDataExactMatch: an empty
  expected value is "any"); string_match ``exact: ""`` matches only an empty value.
- range_match reads the value as absl::SimpleAtoi does (optional sign, whitespace around)
  into a half-open [start, end).
- present_match ignores the value; invert_match negates the whole answer.

The common case (one value, a name sent once) costs one dict lookup and one ``","`` test.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http.cached import cached_attribute

# Envoy compares a matcher's string with the header's bytes, and its ignore_case folds
# ASCII letters only (absl::EqualsIgnoreCase, StartsWithIgnoreCase, StrContainsIgnoreCase);
# remora holds header bytes as latin-1 text (one character per byte), so a config string
# is held the same way (its UTF-8 bytes) and folded only in A-Z.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def wire_text(text: str) -> str:
    """TEXT (a config string) as remora holds header bytes: its UTF-8 bytes as latin-1
    characters (ASCII text unchanged)."""
    return text if text.isascii() else text.encode("utf-8").decode("latin-1")


def ascii_lower(text: str) -> str:
    """TEXT with A-Z folded and nothing else (str.lower folds every cased character)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)

MatchValue = str | bool | re.Pattern[str] | tuple[int, int]

_INT64 = (-(1 << 63), (1 << 63) - 1)
_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*")


class RepeatedHeaders(dict[str, str]):
    """Request headers (name -> the values comma-joined, as lookups see them) that also
    keep, in ``repeated``, the separate values of each non-inline name sent more than
    once: what Envoy's header map holds as separate entries and matches one by one. Built
    only for a request that repeats such a name; every other request's map is a dict."""

    __slots__ = ("repeated",)

    def __init__(self, headers: dict[str, str], repeated: dict[str, list[str]]) -> None:
        super().__init__(headers)
        self.repeated = repeated

    def first_view(self) -> dict[str, str]:
        """The headers as the access log's %REQ()% reads them: a repeated name still
        held as separate entries gives its first value (Envoy's HeaderFormatter prints
        get(name)[0], the first entry; checked against Envoy 1.40)."""
        out = dict(self)
        for name, values in self.repeated.items():
            if out.get(name) == ",".join(values):
                out[name] = values[0]
        return out


def header_values(headers: dict[str, str], name: str, got: str) -> list[str] | None:
    """NAME's separate values when HEADERS holds it as repeated entries and GOT (its
    joined value) is still what they join to; None: GOT is the one value."""
    repeated: dict[str, list[str]] | None = getattr(headers, "repeated", None)
    if repeated is None:
        return None
    values = repeated.get(name)
    if values is None or ",".join(values) != got:  # replaced since: one value now
        return None
    return values


def simple_atoi(value: str) -> int | None:
    """VALUE as absl::SimpleAtoi reads an int64 (None: not a number)."""
    m = _ATOI.fullmatch(value)
    if m is None:
        return None
    n = int(m.group(1))
    return n if _INT64[0] <= n <= _INT64[1] else None


@dataclass(frozen=True)
class HeaderMatcher:
    name: str  # lower-case; pseudo headers such as ":method" allowed
    # exact | prefix | suffix | contains | regex | range | present | any (the legacy
    # exact_match "": any value)
    kind: str
    # str; a compiled regex for "regex"; (start, end) for "range"; whether the header
    # must be there for "present"
    value: MatchValue
    invert: bool = False
    ignore_case: bool = False  # string_match's; value is lower-cased then
    missing_as_empty: bool = False  # treat_missing_header_as_empty

    def matches(self, headers: dict[str, str]) -> bool:
        return self.test(headers)

    @cached_attribute
    def value_test(self) -> Callable[[str], bool]:
        """Whether one header value matches (before invert_match)."""
        kind, value = self.kind, self.value
        if kind == "present":
            present = bool(value)
            return lambda got: present
        if kind == "any":
            return lambda got: True
        if kind == "range":
            assert isinstance(value, tuple), value
            start, end = value

            def in_range(got: str) -> bool:
                n = simple_atoi(got)
                return n is not None and start <= n < end
            return in_range
        if isinstance(value, re.Pattern):
            # a regex sees the value as sent, ignore_case or not (Envoy: ignore_case has
            # no effect on safe_regex)
            fullmatch = value.fullmatch
            return lambda got: fullmatch(got) is not None
        assert isinstance(value, str), (kind, value)
        test: Callable[[str], bool]
        if kind == "exact":
            test = value.__eq__
        elif kind == "prefix":
            test = lambda got: got.startswith(value)  # noqa: E731
        elif kind == "suffix":
            test = lambda got: got.endswith(value)  # noqa: E731
        else:
            assert kind == "contains", kind
            test = lambda got: value in got  # noqa: E731
        if self.ignore_case:
            return lambda got: test(ascii_lower(got))
        return test

    @cached_attribute
    def test(self) -> Callable[[dict[str, str]], bool]:
        """This matcher as one function of the headers, built on first use (once per
        route table or RBAC policy: the config never changes under it)."""
        name, invert, one = self.name, self.invert, self.value_test
        if self.missing_as_empty:
            # an absent header is one empty value (present, to present_match)
            missing = one("") != invert
        elif self.kind == "present":
            missing = (not self.value) != invert
        else:
            missing = False  # inverted or not: Envoy never matches an absent header

        if self.kind == "present":
            found = bool(self.value) != invert  # the value does not matter
            return lambda headers: found if name in headers else missing
        if (self.kind == "exact" and not invert and not self.ignore_case
                and isinstance(self.value, str) and "," not in self.value):
            # Istio's usual matcher: a value without "," equal to the joined value was
            # sent once (a repeated name's joined value has a ",")
            want = self.value

            def exact(headers: dict[str, str]) -> bool:
                got = headers.get(name)
                if got == want:
                    return True
                if got is None:
                    return missing
                if "," in got:
                    values = header_values(headers, name, got)
                    if values is not None:
                        return want in values
                return False
            return exact

        def matches(headers: dict[str, str]) -> bool:
            got = headers.get(name)
            if got is None:
                return missing
            if "," in got:
                values = header_values(headers, name, got)
                if values is not None:
                    for v in values:
                        if one(v):
                            return not invert
                    return invert
            return one(got) != invert
        return matches


# -- parsing ---------------------------------------------------------------------------
def string_matcher(f: Fields) -> tuple[str, MatchValue, bool]:
    """type.matcher.v3.StringMatcher -> (kind, value, ignore_case)."""
    ignore_case = bool(f.boolean("ignore_case", False))
    for kind in ("exact", "prefix", "suffix", "contains"):
        v = f.string(kind)
        if v is not None:
            v = wire_text(v)
            return kind, ascii_lower(v) if ignore_case else v, ignore_case
    rx = f.fields("safe_regex", "RegexMatcher")
    if rx is not None:
        if ignore_case:  # Envoy's StringMatcherImpl refuses the config
            raise ConfigError(f.at("ignore_case"), "ignore_case has no effect for "
                              "safe_regex", "remove it, or write (?i) in the regex")
        return "regex", regex(rx), ignore_case
    raise ConfigError(f.path, "string matcher needs one of exact, prefix, suffix, contains, "
                              "safe_regex")


def regex(f: Fields) -> re.Pattern[str]:
    """type.matcher.v3.RegexMatcher (RE2; Python's re agrees on the common subset)."""
    f.ignore("google_re2")  # the only engine; its max_program_size is deprecated
    src = f.string("regex", required=True)
    f.done()
    try:
        return re.compile(wire_text(src))
    except re.error as e:
        raise ConfigError(f.at("regex"), f"invalid regex {src!r}: {e}") from None


def parse_header_matcher(f: Fields) -> HeaderMatcher:
    """config.route.v3.HeaderMatcher (a route's, an RBAC rule's, a fault filter's)."""
    name = f.string("name", required=True).lower()
    invert = bool(f.boolean("invert_match", False))
    empty = bool(f.boolean("treat_missing_header_as_empty", False))
    m: HeaderMatcher
    if f.has("present_match"):
        m = HeaderMatcher(name, "present", bool(f.boolean("present_match")), invert,
                          missing_as_empty=empty)
    elif f.has("exact_match"):
        exact = wire_text(f.string("exact_match") or "")
        m = HeaderMatcher(name, "exact" if exact else "any", exact, invert,
                          missing_as_empty=empty)
    elif f.has("prefix_match"):
        m = HeaderMatcher(name, "prefix", wire_text(f.string("prefix_match") or ""), invert,
                          missing_as_empty=empty)
    elif f.has("suffix_match"):
        m = HeaderMatcher(name, "suffix", wire_text(f.string("suffix_match") or ""), invert,
                          missing_as_empty=empty)
    elif f.has("contains_match"):
        m = HeaderMatcher(name, "contains", wire_text(f.string("contains_match") or ""),
                          invert, missing_as_empty=empty)
    elif f.has("safe_regex_match"):
        m = HeaderMatcher(name, "regex", regex(f.fields("safe_regex_match") or f), invert,
                          missing_as_empty=empty)
    elif f.has("range_match"):
        rf = f.fields("range_match", "Int64Range")
        assert rf is not None
        span = (rf.integer("start", 0), rf.integer("end", 0))
        rf.done()
        m = HeaderMatcher(name, "range", span, invert, missing_as_empty=empty)
    elif f.has("string_match"):
        sm = f.fields("string_match", "StringMatcher")
        assert sm is not None
        kind, value, icase = string_matcher(sm)
        sm.done()
        m = HeaderMatcher(name, kind, value, invert, icase, empty)
    else:
        # no specifier: the header must be there (HeaderDataPresentMatch, present true)
        m = HeaderMatcher(name, "present", True, invert, missing_as_empty=empty)
    f.done()
    return m
