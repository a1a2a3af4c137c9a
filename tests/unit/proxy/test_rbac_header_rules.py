"""RBAC header rules decide as Envoy 1.40's HeaderMatcher (header_matcher.py): a repeated
header value by value, an absent one never matched by an inverted value matcher; and the
rules Envoy refuses (``any: false``, a header rule in the network filter) are refused."""

from __future__ import annotations

from typing import Any

import pytest

from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http.header_matcher import RepeatedHeaders
from remora.proxy.rbac_engine import RbacInput, parse_rules


def _deny(header: dict[str, Any]) -> dict[str, Any]:
    return {"action": "DENY", "policies": {"p": {"permissions": [{"header": header}],
                                                 "principals": [{"any": True}]}}}


def _allowed(rules: dict[str, Any], headers: dict[str, str] | None) -> bool:
    rbac = parse_rules(Fields(rules, "rules"))
    assert rbac is not None
    return rbac.evaluate(RbacInput("1.1.1.1", "1.1.1.1", "2.2.2.2", 80,
                                   headers=headers)).allowed


def test_deny_on_one_of_repeated_values_denies() -> None:
    two = RepeatedHeaders({"x-role": "good,evil"}, {"x-role": ["good", "evil"]})
    assert not _allowed(_deny({"name": "x-role", "exact_match": "evil"}), two)
    assert not _allowed(_deny({"name": "x-role", "string_match": {"exact": "evil"}}), two)
    assert not _allowed(_deny({"name": "x-role", "safe_regex_match": {"regex": "e.*"}}), two)
    # no joined value: "good,evil" is not one of the values
    assert _allowed(_deny({"name": "x-role", "exact_match": "good,evil"}), two)
    # a single line "good,evil" is one value
    assert not _allowed(_deny({"name": "x-role", "exact_match": "good,evil"}),
                        {"x-role": "good,evil"})


def test_inverted_matcher_on_absent_header_does_not_match() -> None:
    inv = {"name": "x-token", "exact_match": "ok", "invert_match": True}
    assert _allowed(_deny(inv), {":path": "/inv"})
    assert not _allowed(_deny(inv), {"x-token": "bad"})
    allow = {"action": "ALLOW", "policies": {"p": {"permissions": [{"header": inv}],
                                                   "principals": [{"any": True}]}}}
    assert not _allowed(allow, {":path": "/inv"})  # ALLOW: absent is not "not ok"
    assert not _allowed(_deny({"name": "x-token", "present_match": True,
                               "invert_match": True}), {})
    assert not _allowed(_deny({"name": "x-token", "exact_match": "ok", "invert_match": True,
                               "treat_missing_header_as_empty": True}), {})


@pytest.mark.parametrize("where", ["permissions", "principals"])
def test_any_false_is_refused(where: str) -> None:
    rules = {"action": "DENY", "policies": {"p": {"permissions": [{"any": True}],
                                                  "principals": [{"any": True}]}}}
    rules["policies"]["p"][where] = [{"any": False}]
    with pytest.raises(ConfigError, match=rf"rules\.policies\.p\.{where}\[0\]\.any: must be "
                                          "true"):
        parse_rules(Fields(rules, "rules"))


def test_network_filter_refuses_header_rules() -> None:
    nested = {"action": "DENY", "policies": {"p": {
        "permissions": [{"and_rules": {"rules": [{"any": True}, {"not_rule": {
            "header": {"name": "x", "present_match": True}}}]}}],
        "principals": [{"any": True}]}}}
    with pytest.raises(ConfigError, match=r"rules\.policies\.p\.permissions\[0\]\.and_rules"
                                          r"\.rules\[1\]\.not_rule\.header: .*network RBAC"):
        parse_rules(Fields(nested, "rules"), network=True)
    assert parse_rules(Fields(nested, "rules")) is not None  # the HTTP filter takes it
