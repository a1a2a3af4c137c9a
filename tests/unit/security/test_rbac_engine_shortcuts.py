"""The RBAC engine's shortcuts for what Istio writes (an or_rules of exact ``:method``
values as one set membership, an exact header value, a url_path prefix, an exact
principal, a remembered CIDR answer) decide exactly as the general matchers do: each rule
is evaluated in its usual form and in a form that defeats the shortcut (``ignore_case``
on a value that has no letters to fold, or a ``safe_regex`` saying the same), over
requests with the value present, absent, different, with a query, and without HTTP."""

from __future__ import annotations

import re
from typing import Any

import pytest

from remora.proxy.config.strict import Fields
from remora.proxy.rbac_engine import RbacInput, parse_rules

CLIENT = "spiffe://cluster.local/ns/demo-from/sa/default"


def _rules(permission: dict[str, Any], principal: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    return {"action": "ALLOW", "policies": {"p": {
        "permissions": [permission], "principals": [principal or {"any": True}]}}}


def _method(value: str, general: bool) -> dict[str, Any]:
    match: dict[str, Any] = ({"safe_regex": {"regex": re.escape(value)}} if general
                             else {"exact": value})
    return {"header": {"name": ":method", "string_match": match}}


def _cases(general: bool) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    def exact(value: str) -> dict[str, Any]:
        return ({"safe_regex": {"regex": re.escape(value)}} if general else {"exact": value})
    return [
        # methods: or_rules of exact :method values (one set membership)
        ({"or_rules": {"rules": [_method("GET", general), _method("HEAD", general)]}}, None),
        # mixed names: no merge, still or
        ({"or_rules": {"rules": [_method("POST", general), {"header": {
            "name": "x-a", "string_match": exact("1")}}]}}, None),
        # a url_path prefix, and an exact path
        ({"url_path": {"path": {"safe_regex": {"regex": "/api/.*"}} if general
                       else {"prefix": "/api/"}}}, None),
        ({"url_path": {"path": exact("/health")}}, None),
        # and_rules of two, three; an empty or/and
        ({"and_rules": {"rules": [_method("GET", general), {"url_path": {
            "path": exact("/api/x")}}]}}, None),
        ({"and_rules": {"rules": [_method("GET", general), _method("GET", general),
                                  {"header": {"name": "x-a", "present_match": True}}]}}, None),
        ({"or_rules": {"rules": [_method("PUT", general), _method("GET", general),
                                 _method("DELETE", general)]}}, None),
        # an exact principal (URI SAN), a CIDR source
        ({"any": True}, {"authenticated": {"principal_name": exact(CLIENT)}}),
        ({"any": True}, {"or_ids": {"ids": [
            {"direct_remote_ip": {"address_prefix": "10.20.0.0", "prefix_len": 24}},
            {"authenticated": {"principal_name": exact("spiffe://x/ns/a/sa/b")}}]}}),
    ]


def _requests() -> list[RbacInput]:
    out = []
    for method, path, extra in (("GET", "/api/x", {"x-a": "3"}),
                                ("HEAD", "/api/x?q=1", {"x-a": "1"}),
                                ("POST", "/health", {"x-a": "2"}), ("DELETE", "/health?x", {}),
                                ("get", "/API/x", {}), (None, None, {})):
        headers: dict[str, str] = dict(extra)
        if method is not None:
            headers[":method"] = method
        if path is not None:
            headers[":path"] = path
        for peer, principal in (("10.20.0.78", CLIENT), ("10.9.0.1", "spiffe://x/ns/a/sa/b"),
                                ("10.20.0.5", None), ("not-an-ip", CLIENT)):
            for http in (True, False):
                out.append(RbacInput(peer, peer, "10.20.0.77", 18080,
                                     (principal,) if principal else (), (), "",
                                     principal is not None, "", headers if http else None))
    return out


@pytest.mark.parametrize("index", range(len(_cases(False))))
def test_shortcut_decides_as_the_general_matcher(index: int) -> None:
    usual = parse_rules(Fields(_rules(*_cases(False)[index]), "rules"))
    general = parse_rules(Fields(_rules(*_cases(True)[index]), "rules"))
    assert usual is not None and general is not None
    decisions = []
    for r in _requests() * 2:  # twice: the CIDR answers come from memory the second time
        a, b = usual.evaluate(r), general.evaluate(r)
        assert (a.allowed, a.policy) == (b.allowed, b.policy), r
        decisions.append(a.allowed)
    assert True in decisions and False in decisions  # the case tells requests apart
