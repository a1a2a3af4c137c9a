"""Envoy's RBAC engine (config.rbac.v3.RBAC), pure: parse a ``rules`` message, decide.

Shared by ``envoy.filters.network.rbac`` (per connection: addresses, port, peer
certificate, SNI) and ``envoy.filters.http.rbac`` (per request: the same plus headers and
path). Semantics of source/extensions/filters/common/rbac/matchers.cc and engine_impl.cc:

- ALLOW: allowed when some policy matches (that policy is the "matched policy"),
  otherwise denied with matched policy ``none``;
- DENY: denied when some policy matches, otherwise allowed;
- a policy matches when any of its permissions and any of its principals match;
- ``authenticated`` (AuthenticatedMatcher) never matches a connection without TLS; without
  ``principal_name`` it matches every TLS connection, whether the peer presented a
  certificate or not (Envoy tests ``connection.ssl()``, nothing more). ``principal_name``
  is tried against every URI SAN of the peer certificate, then every DNS SAN, then its
  subject in RFC 2253 form (``subjectPeerCertificate``): the subject is tried even when the
  certificate has SANs, and it is "" without a peer certificate, so ``exact: ""`` matches
  a TLS peer without one (and Istio's certificates, whose subject is empty);
- ``direct_remote_ip`` is the TCP peer, ``remote_ip`` the client address after
  XFF/PROXY protocol (the peer, on a sidecar), ``destination_*`` the original destination;
- header matchers are refused by the network filter (as Envoy does); url_path never
  matches on a connection without HTTP.
Regexes are RE2 in Envoy; Python's ``re`` full match is used (same for the patterns
Istio writes: ``.*/ns/NS/.*``, ``.+``).
"""

from __future__ import annotations

import ipaddress
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http.header_map import INLINE_REQUEST
from remora.proxy.http.header_matcher import ascii_lower, parse_header_matcher, wire_text


@dataclass(slots=True)
class RbacInput:
    direct_remote_ip: str
    remote_ip: str
    destination_ip: str
    destination_port: int
    uri_sans: tuple[str, ...] = ()  # the peer certificate's
    dns_sans: tuple[str, ...] = ()
    subject: str = ""  # the peer certificate's, RFC 2253 (transport/cert_details.py)
    tls: bool = False  # a TLS connection (Envoy's connection.ssl()), peer certificate or not
    requested_server_name: str = ""
    headers: dict[str, str] | None = None  # HTTP only; lower-case names, :method, :path...


Matcher = Callable[[RbacInput], bool]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policy: str | None  # the policy that matched, None for none

    @property
    def details(self) -> str:
        """Envoy's RESPONSE_CODE_DETAILS / CONNECTION_TERMINATION_DETAILS on deny."""
        return f"rbac_access_denied_matched_policy[{self.policy or 'none'}]"


@dataclass
class Rbac:
    action: str  # ALLOW | DENY (LOG is accepted by Envoy but not produced by Istio)
    policies: list[tuple[str, Matcher, Matcher]] = field(default_factory=list)
    # one Decision per outcome (a policy's name or None), made on first use: a decision
    # depends on nothing else, and a request's evaluation then allocates none
    _decisions: dict[str | None, Decision] = field(default_factory=dict, repr=False,
                                                   compare=False)

    def evaluate(self, request: RbacInput) -> Decision:
        matched = None
        for name, perm, prin in self.policies:
            if perm(request) and prin(request):
                matched = name
                break
        decision = self._decisions.get(matched)
        if decision is None:
            allowed = (matched is not None) if self.action == "ALLOW" else matched is None
            decision = self._decisions[matched] = Decision(allowed, matched)
        return decision


# -- combinators, built once when the rules load: a request's evaluation is plain calls
# (no generator per any()/all(); one operand is the operand itself) ----------------------
def _true(_: RbacInput) -> bool:
    return True


def _false(_: RbacInput) -> bool:
    return False


def any_of(parts: list[Matcher]) -> Matcher:
    """Matches when one of PARTS does (none: never), trying them in order."""
    if not parts:
        return _false
    if len(parts) == 1:
        return parts[0]
    exacts = [_HEADER_EXACT.get(p) for p in parts]
    names = {e[0] for e in exacts if e is not None}
    if None not in exacts and len(names) == 1:  # methods: one lookup, one set membership
        name = names.pop()
        values = frozenset(e[1] for e in exacts if e is not None)

        def one_of(r: RbacInput) -> bool:
            headers = r.headers
            return headers is not None and headers.get(name) in values
        return one_of
    if len(parts) == 2:
        a, b = parts
        return lambda r: a(r) or b(r)
    parts = list(parts)

    def match(r: RbacInput) -> bool:
        for p in parts:  # noqa: SIM110 (any() would build a generator per request)
            if p(r):
                return True
        return False
    return match


def all_of(parts: list[Matcher]) -> Matcher:
    """Matches when every one of PARTS does (none: always), in order."""
    if not parts:
        return _true
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        return lambda r: a(r) and b(r)
    parts = list(parts)

    def match(r: RbacInput) -> bool:
        for p in parts:  # noqa: SIM110 (all() would build a generator per request)
            if not p(r):
                return False
        return True
    return match


# What some built matchers are, for the matchers over them to inline the usual cases
# (a request then costs fewer calls): a case-sensitive exact or prefix StringMatcher, as
# (kind, value); a header matcher that is an exact value, as (header name, value).
_PLAIN_STRING: weakref.WeakKeyDictionary[Callable[[str], bool], tuple[str, str]] = (
    weakref.WeakKeyDictionary())
_HEADER_EXACT: weakref.WeakKeyDictionary[Matcher, tuple[str, str]] = (
    weakref.WeakKeyDictionary())


# -- string matchers ------------------------------------------------------------------
def string_matcher(f: Fields) -> Callable[[str], bool]:
    ignore_case = bool(f.boolean("ignore_case", False))
    result: Callable[[str], bool] | None = None
    kind = next((k for k in ("exact", "prefix", "suffix", "contains") if f.has(k)), None)
    if kind is not None:
        # as the header matchers (header_matcher.py): the config string's UTF-8 bytes
        # against the value's, ignore_case folding A-Z only, as Envoy's StringMatcherImpl
        want = wire_text(f.string(kind, required=True))
        ops: dict[str, Callable[[str], bool]]
        if ignore_case:
            want = ascii_lower(want)
            ops = {"exact": lambda s: ascii_lower(s) == want,
                   "prefix": lambda s: ascii_lower(s).startswith(want),
                   "suffix": lambda s: ascii_lower(s).endswith(want),
                   "contains": lambda s: want in ascii_lower(s)}
        else:  # no folding call per comparison
            ops = {"exact": lambda s: s == want, "prefix": lambda s: s.startswith(want),
                   "suffix": lambda s: s.endswith(want), "contains": lambda s: want in s}
        result = ops[kind]
        if not ignore_case and kind in ("exact", "prefix"):
            _PLAIN_STRING[result] = (kind, want)
    rx = f.fields("safe_regex", "RegexMatcher")
    if rx is not None:
        pattern = wire_text(rx.string("regex", required=True))
        rx.ignore("google_re2")
        rx.done()
        if ignore_case:  # Envoy's StringMatcherImpl refuses the config
            raise ConfigError(f.at("ignore_case"), "ignore_case has no effect for "
                              "safe_regex", "remove it, or write (?i) in the regex")
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(rx.at("regex"), f"invalid regex: {exc}") from exc
        result = lambda s: compiled.fullmatch(s) is not None  # noqa: E731
    f.done()
    if result is None:
        raise ConfigError(f.path, "a StringMatcher needs exact, prefix, suffix, contains or "
                                  "safe_regex")
    return result


_CIDR_MEMORY = 4096  # addresses remembered per CIDR matcher


def _cidr(f: Fields) -> Matcher | Callable[[str], bool]:
    prefix = f.string("address_prefix", required=True)
    length = f.integer("prefix_len", 0)
    f.done()
    try:
        net = ipaddress.ip_network(f"{prefix}/{length}", strict=False)
    except ValueError as exc:
        raise ConfigError(f.path, f"invalid CIDR {prefix}/{length}: {exc}") from exc

    # the answer per address text, remembered (a peer's address repeats on each of its
    # requests; parsing it is most of the cost), the memory bounded
    seen: dict[str, bool] = {}

    def contains(ip: str) -> bool:
        known = seen.get(ip)
        if known is not None:
            return known
        try:
            inside = ipaddress.ip_address(ip) in net
        except ValueError:
            inside = False
        if len(seen) >= _CIDR_MEMORY:
            seen.clear()
        seen[ip] = inside
        return inside
    return contains


def _header(f: Fields) -> Matcher:
    """A header permission or principal: config.route.v3.HeaderMatcher, decided as the
    route matcher is (header_matcher.py: a repeated header value by value, an absent one
    matched only by present_match or treat_missing_header_as_empty)."""
    m = parse_header_matcher(f)
    name = m.name
    if (m.kind == "exact" and not m.invert and not m.ignore_case and not m.missing_as_empty
            and isinstance(m.value, str)
            and (name.startswith(":") or name in INLINE_REQUEST)):
        # what Istio writes (:method, :authority, ...): a name Envoy holds as one value
        # whatever was sent, so one lookup decides (and any_of makes a list of them one
        # set membership)
        want = m.value

        def match_exact(r: RbacInput) -> bool:
            headers = r.headers
            return headers is not None and headers.get(name) == want
        _HEADER_EXACT[match_exact] = (name, want)
        return match_exact
    test = m.test

    def match(r: RbacInput) -> bool:
        headers = r.headers
        return headers is not None and test(headers)
    return match


def _url_path(f: Fields) -> Matcher:
    path = f.fields("path", "StringMatcher")
    f.done()
    if path is None:
        raise ConfigError(f.path, "url_path needs path")
    check = string_matcher(path)
    plain = _PLAIN_STRING.get(check)
    if plain is not None and plain[0] == "prefix":
        prefix = plain[1]

        def match_prefix(r: RbacInput) -> bool:
            headers = r.headers
            if headers is None:
                return False
            value = headers.get(":path")
            if value is None:
                return False
            return (value.partition("?")[0] if "?" in value else value).startswith(prefix)
        return match_prefix

    def match(r: RbacInput) -> bool:
        headers = r.headers
        if headers is None:
            return False
        value = headers.get(":path")
        if value is None:
            return False
        return check(value.partition("?")[0] if "?" in value else value)
    return match


# -- permissions and principals -------------------------------------------------------
def _set(f: Fields, key: str, inner: str, build: Callable[[Fields], Matcher]) -> list[Matcher]:
    s = f.fields(key)
    assert s is not None
    out = [build(x) for x in s.each(inner)]
    s.done()
    return out


def permission(f: Fields) -> Matcher:
    m: Matcher | None = None
    if f.has("any"):
        _any_true(f)
        m = _true
    elif f.has("and_rules"):
        m = all_of(_set(f, "and_rules", "rules", permission))
    elif f.has("or_rules"):
        m = any_of(_set(f, "or_rules", "rules", permission))
    elif f.has("not_rule"):
        inner = f.fields("not_rule")
        assert inner is not None
        neg = permission(inner)
        m = lambda r: not neg(r)  # noqa: E731
    elif f.has("destination_port"):
        port = f.integer("destination_port")
        m = lambda r: r.destination_port == port  # noqa: E731
    elif f.has("destination_port_range"):
        rng = f.fields("destination_port_range")
        assert rng is not None
        lo, hi = rng.integer("start", 0), rng.integer("end", 0)
        rng.done()
        m = lambda r: lo <= r.destination_port < hi  # noqa: E731
    elif f.has("destination_ip"):
        c = f.fields("destination_ip")
        assert c is not None
        ip_in = _cidr(c)
        m = lambda r: ip_in(r.destination_ip)  # type: ignore[arg-type]  # noqa: E731
    elif f.has("header"):
        m = _header(_required(f, "header"))
    elif f.has("url_path"):
        m = _url_path(_required(f, "url_path"))
    elif f.has("requested_server_name"):
        check = string_matcher(_required(f, "requested_server_name"))
        m = lambda r: check(r.requested_server_name)  # noqa: E731
    f.done()
    if m is None:
        raise ConfigError(f.path, "unsupported or empty permission",
                          "remora reads any, and_rules, or_rules, not_rule, destination_port, "
                          "destination_port_range, destination_ip, header, url_path, "
                          "requested_server_name")
    return m


def _any_true(f: Fields) -> None:
    """``any`` of a Permission or Principal: Envoy's proto says ``const: true`` (``any:
    false`` is refused, not a rule that never matches)."""
    if f.boolean("any") is not True:
        raise ConfigError(f.at("any"), "must be true (Envoy refuses any: false)",
                          "set any: true, or for a rule that never matches use "
                          "not_rule/not_id with any: true")


def _required(f: Fields, key: str) -> Fields:
    out = f.fields(key)
    assert out is not None
    return out


def _authenticated(f: Fields) -> Matcher:
    """AuthenticatedMatcher::matches (matchers.cc): URI SANs, then DNS SANs, then the
    subject, each tried (a SAN that does not match does not stop the subject's turn)."""
    pn = f.fields("principal_name", "StringMatcher")
    f.done()
    if pn is None:
        return lambda r: r.tls
    check = string_matcher(pn)
    plain = _PLAIN_STRING.get(check)
    if plain is not None and plain[0] == "exact":  # Istio's principals: one identity
        want = plain[1]

        def match_exact(r: RbacInput) -> bool:
            return r.tls and (want in r.uri_sans or want in r.dns_sans or want == r.subject)
        return match_exact

    def match(r: RbacInput) -> bool:
        if not r.tls:
            return False
        for n in r.uri_sans:  # a loop, not any(): no generator per request
            if check(n):
                return True
        for n in r.dns_sans:
            if check(n):
                return True
        return check(r.subject)
    return match


def principal(f: Fields) -> Matcher:
    m: Matcher | None = None
    if f.has("any"):
        _any_true(f)
        m = _true
    elif f.has("and_ids"):
        m = all_of(_set(f, "and_ids", "ids", principal))
    elif f.has("or_ids"):
        m = any_of(_set(f, "or_ids", "ids", principal))
    elif f.has("not_id"):
        neg = principal(_required(f, "not_id"))
        m = lambda r: not neg(r)  # noqa: E731
    elif f.has("authenticated"):
        m = _authenticated(_required(f, "authenticated"))
    elif f.has("direct_remote_ip") or f.has("source_ip"):
        ip_in = _cidr(_required(f, "direct_remote_ip" if f.has("direct_remote_ip")
                                else "source_ip"))
        m = lambda r: ip_in(r.direct_remote_ip)  # type: ignore[arg-type]  # noqa: E731
    elif f.has("remote_ip"):
        rip_in = _cidr(_required(f, "remote_ip"))
        m = lambda r: rip_in(r.remote_ip)  # type: ignore[arg-type]  # noqa: E731
    elif f.has("header"):
        m = _header(_required(f, "header"))
    elif f.has("url_path"):
        m = _url_path(_required(f, "url_path"))
    f.done()
    if m is None:
        raise ConfigError(f.path, "unsupported or empty principal",
                          "remora reads any, and_ids, or_ids, not_id, authenticated, "
                          "direct_remote_ip, source_ip, remote_ip, header, url_path")
    return m


def header_rule(obj: Any, path: str) -> str | None:
    """The path of the first ``header`` permission or principal in OBJ (an RBAC rules
    message as configured, at PATH), None without one."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            at = f"{path}.{k}"
            if k == "header":
                return at
            found = header_rule(v, at)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found = header_rule(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def parse_rules(f: Fields | None, network: bool = False) -> Rbac | None:
    """``rules`` (config.rbac.v3.RBAC); None when absent (the filter then allows all).
    NETWORK: the network filter's, where Envoy refuses a header rule at any depth
    ("Found header(...) rule,not supported by RBAC network filter")."""
    if f is None:
        return None
    if network:
        at = header_rule(f.obj.get("policies"), f.at("policies"))
        if at is not None:
            raise ConfigError(at, "a header rule is not supported by the network RBAC "
                                  "filter (Envoy refuses it)",
                              "match headers in envoy.filters.http.rbac instead")
    action = f.enum("action", ("ALLOW", "DENY", "LOG"), "ALLOW")
    if action == "LOG":
        raise ConfigError(f.at("action"), "action LOG is not implemented by remora",
                          "use ALLOW or DENY")
    rbac = Rbac(action)
    pols = f.fields("policies")
    f.ignore("audit_logging_options")
    f.done()
    if pols is not None:
        for name in list(pols.obj):
            p = _required(pols, name)
            perms = [permission(x) for x in p.each("permissions", "Permission")]
            prins = [principal(x) for x in p.each("principals", "Principal")]
            if p.has("condition") or p.has("checked_condition"):
                raise ConfigError(p.at("condition"), "CEL conditions are not implemented")
            p.done()
            rbac.policies.append((name, any_of(perms), any_of(prins)))
        pols.done()
    return rbac
