"""Walk one packet through the tables in netfilter hook order and say what captured it.

Hook order for IPv4 (include/uapi/linux/netfilter_ipv4.h NF_IP_PRI_*): raw (-300),
mangle (-150), nat DNAT (-100), filter (0), security (50), nat SNAT (100). A packet that
arrives goes PREROUTING then INPUT; one a local process sends goes OUTPUT then
POSTROUTING. nat chains only see the first packet of a connection (ctstate NEW), which is
the packet simulated here. Istio's capture is decided by nat REDIRECT (to 15001 or
15006) or, in TPROXY mode, by mangle TPROXY on PREROUTING; everything else is a RETURN or
ACCEPT that leaves the packet alone, and the rule that did so is the reason.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Literal

from remora.diagnose.iptables.model import (
    AddrMatch,
    IfaceMatch,
    MarkMatch,
    OwnerMatch,
    Packet,
    PortMatch,
    Rule,
    Ruleset,
    StateMatch,
    Tri,
)

HOOK_TABLES: dict[str, tuple[str, ...]] = {
    "PREROUTING": ("raw", "mangle", "nat"),
    "INPUT": ("mangle", "filter", "security", "nat"),
    "OUTPUT": ("raw", "mangle", "nat", "filter", "security"),
    "POSTROUTING": ("mangle", "nat"),
}
PATHS: dict[str, tuple[str, ...]] = {
    "arriving": ("PREROUTING", "INPUT"),
    "local": ("OUTPUT", "POSTROUTING"),
}
_TERMINAL = {"ACCEPT", "DROP", "REJECT", "REDIRECT", "TPROXY", "DNAT", "SNAT", "MASQUERADE"}
_MAX_DEPTH = 32


@dataclass(frozen=True)
class RuleStep:
    """One rule the packet was tested against."""

    table: str
    chain: str
    index: int
    rule: str
    counters: str | None
    matched: Tri
    action: str  # "jump ISTIO_INBOUND", "RETURN", "REDIRECT :15001", "" when not matched
    why_not: str = ""  # the first match that failed
    source_rule: Rule | None = field(default=None, compare=False, repr=False)

    def ref(self) -> str:
        return f"{self.table}/{self.chain} #{self.index}"


@dataclass(frozen=True)
class Capture:
    kind: Literal["REDIRECT", "TPROXY", "none", "DROP", "unknown"]
    port: int | None = None
    mark: int | None = None
    decided_by: RuleStep | None = None
    reason: str = ""  # for "none": why the packet is not captured

    def summary(self) -> str:
        if self.kind == "REDIRECT":
            return f"REDIRECT to port {self.port}"
        if self.kind == "TPROXY":
            mark = f" with mark {self.mark:#x} ({self.mark})" if self.mark is not None else ""
            return f"TPROXY to port {self.port}{mark}"
        if self.kind == "DROP":
            return "dropped"
        if self.kind == "unknown":
            return f"cannot tell: {self.reason}"
        return f"not captured: {self.reason}"


@dataclass(frozen=True)
class WalkResult:
    packet: Packet
    path: str
    steps: tuple[RuleStep, ...]
    capture: Capture
    final_mark: int
    missing_tables: tuple[str, ...]
    uncertain: tuple[str, ...] = ()
    final_packet: Packet | None = None  # after NAT and marks


@dataclass
class _State:
    packet: Packet
    initial: Packet
    steps: list[RuleStep] = field(default_factory=list)
    capture: Capture | None = None
    last_exit: RuleStep | None = None  # last RETURN/ACCEPT that let the packet go
    uncertain: list[str] = field(default_factory=list)


def _evaluate(rule: Rule, p: Packet) -> tuple[Tri, str]:
    result: Tri = True
    why = ""
    for m in rule.matches:
        r = m.test(p)
        if r is False:
            return False, m.text()
        if r is None:
            result, why = None, m.text()
    return result, why


def walk(rules: Ruleset, packet: Packet, path: Literal["arriving", "local"]) -> WalkResult:
    """Simulate ``packet`` through every hook of ``path``. Pure: rules are not changed."""
    st = _State(packet, packet)
    present = set(rules.tables)
    wanted = {t for hook in PATHS[path] for t in HOOK_TABLES[hook]} & {"mangle", "nat"}
    for hook in PATHS[path]:
        for table_name in HOOK_TABLES[hook]:
            if table_name == "nat" and st.packet.ctstate != "NEW":
                continue
            table = rules.tables.get(table_name)
            if table is None or hook not in table.chains:
                continue
            verdict = _run_chain(rules, table_name, hook, st, 0)
            if verdict == "DROP":
                return _result(st, path, wanted - present, Capture("DROP", decided_by=st.steps[-1]))
    if st.capture is None:
        st.capture = Capture("none", decided_by=st.last_exit, reason=_reason(st.last_exit, st))
    return _result(st, path, wanted - present, st.capture)


def _result(st: _State, path: str, missing: set[str], capture: Capture) -> WalkResult:
    return WalkResult(st.initial, path, tuple(st.steps), capture, st.packet.mark,
                      tuple(sorted(missing)), tuple(dict.fromkeys(st.uncertain)), st.packet)


def _run_chain(rules: Ruleset, table: str, chain_name: str, st: _State, depth: int) -> str:
    """Returns "RETURN" (fell off / returned), "ACCEPT" (table done) or "DROP"."""
    if depth > _MAX_DEPTH:
        st.uncertain.append(f"jump depth over {_MAX_DEPTH} in {table}/{chain_name} (a loop?)")
        return "ACCEPT"
    chain = rules.tables[table].chains.get(chain_name)
    if chain is None:
        st.uncertain.append(f"chain {chain_name} is jumped to but not in the {table} evidence")
        return "RETURN"
    for rule in chain.rules:
        matched, why = _evaluate(rule, st.packet)
        counters = str(rule.counters) if rule.counters else None
        if not matched:
            if matched is None:
                st.uncertain.append(f"{table}/{chain_name} #{rule.index}: cannot evaluate "
                                    f"`{why}` from the evidence; taken as not matching")
            st.steps.append(RuleStep(table, chain_name, rule.index, rule.text(), counters,
                                     matched, "", why))
            continue
        target = rule.target
        name = target.name
        step = RuleStep(table, chain_name, rule.index, rule.text(), counters, True, name,
                        source_rule=rule)
        if name == "RETURN":
            st.steps.append(replace(step, action="RETURN"))
            st.last_exit = st.steps[-1]
            return "RETURN"
        if name == "ACCEPT":
            st.steps.append(replace(step, action="ACCEPT"))
            st.last_exit = st.steps[-1]
            return "ACCEPT"
        if name in ("DROP", "REJECT"):
            st.steps.append(replace(step, action=name))
            return "DROP"
        if name == "REDIRECT":
            st.steps.append(replace(step, action=f"REDIRECT to port {target.to_port}"))
            st.capture = Capture("REDIRECT", target.to_port, decided_by=st.steps[-1])
            # The NAT applies to the rest of the walk: a locally sent packet now goes to
            # 127.0.0.1 (ipt_REDIRECT's loopback), an arriving one keeps its address.
            if target.to_port:
                st.packet = replace(st.packet, dport=target.to_port)
            if st.packet.out_iface is not None and st.packet.dst.version == 4:
                st.packet = replace(st.packet, dst=ipaddress.ip_address("127.0.0.1"))
            return "ACCEPT"
        if name == "TPROXY":
            value, mask = target.mark or (0, 0)
            st.packet = replace(st.packet, mark=(st.packet.mark & ~mask) ^ value)
            st.steps.append(replace(step, action=f"TPROXY to port {target.to_port} "
                                                 f"mark {value:#x}"))
            st.capture = Capture("TPROXY", target.to_port, value, decided_by=st.steps[-1])
            return "ACCEPT"
        if name == "MARK":
            _mark(st, target.op, target.mark, conn=False)
            st.steps.append(replace(step, action=f"MARK {target.op} -> {st.packet.mark:#x}"))
            continue
        if name == "CONNMARK":
            if target.op == "save":
                st.packet = replace(st.packet, ctmark=st.packet.mark)
            elif target.op == "restore":
                st.packet = replace(st.packet, mark=st.packet.ctmark)
            else:
                _mark(st, target.op, target.mark, conn=True)
            st.steps.append(replace(step, action=f"CONNMARK {target.op}"))
            continue
        if name in _TERMINAL:
            st.steps.append(replace(step, action=name))
            st.last_exit = st.steps[-1]
            return "ACCEPT"
        if name and name in rules.tables[table].chains:
            st.steps.append(replace(step, action=f"{'goto' if target.goto else 'jump'} {name}"))
            verdict = _run_chain(rules, table, name, st, depth + 1)
            if verdict != "RETURN" or target.goto:
                return verdict if verdict != "RETURN" else "RETURN"
            continue
        # No target (a counter) or one without effect on capture (LOG, CT, ...).
        st.steps.append(replace(step, action=name or "(count only)"))
    return "RETURN"


def _mark(st: _State, op: str | None, mark: tuple[int, int] | None, conn: bool) -> None:
    if mark is None:
        return
    value, mask = mark
    cur = st.packet.ctmark if conn else st.packet.mark
    if op in ("set", "xset"):
        new = (cur & ~mask) ^ value
    elif op == "and":
        new = cur & value
    elif op == "or":
        new = cur | value
    elif op == "xor":
        new = cur ^ value
    else:
        return
    st.packet = replace(st.packet, ctmark=new) if conn else replace(st.packet, mark=new)


def _reason(step: RuleStep | None, st: _State) -> str:
    """Why a packet that was not captured was let go, from the rule that let it go."""
    if step is None:
        return "no capture rule matched (every chain fell through to policy ACCEPT)"
    rule_text = f"{step.ref()} `{step.rule}`"
    p = st.packet
    for rule_match in (step.source_rule.matches if step.source_rule else ()):
        if isinstance(rule_match, PortMatch) and not rule_match.negated:
            port = p.dport if rule_match.which == "dport" else p.sport
            return f"excluded port {port} ({rule_text})"
        if isinstance(rule_match, AddrMatch) and not rule_match.negated:
            if rule_match.which == "src":
                if rule_match.raw.startswith(("127.0.0.6", "::6")):
                    bound = "::6" if rule_match.raw.startswith("::6") else "127.0.0.6"
                    return f"source is {bound}, the inbound sidecar's bind address ({rule_text})"
                return f"excluded source {rule_match.raw} ({rule_text})"
            if rule_match.net is not None and rule_match.net.is_loopback:
                return f"destination is localhost ({rule_text})"
            return f"excluded CIDR {rule_match.raw} ({rule_text})"
        if isinstance(rule_match, OwnerMatch):
            who = f"{rule_match.which} {rule_match.raw}"
            over_lo = any(isinstance(m, IfaceMatch) and m.name == "lo" and not m.negated
                          for m in (step.source_rule.matches if step.source_rule else ()))
            if rule_match.negated and over_lo:
                return f"sent over lo by a process not in {who} ({rule_text})"
            if rule_match.negated:
                return f"sender not in {who}: excluded by the owner-group filter ({rule_text})"
            return f"sent by the sidecar's own {who} (excluded group/user) ({rule_text})"
        if isinstance(rule_match, MarkMatch):
            return f"packet/connection mark matches {rule_match.value:#x} ({rule_text})"
        if isinstance(rule_match, StateMatch):
            return f"connection already established ({rule_text})"
    for rule_match in (step.source_rule.matches if step.source_rule else ()):
        if isinstance(rule_match, IfaceMatch) and not rule_match.negated:
            return f"excluded interface {rule_match.name} ({rule_text})"
    return f"let go by {rule_text}"
