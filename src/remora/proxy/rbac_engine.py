"""Envoy's RBAC engine (config.rbac.v3.RBAC), pure: parse a ``rules`` message, decide.

Shared by ``envoy.filters.network.rbac`` (per connection: addresses, port, peer
certificate, SNI) and ``envoy.filters.http.rbac`` (per request: the same plus headers and
path). Semantics of source/extensions/filters/common/rbac/matchers.cc and engine_impl.cc:

- ALLOW: allowed when some policy matches (that policy is the "matched policy"),
  otherwise denied with matched policy ``none``;
- DENY: denied when some policy matches, otherwise allowed;
- a policy matches when any of its permissions and any of its principals match;
- ``authenticated.principal_name`` is tried against the peer certificate's URI SANs,
  then DNS SANs, then its subject; without a peer certificate it never matches
  (an empty ``authenticated`` matches any authenticated peer);
- ``direct_remote_ip`` is the TCP peer, ``remote_ip`` the client address after
  XFF/PROXY protocol (the peer, on a sidecar), ``destination_*`` the original destination;
- header and url_path matchers never match on a connection without HTTP.
Regexes are RE2 in Envoy; Python's ``re`` full match is used (same for the patterns
Istio writes: ``.*/ns/NS/.*``, ``.+``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from remora.proxy.config.strict import ConfigError, Fields


@dataclass(frozen=True)
class RbacInput:
    direct_remote_ip: str
    remote_ip: str
    destination_ip: str
    destination_port: int
    uri_sans: tuple[str, ...] = ()
    dns_sans: tuple[str, ...] = ()
    subject: str | None = None
    authenticated: bool = False  # a verified peer certificate was presented
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

    def evaluate(self, request: RbacInput) -> Decision:
        matched = next((name for name, perm, prin in self.policies
                        if perm(request) and prin(request)), None)
        if self.action == "ALLOW":
            return Decision(matched is not None, matched)
        return Decision(matched is None, matched)


# -- string matchers ------------------------------------------------------------------
def string_matcher(f: Fields) -> Callable[[str], bool]:
    ignore_case = bool(f.boolean("ignore_case", False))
    fold: Callable[[str], str] = str.lower if ignore_case else (lambda s: s)
    result: Callable[[str], bool] | None = None
    kind = next((k for k in ("exact", "prefix", "suffix", "contains") if f.has(k)), None)
    if kind is not None:
        want = fold(f.string(kind, required=True))
        ops: dict[str, Callable[[str], bool]] = {
            "exact": lambda s: fold(s) == want, "prefix": lambda s: fold(s).startswith(want),
            "suffix": lambda s: fold(s).endswith(want), "contains": lambda s: want in fold(s)}
        result = ops[kind]
    rx = f.fields("safe_regex", "RegexMatcher")
    if rx is not None:
        pattern = rx.string("regex", required=True)
        rx.ignore("google_re2")
        rx.done()
        try:
            compiled = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise ConfigError(rx.at("regex"), f"invalid regex: {exc}") from exc
        result = lambda s: compiled.fullmatch(s) is not None  # noqa: E731
    f.done()
    if result is None:
        raise ConfigError(f.path, "a StringMatcher needs exact, prefix, suffix, contains or "
                                  "safe_regex")
    return result


def _cidr(f: Fields) -> Matcher | Callable[[str], bool]:
    prefix = f.string("address_prefix", required=True)
    length = f.integer("prefix_len", 0)
    f.done()
    try:
        net = ipaddress.ip_network(f"{prefix}/{length}", strict=False)
    except ValueError as exc:
        raise ConfigError(f.path, f"invalid CIDR {prefix}/{length}: {exc}") from exc

    def contains(ip: str) -> bool:
        try:
            return ipaddress.ip_address(ip) in net
        except ValueError:
            return False
    return contains


def _header(f: Fields) -> Matcher:
    name = f.string("name", required=True).lower()
    invert = bool(f.boolean("invert_match", False))
    present = f.boolean("present_match")
    sm = f.fields("string_match", "StringMatcher")
    legacy = {k: f.string(k) for k in ("exact_match", "prefix_match", "suffix_match",
                                       "contains_match")}
    f.done()
    check: Callable[[str], bool]
    if sm is not None:
        check = string_matcher(sm)
    elif any(v is not None for v in legacy.values()):
        kind, value = next((k, v) for k, v in legacy.items() if v is not None)
        check = string_matcher(Fields({kind[:-6]: value}, f.path))
    elif present is not None:
        def check(_: str) -> bool:
            return bool(present)
    else:
        raise ConfigError(f.path, "header matcher needs string_match or present_match")

    def match(r: RbacInput) -> bool:
        if r.headers is None:
            return False
        value = r.headers.get(name)
        ok = value is not None and check(value)
        if present is False:
            ok = value is None
        return ok != invert
    return match


def _url_path(f: Fields) -> Matcher:
    path = f.fields("path", "StringMatcher")
    f.done()
    if path is None:
        raise ConfigError(f.path, "url_path needs path")
    check = string_matcher(path)

    def match(r: RbacInput) -> bool:
        if r.headers is None or ":path" not in r.headers:
            return False
        return check(r.headers[":path"].split("?", 1)[0])
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
        f.boolean("any")
        m = lambda r: True  # noqa: E731
    elif f.has("and_rules"):
        parts = _set(f, "and_rules", "rules", permission)
        m = lambda r: all(p(r) for p in parts)  # noqa: E731
    elif f.has("or_rules"):
        parts = _set(f, "or_rules", "rules", permission)
        m = lambda r: any(p(r) for p in parts)  # noqa: E731
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


def _required(f: Fields, key: str) -> Fields:
    out = f.fields(key)
    assert out is not None
    return out


def _authenticated(f: Fields) -> Matcher:
    pn = f.fields("principal_name", "StringMatcher")
    f.done()
    if pn is None:
        return lambda r: r.authenticated
    check = string_matcher(pn)

    def match(r: RbacInput) -> bool:
        if not r.authenticated:
            return False
        names = r.uri_sans or r.dns_sans or ((r.subject,) if r.subject else ())
        return any(check(n) for n in names)
    return match


def principal(f: Fields) -> Matcher:
    m: Matcher | None = None
    if f.has("any"):
        f.boolean("any")
        m = lambda r: True  # noqa: E731
    elif f.has("and_ids"):
        parts = _set(f, "and_ids", "ids", principal)
        m = lambda r: all(p(r) for p in parts)  # noqa: E731
    elif f.has("or_ids"):
        parts = _set(f, "or_ids", "ids", principal)
        m = lambda r: any(p(r) for p in parts)  # noqa: E731
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


def parse_rules(f: Fields | None) -> Rbac | None:
    """``rules`` (config.rbac.v3.RBAC); None when absent (the filter then allows all)."""
    if f is None:
        return None
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
            rbac.policies.append((
                name, lambda r, ps=perms: any(x(r) for x in ps),  # type: ignore[misc]
                lambda r, ps=prins: any(x(r) for x in ps)))  # type: ignore[misc]
        pols.done()
    return rbac
