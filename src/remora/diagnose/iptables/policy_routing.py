"""TPROXY's policy routing in a pod, from `ip rule show` and `ip route show table N` (pure).

In TPROXY mode istio-iptables adds, next to the mangle rules
(tools/istio-iptables/pkg/capture/run.go, `ip -f inet rule add fwmark 1337 lookup 133` and
`ip -f inet route add local default dev lo table 133`; the table is
ISTIO_INBOUND_TPROXY_ROUTE_TABLE, the mark ISTIO_INBOUND_TPROXY_MARK):

    32765:  from all fwmark 0x539 lookup 133
    local default dev lo scope host          (ip route show table 133)

Packets carrying the mark (the TPROXY'd ones, and the app's replies to a connection the
sidecar opened from the client's address, whose mark CONNMARK restores) are then routed to
the pod itself; without it the app's replies to the client's address would leave by eth0
and never reach the sidecar. https://www.kernel.org/doc/Documentation/networking/tproxy.txt
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_RULE = re.compile(r"^\s*(\d+):\s+(.*\S)\s*$")
_FWMARK = re.compile(r"\bfwmark (0x[0-9a-fA-F]+|\d+)(?:/(0x[0-9a-fA-F]+|\d+))?")
_LOOKUP = re.compile(r"\b(?:lookup|table) (\S+)")
_LOCAL_DEFAULT = re.compile(r"^local (?:default|0\.0\.0\.0/0) dev lo\b")
_ROUTE_TABLE = re.compile(r"\btable (\S+)")


@dataclass(frozen=True)
class IpRule:
    priority: int
    text: str  # as `ip rule show` prints it after "N:", e.g. "from all fwmark 0x539 lookup 133"
    fwmark: int | None
    mask: int
    table: str | None

    def matches_mark(self, mark: int) -> bool:
        return self.fwmark is not None and (mark & self.mask) == (self.fwmark & self.mask)


@dataclass
class PolicyRouting:
    """What `ip rule show` and `ip route show table N` printed in one pod."""

    rules: list[IpRule] = field(default_factory=list)
    tables: dict[str, list[str]] = field(default_factory=dict)  # table -> route lines
    origin: str = ""


@dataclass(frozen=True)
class RoutingCheck:
    established: bool
    summary: str


def _int(text: str) -> int:
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def parse_rule_line(line: str) -> IpRule | None:
    m = _RULE.match(line)
    if not m:
        return None
    text = m.group(2)
    mark = _FWMARK.search(text)
    table = _LOOKUP.search(text)
    return IpRule(int(m.group(1)), text, _int(mark.group(1)) if mark else None,
                  _int(mark.group(2)) if mark and mark.group(2) else 0xFFFFFFFF,
                  table.group(1) if table else None)


def parse_policy_text(text: str, origin: str = "") -> PolicyRouting:
    """`ip rule show` and `ip route show table N` output, in one text or separately.

    Rule lines start with their priority (``32765:``); other lines are routes. A route line
    that names its table (`ip route show table all`) goes to that table; one that does not
    goes to the table the fwmark rules look up (when they name exactly one), as `ip route
    show table 133` prints it. ``$ ...`` prompts and ``# ...`` notes are skipped.
    """
    pr = PolicyRouting(origin=origin)
    routes: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "$")):
            continue
        rule = parse_rule_line(line)
        if rule is not None:
            pr.rules.append(rule)
            continue
        named = _ROUTE_TABLE.search(line)
        if named:
            pr.tables.setdefault(named.group(1), []).append(line)
        else:
            routes.append(line)
    marked = {r.table for r in pr.rules if r.fwmark is not None and r.table}
    if routes and len(marked) == 1:
        pr.tables.setdefault(marked.pop(), []).extend(routes)
    elif routes:
        pr.tables.setdefault("main", []).extend(routes)
    pr.rules.sort(key=lambda r: r.priority)
    return pr


def marked_tables(pr: PolicyRouting) -> list[str]:
    """The tables fwmark rules look up (what the live collector lists next)."""
    return list(dict.fromkeys(r.table for r in pr.rules if r.fwmark is not None and r.table))


def check_tproxy(pr: PolicyRouting, mark: int) -> RoutingCheck:
    """Whether packets with MARK are routed to the pod itself (Istio's table 133)."""
    rule = next((r for r in pr.rules if r.matches_mark(mark) and r.table), None)
    if rule is None:
        return RoutingCheck(False, f"no `ip rule` sends fwmark {mark:#x} to a routing table "
                                   "(Istio adds `ip -f inet rule add fwmark 1337 lookup 133`): "
                                   "the app's replies to the client's address would leave by "
                                   "eth0 instead of returning to the sidecar")
    routes = pr.tables.get(rule.table or "")
    if routes is None:
        return RoutingCheck(False, f"`{rule.priority}: {rule.text}`, but table {rule.table} "
                                   "was not collected")
    local = next((r for r in routes if _LOCAL_DEFAULT.match(r)), None)
    if local is None:
        return RoutingCheck(False, f"`{rule.priority}: {rule.text}`, but table {rule.table} "
                                   "has no `local default dev lo` route (Istio adds `ip -f inet "
                                   f"route add local default dev lo table {rule.table}`): "
                                   "marked packets are not delivered to the pod itself")
    return RoutingCheck(True, f"`{rule.priority}: {rule.text}` and table {rule.table}: "
                              f"`{local}`, so packets marked {mark:#x} are delivered to the "
                              "pod itself")
