"""``request_headers_to_add/remove`` and ``response_headers_to_add/remove`` of routes,
virtual hosts and route configurations, free of I/O.

Envoy reference: HeaderValueOption in
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/base.proto and
"Custom request/response headers" in the HTTP connection manager docs. A route's mutations
are applied first, then its virtual host's, then the route configuration's (Envoy's order
without ``most_specific_header_mutations_wins``). Values are literal: the ``%...%``
substitutions Envoy allows there are refused rather than sent verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http.header_map import INLINE_REQUEST, INLINE_RESPONSE, appended

_ACTIONS = ("APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT", "OVERWRITE_IF_EXISTS_OR_ADD",
            "OVERWRITE_IF_EXISTS")


@dataclass(frozen=True)
class MutationLevel:
    """One level's fields (a route's, its virtual host's or the route configuration's),
    applied together as Envoy's HeaderParser::evaluateHeaders applies one parser."""

    add: tuple[tuple[str, str, str, bool], ...] = ()  # (name, value, action, keep_empty)
    remove: frozenset[str] = frozenset()
    # the names the direction's header map holds inline (header_map.py)
    inline: frozenset[str] = frozenset()


@dataclass(frozen=True)
class HeaderMutations:
    """The levels that apply to one route, most specific first (Envoy's order without
    ``most_specific_header_mutations_wins``: the route's, then the virtual host's, then the
    route configuration's, each one evaluated on what the one before left)."""

    levels: tuple[MutationLevel, ...] = ()
    # every level's additions (name, value, append_action) and removals, worked out once:
    # the response side asks ``mutations.add or mutations.remove`` on every request
    add: tuple[tuple[str, str, str], ...] = field(init=False, default=())
    remove: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        object.__setattr__(self, "add", tuple(
            (n, v, a) for lv in self.levels for n, v, a, _ in lv.add))
        object.__setattr__(self, "remove", frozenset().union(
            *(lv.remove for lv in self.levels)))

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)

    def then(self, outer: HeaderMutations) -> HeaderMutations:
        return HeaderMutations(self.levels + outer.levels)


def apply(headers: list[tuple[str, str]], m: HeaderMutations) -> list[tuple[str, str]]:
    """HEADERS after M, level by level."""
    out = list(headers)
    for level in m.levels:
        out = _apply_level(out, level)
    return out


def apply_to_request(headers: list[tuple[str, str]], m: HeaderMutations,
                     view: dict[str, str] | None) -> list[tuple[str, str]]:
    """The request HEADERS after M, and VIEW (the access log's REQ() map, if any) changed
    the same way: what the mutations removed is gone, what they added reads as its first
    line (an inline name's lines are one, joined; any other's stay separate entries, and
    Envoy's %REQ()% prints the first: checked against Envoy 1.40)."""
    headers = apply(headers, m)
    if view is not None:
        for name in m.remove:
            view.pop(name, None)
        for name, _, _ in m.add:
            for n, v in headers:
                if n == name:
                    view[name] = v
                    break
    return headers


def _apply_level(out: list[tuple[str, str]], level: MutationLevel) -> list[tuple[str, str]]:
    """Envoy's HeaderParser::evaluateHeaders (source/common/router/header_parser.cc):
    the removals first; then each addition decided on the headers as they are now (an
    empty value is skipped unless keep_empty_value; ADD_IF_ABSENT and OVERWRITE_IF_EXISTS
    look only at what was there before this level); the overwrites set first (old lines
    removed, the new one at the end), then the additions in order, an inline header that is
    there getting the value appended in place (HeaderMapImpl::insertByKey, appendToHeader),
    any other a line of its own. Checked against Envoy 1.40:
    tests/unit/proxy/http/test_header_join_parity.py "mut-*"."""
    if level.remove:
        out = [h for h in out if h[0] not in level.remove]
    present = {n for n, _ in out}
    appends: list[tuple[str, str]] = []
    overwrites: list[tuple[str, str]] = []
    for name, value, action, keep_empty in level.add:
        if not value and not keep_empty:
            continue
        if action == "APPEND_IF_EXISTS_OR_ADD" or (
                action == "ADD_IF_ABSENT" and name not in present):
            appends.append((name, value))
        elif action == "OVERWRITE_IF_EXISTS_OR_ADD" or (
                action == "OVERWRITE_IF_EXISTS" and name in present):
            overwrites.append((name, value))
    for name, value in overwrites:
        out = [h for h in out if h[0] != name]
        out.append((name, value))
    for name, value in appends:
        if name in level.inline:
            for i, (n, v) in enumerate(out):
                if n == name:
                    out[i] = (name, appended(v, value))
                    break
            else:
                out.append((name, value))
        else:
            out.append((name, value))
    return out


def modifiable(name: str) -> bool:
    """Whether Envoy lets a header mutation add or remove NAME (lower-case):
    HeaderUtility::isModifiableHeader / isRemovableHeader refuse a pseudo header and host."""
    return not name.startswith(":") and name != "host"


def _options(f: Fields, name_of: str) -> tuple[tuple[str, str, str, bool], ...]:
    out: list[tuple[str, str, str, bool]] = []
    for opt in f.each(name_of, "HeaderValueOption"):
        hv = opt.fields("header", "HeaderValue")
        if hv is None:
            raise ConfigError(opt.at("header"), "required field is missing")
        name = hv.string("key", required=True).lower()
        if not modifiable(name):
            # HeaderParser::configure: HeaderUtility::isModifiableHeader
            raise ConfigError(hv.at("key"), f"{name!r}: :-prefixed or host headers may not be "
                              "modified (Envoy refuses it)",
                              "remove this entry (a route's host_rewrite_* or the path "
                              "rewrites change those)")
        value = hv.string("value", "") or ""
        if hv.has("raw_value"):
            raise ConfigError(hv.at("raw_value"), "raw_value is not implemented by remora",
                              "use value")
        hv.done()
        if "%" in value.replace("%%", ""):
            raise ConfigError(hv.at("value"), "header value substitutions (%...%) are not "
                              "implemented by remora", "use a literal value")
        value = value.replace("%%", "%")
        legacy = opt.boolean("append")
        action = opt.enum("append_action", _ACTIONS, None)
        if action is None:
            action = ("OVERWRITE_IF_EXISTS_OR_ADD" if legacy is False
                      else "APPEND_IF_EXISTS_OR_ADD")
        # an empty value is left out unless keep_empty_value (header_parser.cc)
        keep_empty = bool(opt.boolean("keep_empty_value"))
        opt.done()
        out.append((name, value, action, keep_empty))
    return tuple(out)


def parse_mutations(f: Fields, direction: str) -> HeaderMutations:
    """DIRECTION "request" or "response": the two fields of that direction on F."""
    add = _options(f, f"{direction}_headers_to_add")
    field = f"{direction}_headers_to_remove"
    remove = frozenset(str(n).lower() for n in f.items(field))
    for i, n in enumerate(f.items(field)):
        if not modifiable(str(n).lower()):
            # HeaderParser::configure: HeaderUtility::isRemovableHeader
            raise ConfigError(f"{f.at(field)}[{i}]", f"{n!r}: :-prefixed or host headers may "
                              "not be removed (Envoy refuses it)", "remove this entry")
    if not add and not remove:
        return HeaderMutations()
    return HeaderMutations((MutationLevel(
        add, remove, INLINE_REQUEST if direction == "request" else INLINE_RESPONSE),))
