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

from dataclasses import dataclass

from remora.proxy.config.strict import ConfigError, Fields

_ACTIONS = ("APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT", "OVERWRITE_IF_EXISTS_OR_ADD",
            "OVERWRITE_IF_EXISTS")


@dataclass(frozen=True)
class HeaderMutations:
    add: tuple[tuple[str, str, str], ...] = ()  # (lower-case name, value, append_action)
    remove: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)

    def then(self, outer: HeaderMutations) -> HeaderMutations:
        return HeaderMutations(self.add + outer.add, self.remove | outer.remove)


def apply(headers: list[tuple[str, str]], m: HeaderMutations) -> list[tuple[str, str]]:
    """HEADERS after M: removals first, then additions in order."""
    out = [(n, v) for n, v in headers if n not in m.remove] if m.remove else list(headers)
    for name, value, action in m.add:
        present = any(n == name for n, _ in out)
        if action == "APPEND_IF_EXISTS_OR_ADD" or (action == "ADD_IF_ABSENT" and not present):
            out.append((name, value))
        elif action == "OVERWRITE_IF_EXISTS_OR_ADD" or (
                action == "OVERWRITE_IF_EXISTS" and present):
            # Envoy removes the old values and adds the new one at the end (observed)
            out = [h for h in out if h[0] != name]
            out.append((name, value))
    return out


def _options(f: Fields, field: str) -> tuple[tuple[str, str, str], ...]:
    out = []
    for opt in f.each(field, "HeaderValueOption"):
        hv = opt.fields("header", "HeaderValue")
        if hv is None:
            raise ConfigError(opt.at("header"), "required field is missing")
        name = hv.string("key", required=True).lower()
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
        opt.ignore("keep_empty_value")  # empty values are sent either way on HTTP/1.1
        opt.done()
        out.append((name, value, action))
    return tuple(out)


def parse_mutations(f: Fields, direction: str) -> HeaderMutations:
    """DIRECTION "request" or "response": the two fields of that direction on F."""
    add = _options(f, f"{direction}_headers_to_add")
    remove = frozenset(str(n).lower() for n in f.items(f"{direction}_headers_to_remove"))
    return HeaderMutations(add, remove)
