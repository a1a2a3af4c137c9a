"""Reading iptables-save: which rules are Istio's, and the restore text that removes them.

iptables-save prints rules in the kernel's canonical form (1337 becomes 0x539, TPROXY's
arguments are reordered, `-m tcp` appears), so the model's own text cannot be compared with
it directly. Instead the model's rules are canonicalised by iptables itself: applied in a
throwaway network namespace (`unshare --net`, gone when the command exits) and saved
there. Two saves are then compared on their Istio part only:

- every ISTIO_* chain and all of its rules, in order;
- in built-in chains, every rule that jumps to an ISTIO_* chain, plus every rule equal to
  one the model puts into a built-in chain (exclude-interface RETURNs, the TPROXY mangle
  marks, the raw DNS jumps), in order. Foreign rules are ignored, and never removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
# The tables iptables-save prints, in the order Istio's own state check reads them.
TABLES = ("filter", "nat", "mangle", "raw", "security")


@dataclass
class TableState:
    chains: list[str] = field(default_factory=list)  # declared chains, in save order
    policies: dict[str, str] = field(default_factory=dict)
    rules: list[tuple[str, str]] = field(default_factory=list)  # (chain, "-A chain ...")


def parse_save(text: str) -> dict[str, TableState]:
    tables: dict[str, TableState] = {}
    current: TableState | None = None
    for line in text.splitlines():
        line = line.rstrip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), TableState())
        elif current is None:
            continue
        elif line.startswith(":"):
            name, policy = [*line[1:].split(), "-"][:2]
            current.chains.append(name)
            current.policies[name] = policy
        elif line.startswith("-A "):
            current.rules.append((line.split()[1], line))
    return tables


def jump_target(rule: str) -> str | None:
    words = rule.split()
    for i, word in enumerate(words[:-1]):
        if word in ("-j", "--jump", "-g", "--goto"):
            return words[i + 1].strip("'\"")
    return None


def is_istio_chain(name: str) -> bool:
    return name.startswith("ISTIO_")


def builtin_rules(tables: dict[str, TableState]) -> dict[str, frozenset[str]]:
    """The rules in built-in chains, per table (used on the canonicalised model)."""
    return {
        name: frozenset(rule for chain, rule in t.rules if chain in BUILTIN_CHAINS)
        for name, t in tables.items()
    }


View = dict[str, dict[str, tuple[str, ...]]]


def istio_view(tables: dict[str, TableState], ours: dict[str, frozenset[str]]) -> View:
    """Per table: every ISTIO_* chain (even empty) and the Istio rules of built-in chains."""
    view: View = {}
    for name, t in tables.items():
        chains: dict[str, list[str]] = {c: [] for c in t.chains if is_istio_chain(c)}
        for chain, rule in t.rules:
            ours_builtin = chain in BUILTIN_CHAINS and (
                is_istio_chain(jump_target(rule) or "") or rule in ours.get(name, frozenset()))
            if is_istio_chain(chain) or ours_builtin:
                chains.setdefault(chain, []).append(rule)
        if chains:
            view[name] = {chain: tuple(rules) for chain, rules in chains.items()}
    return view


def has_builtin_rules(tables: dict[str, TableState]) -> bool:
    return any(chain in BUILTIN_CHAINS for t in tables.values() for chain, _ in t.rules)


def cleanup_restore(tables: dict[str, TableState], ours: dict[str, frozenset[str]]) -> str:
    """Restore input deleting the Istio part of TABLES: -D each built-in-chain rule (by its
    saved text, which restore re-parses), then -F and -X every ISTIO_* chain. One restore
    is one transaction, so it either all goes or nothing does."""
    out: list[str] = []
    for name, chains in istio_view(tables, ours).items():
        lines: list[str] = []
        for chain, rules in chains.items():
            if chain in BUILTIN_CHAINS:
                lines += ["-D" + rule[2:] for rule in rules]
        istio = [chain for chain in chains if is_istio_chain(chain)]
        lines += [f"-F {chain}" for chain in istio]
        lines += [f"-X {chain}" for chain in istio]
        if lines:
            out += [f"*{name}", *lines, "COMMIT"]
    return "".join(line + "\n" for line in out)


def merge_restore(first: str, second: str) -> str:
    """One restore input running FIRST's lines then SECOND's, table by table."""
    blocks: dict[str, list[str]] = {}
    for text in (first, second):
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
                blocks.setdefault(table, [])
            elif line != "COMMIT" and table:
                blocks[table].append(line)
    out: list[str] = []
    for table, lines in blocks.items():
        out += [f"* {table}", *lines, "COMMIT"]
    return "".join(line + "\n" for line in out)


def empty_tables(tables: dict[str, TableState]) -> list[str]:
    """Tables holding nothing: built-in chains only, all ACCEPT, no rules."""
    return [
        name for name, t in tables.items()
        if not t.rules and all(c in BUILTIN_CHAINS and t.policies.get(c) == "ACCEPT"
                               for c in t.chains)
    ]


def describe(view: View) -> list[str]:
    """One line per rule or chain, for verify's report."""
    lines: list[str] = []
    for table, chains in sorted(view.items()):
        for chain, rules in chains.items():
            if is_istio_chain(chain):
                lines.append(f"{table}: chain {chain}")
            lines += [f"{table}: {rule}" for rule in rules]
    return lines
