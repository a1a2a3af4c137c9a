"""Rule counters read before and after a live probe: which rules the probe moved (pure).

`iptables-save -c` prints ``[packets:bytes]`` before each rule. The live form reads it in
each pod just before and just after its probe request; a rule whose packet counter grew
in between was traversed by the probe (or by other traffic in the same instant, e.g. the
seed's client calling once a second, which the output says). The trace shows each rule's
total with the change, and a list names every rule that moved.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from remora.diagnose.iptables.model import Counters, Ruleset

# A namespace where a table was never used has no `*nat` in iptables-save: the kernel
# then has just the builtin chains with policy ACCEPT, which is what we put in its place
# so the walk says "not captured" rather than "table not in the evidence".
LIVE_TABLES = ("nat", "mangle")


@dataclass(frozen=True)
class LiveCounters(Counters):
    """A rule's counters after the probe, knowing the packet count before it."""

    before: int = 0

    @property
    def delta(self) -> int:
        return self.packets - self.before

    def __str__(self) -> str:
        if self.delta > 0:
            return f"{self.packets} pkts, +{self.delta} during the probe"
        return f"{self.packets} pkts, unchanged during the probe"


@dataclass(frozen=True)
class MovedRule:
    table: str
    chain: str
    index: int
    rule: str
    packets: int
    delta: int

    def line(self) -> str:
        return f"{self.table}/{self.chain} #{self.index}  +{self.delta} ({self.packets} pkts)  " \
               f"{self.rule}"


def complete_tables(rules: Ruleset) -> Ruleset:
    """Give absent nat/mangle tables their empty builtin chains (policy ACCEPT)."""
    from remora.diagnose.iptables.model import BUILTIN_CHAINS

    for name in LIVE_TABLES:
        if name not in rules.tables:
            table = rules.table(name)
            for chain in BUILTIN_CHAINS[name]:
                table.chain(chain)
    return rules


def _key(table: str, chain: str, index: int) -> tuple[str, str, int]:
    return table, chain, index


def annotate(before: Ruleset, after: Ruleset) -> list[MovedRule]:
    """Put LiveCounters on AFTER's rules (in place) and list the rules that moved.

    Rules are paired by table, chain, position and text; a rule that is not in BEFORE
    (the rules changed in between) keeps its plain counters."""
    old: dict[tuple[str, str, int], tuple[str, int]] = {}
    for table in before.tables.values():
        for chain in table.chains.values():
            for rule in chain.rules:
                if rule.counters is not None:
                    old[_key(rule.table, rule.chain, rule.index)] = (rule.text(),
                                                                     rule.counters.packets)
    moved: list[MovedRule] = []
    for table in after.tables.values():
        for chain in table.chains.values():
            for i, rule in enumerate(chain.rules):
                c = rule.counters
                prev = old.get(_key(rule.table, rule.chain, rule.index))
                if c is None or prev is None or prev[0] != rule.text():
                    continue
                live = LiveCounters(c.packets, c.bytes, c.packets_text, before=prev[1])
                chain.rules[i] = replace(rule, counters=live)
                if live.delta > 0:
                    moved.append(MovedRule(rule.table, rule.chain, rule.index, rule.text(),
                                           c.packets, live.delta))
    return moved
