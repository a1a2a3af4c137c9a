"""Rule model -> iptables-restore text, and the transcript form of Istio's goldens.

`restore()` is the builder's `buildRestore`: per table, `-N` for every non-builtin chain
that has rules (in first-use order), then `-N` for chains only jumped to, then the rules in
call order; tables sorted by name (filter, mangle, nat, raw), empty ones left out.
`transcript()` is what Istio's `DependenciesStub` records for a clean run and what its
golden files hold: the state check (`iptables-save`, `ip6tables-save`), the restore input
line by line, the final `iptables-save` (+ `ip6tables-save` when IPv6 is on).
https://github.com/istio/istio/blob/master/tools/istio-iptables/pkg/builder/iptables_builder_impl.go
"""

from __future__ import annotations

from collections.abc import Sequence

from remora.capture.model import BUILTIN_CHAINS_AND_TARGETS, Rule, RuleSet


def restore(rules: Sequence[Rule]) -> str:
    """The iptables-restore input for RULES ("" when there are none)."""
    tables: dict[str, list[str]] = {"filter": [], "nat": [], "mangle": []}
    seen: set[tuple[str, str]] = set()

    def declare(chain: str, table: str) -> None:
        if (chain, table) in seen:
            return
        seen.add((chain, table))
        if chain not in BUILTIN_CHAINS_AND_TARGETS:
            tables.setdefault(table, []).append(f"-N {chain}")

    for rule in rules:
        declare(rule.chain, rule.table)
    # "Also look for chains we jump to, even if we have no rules in them"
    for rule in rules:
        if len(rule.params) >= 2 and rule.params[-2] == "-j":
            declare(rule.params[-1], rule.table)
    for rule in rules:
        tables.setdefault(rule.table, []).append(rule.text)
    out: list[str] = []
    for table in sorted(tables):
        if tables[table]:
            out += [f"* {table}", *tables[table], "COMMIT"]
    return "".join(line + "\n" for line in out)


def save_command(ipv6: bool) -> str:
    return "ip6tables-save" if ipv6 else "iptables-save"


def transcript(ruleset: RuleSet) -> str:
    """The commands a clean apply runs, as Istio's recording stub writes them."""
    lines = [save_command(False), save_command(True)]
    lines += restore(ruleset.v4).splitlines()
    if ruleset.ipv6:
        lines += restore(ruleset.v6).splitlines()
    lines.append(save_command(False))
    if ruleset.ipv6:
        lines.append(save_command(True))
    return "\n".join(lines)
