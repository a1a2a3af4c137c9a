"""Read ``iptables-save`` output (all tables) into the rule model.

Also accepts what Istio's goldens and istio-init logs contain: ``iptables-restore`` input
(``* nat`` with a space, ``-N`` lines, ``-I CHAIN N`` inserts), the recording stub's
``iptables-save`` / ``ip6tables-save`` marker lines, ``iptables-save -c`` counters
(``[pkts:bytes] -A ...``), and the pre-1.24 one-command-per-line form
(``iptables -t nat -A ISTIO_OUTPUT ...``). A second block for a table already read is the
IPv6 block (the goldens put the ip6tables-restore input after the IPv4 one).
"""

from __future__ import annotations

import re
import shlex

from remora.diagnose.iptables.model import (
    AddrMatch,
    Counters,
    IfaceMatch,
    MarkMatch,
    Match,
    OpaqueMatch,
    OwnerMatch,
    PortMatch,
    ProtoMatch,
    Rule,
    Ruleset,
    StateMatch,
    Target,
    parse_mark,
    parse_net,
    parse_owner_ids,
    parse_port,
)
from remora.errors import RemoraError


def _port_ranges(text: str) -> tuple[tuple[int, int], ...] | None:
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        lo_text, sep, hi_text = part.replace("-", ":").partition(":")
        # iptables(8) tcp --dport: an omitted first port is 0, an omitted last one 65535
        lo = parse_port(lo_text) if lo_text else 0
        hi = parse_port(hi_text) if hi_text else (65535 if sep else lo)
        if lo is None or hi is None:
            return None
        out.append((lo, hi))
    return tuple(out)


def parse_target(name: str, opts: list[str], goto: bool = False) -> Target:
    to_port = on_ip = op = None
    mark: tuple[int, int] | None = None
    i = 0
    while i < len(opts):
        opt = opts[i]
        val = opts[i + 1] if i + 1 < len(opts) else ""
        if opt in ("--to-ports", "--to-port", "--on-port"):
            to_port = int(val.split("-")[0])
            i += 1
        elif opt == "--on-ip":
            on_ip = val
            i += 1
        elif opt in ("--tproxy-mark", "--set-mark", "--set-xmark"):
            mark = parse_mark(val)
            op = op or "set"
            i += 1
        elif opt in ("--and-mark", "--or-mark", "--xor-mark"):
            mark = parse_mark(val)
            op = opt[2:-5]
            i += 1
        elif opt in ("--save-mark", "--restore-mark"):
            op = opt[2:-5]
        elif opt.startswith("--") and i + 1 < len(opts) and not opts[i + 1].startswith("--"):
            i += 1  # an option with a value we do not need (--nfmask, --zone, ...)
        i += 1
    raw = " ".join([name, *opts]).strip()
    return Target(name, to_port=to_port, on_ip=on_ip, mark=mark, op=op, goto=goto, raw=raw)


def parse_rule_args(args: list[str]) -> tuple[tuple[Match, ...], Target]:
    """The part of a rule after ``-A CHAIN``: matches, then ``-j TARGET options``."""
    matches: list[Match] = []
    module = ""
    neg = False
    i = 0
    while i < len(args):
        tok = args[i]
        val = args[i + 1] if i + 1 < len(args) else ""
        if tok == "!":
            neg = True
            i += 1
            continue
        if tok in ("-j", "--jump", "-g", "--goto"):
            return tuple(matches), parse_target(val, args[i + 2 :], goto=tok in ("-g", "--goto"))
        if tok in ("-s", "--source", "--src", "-d", "--destination", "--dst"):
            which = "src" if tok in ("-s", "--source", "--src") else "dst"
            matches.append(AddrMatch(neg, which, parse_net(val), val))
        elif tok in ("-i", "--in-interface", "-o", "--out-interface"):
            matches.append(IfaceMatch(neg, "in" if tok.startswith(("-i", "--in")) else "out", val))
        elif tok in ("-p", "--protocol"):
            matches.append(ProtoMatch(neg, val.lower()))
        elif tok in ("-m", "--match"):
            module = val
        elif tok in ("--dport", "--destination-port", "--sport", "--source-port",
                     "--dports", "--sports", "--destination-ports", "--source-ports"):
            ranges = _port_ranges(val)
            which = "dport" if tok.startswith(("--d", "--destination")) else "sport"
            if ranges is None:
                matches.append(OpaqueMatch(neg, f"{'! ' if neg else ''}{tok} {val}"))
            else:
                multi = module == "multiport" or tok.endswith("s")
                matches.append(PortMatch(neg, which, ranges, val, multiport=multi))
        elif tok in ("--uid-owner", "--gid-owner"):
            raw = val
            matches.append(OwnerMatch(neg, "uid" if tok == "--uid-owner" else "gid",
                                      parse_owner_ids(val), raw))
        elif tok == "--mark":
            value, mask = parse_mark(val)
            matches.append(MarkMatch(neg, module == "connmark", value, mask))
        elif tok in ("--ctstate", "--state"):
            matches.append(StateMatch(neg, frozenset(s.upper() for s in val.split(","))))
        elif tok == "--comment":
            matches.append(OpaqueMatch(False, f"/* {val} */", harmless=True))
        else:
            # An option we give no semantics: keep it (and its values) for the trace.
            words = [tok]
            while i + 1 < len(args) and not args[i + 1].startswith("-") and args[i + 1] != "!":
                i += 1
                words.append(args[i])
            matches.append(OpaqueMatch(neg, ("! " if neg else "") + " ".join(words)))
            neg = False
            i += 1
            continue
        neg = False
        i += 2
    return tuple(matches), Target("")


def _counters(text: str) -> Counters | None:
    inner = text.strip("[]")
    pkts, _, byts = inner.partition(":")
    if not (pkts.isdigit() and byts.isdigit()):
        return None
    return Counters(int(pkts), int(byts), pkts)


def looks_like_save(text: str) -> bool:
    for line in text.splitlines():
        s = line.strip()
        if s.startswith(("*nat", "*mangle", "*filter", "*raw", "* ", "-A ", "-P ", ":")) or (
            s.startswith(("iptables ", "ip6tables ")) and " -A " in f" {s} "
        ):
            return True
    return False


# `$ iptables -t nat -S` pasted above its output: the table of the lines that follow
_S_PROMPT = re.compile(r"^(?:[$#]\s*)?(?:sudo\s+)?ip6?tables(?:-nft|-legacy)?\s+(.*-S.*)$")
_TARGET_TABLE = (("REDIRECT", "nat"), ("DNAT", "nat"), ("SNAT", "nat"), ("MASQUERADE", "nat"),
                 ("TPROXY", "mangle"), ("MARK", "mangle"), ("CONNMARK", "mangle"), ("CT", "raw"))


def _guess_table(text: str) -> str:
    """For `iptables -S` output, which has no `*table` line: the table its targets need."""
    for target, table in _TARGET_TABLE:
        if re.search(rf"-j {target}\b", text):
            return table
    return ""


# The built-in chains `iptables -t TABLE -S` prints a `-P` line for, per table (the
# kernel's iptable_{nat,mangle,filter,raw}.c hook masks): the set of `-P` lines opening a
# section says which table it is.
_BUILTIN = {"mangle": frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}),
            "nat": frozenset({"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}),
            "filter": frozenset({"INPUT", "FORWARD", "OUTPUT"}),
            "raw": frozenset({"PREROUTING", "OUTPUT"})}
# Chains istio-iptables creates only in the mangle table (tools/istio-iptables/pkg/capture/
# run.go: ISTIO_DIVERT and ISTIO_TPROXY belong to the TPROXY inbound capture).
_MANGLE_CHAINS = re.compile(r"^\s*-[AN]\s+(?:ISTIO_DIVERT|ISTIO_TPROXY)\b", re.M)
_NAT_ONLY = re.compile(r"-j (?:REDIRECT|DNAT|SNAT|MASQUERADE)\b")
_MANGLE_ONLY = re.compile(r"-j (?:TPROXY|MARK|CONNMARK)\b")


def _s_sections(text: str) -> list[tuple[int, str]]:
    """`iptables -t nat -S; iptables -t mangle -S` pasted as one text without prompts:
    each table's output starts over with its `-P` lines, then `-N`, then `-A` (iptables'
    `-S` order), so a `-P` or `-N` after an `-A` starts the next table. Returns (first line
    number, text) per section."""
    sections: list[tuple[int, list[str]]] = [(1, [])]
    seen_rule = False
    for lineno, line in enumerate(text.splitlines(), 1):
        s = re.sub(r"^\[\d+:\d+\]\s*", "", line.strip())
        if s.startswith(("-P ", "-N ")) and seen_rule:
            sections.append((lineno, []))
            seen_rule = False
        elif s.startswith(("-A ", "-I ")):
            seen_rule = True
        sections[-1][1].append(line)
    return [(start, "\n".join(lines)) for start, lines in sections if lines]


def _section_table(text: str) -> str:
    """The table of one `-S` section, from the evidence in it: its `-P` chains, then the
    targets only one table allows (TPROXY/MARK/CONNMARK: mangle; REDIRECT/DNAT: nat), then
    Istio's mangle-only chains. "" when it cannot tell; "?" when it holds both nat-only
    and mangle-only targets (two tables run together with no boundary)."""
    policies = frozenset(re.findall(r"^\s*-P\s+(\w+)", text, re.M))
    if len(policies) >= 2:
        for table, builtin in _BUILTIN.items():
            if policies == builtin:
                return table
    nat, mangle = bool(_NAT_ONLY.search(text)), bool(_MANGLE_ONLY.search(text))
    if nat and mangle:
        return "?"
    if mangle or _MANGLE_CHAINS.search(text):
        return "mangle"
    if nat:
        return "nat"
    return _guess_table(text)


def _s_line_tables(text: str, hint: str | None) -> dict[int, str]:
    """For `-S` text without `*table` lines or prompts: the table of each line."""
    out: dict[int, str] = {}
    sections = _s_sections(text)
    for start, body in sections:
        table = _section_table(body)
        if table == "?":
            raise RemoraError(
                f"the iptables -S text from line {start} mixes nat rules (REDIRECT) and mangle "
                "rules (TPROXY/MARK) with no boundary between the tables",
                "give `iptables-save` output, or paste each table's output under its own "
                "command line (`$ iptables -t nat -S`, `$ iptables -t mangle -S`)")
        # a file name's nat/mangle names the table only of a file holding one table
        table = table or (hint if len(sections) == 1 else "") or ""
        for k in range(start, start + body.count("\n") + 1):
            out[k] = table
    return out


def parse_iptables_save(text: str, origin: str = "iptables-save",
                        table_hint: str | None = None) -> list[Ruleset]:
    """All address families found, IPv4 first. Raises RemoraError on a line it cannot read."""
    families: list[Ruleset] = [Ruleset(origin=origin, family=4)]
    seen: set[str] = set()
    table = ""
    line_tables: dict[int, str] = {}
    first_table = re.search(r"^\s*\*\s*\w+", text, re.M)
    if not first_table and not re.search(r"^\s*(?:[$#]\s*)?(?:sudo\s+)?ip6?tables", text,
                                         re.M):
        # `iptables -t TABLE -S` output, one table or several run together (no prompt
        # naming the table, no `iptables -t TABLE -A ...` commands carrying their own)
        line_tables = _s_line_tables(text, table_hint)
    elif not first_table:
        table = table_hint or _guess_table(text)
    elif re.search(r"^\s*(?:\[\d+:\d+\]\s*)?-A ", text[:first_table.start()], re.M):
        # rules pasted from the middle of a table, before the next `*table` line
        table = table_hint or _guess_table(text[:first_table.start()])
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if line_tables:
            table = line_tables.get(lineno, table)
        prompt = _S_PROMPT.match(s)
        if prompt:
            named = re.search(r"-t\s*(\w+)", prompt.group(1))
            table = named.group(1) if named else "filter"
            continue
        if not s or s.startswith(("#", "$")) or s in ("COMMIT", "iptables-save",
                                                       "ip6tables-save"):
            continue
        counters = None
        if s.startswith("[") and "]" in s:
            counters = _counters(s[: s.index("]") + 1])
            s = s[s.index("]") + 1 :].strip()
        if s.startswith("*"):
            table = s[1:].strip()
            if table in seen:  # the IPv6 block of a golden
                families.append(Ruleset(origin=origin, family=6))
                seen.clear()
            seen.add(table)
            families[-1].table(table)
            continue
        try:
            words = shlex.split(s)
        except ValueError as exc:
            raise RemoraError(f"iptables-save line {lineno} is not valid shell words: {exc}",
                              "give the unedited output of `iptables-save`") from exc
        if words[0] in ("iptables", "ip6tables", "iptables-nft", "iptables-legacy"):
            words = words[1:]
            if "-t" in words:
                at = words.index("-t")
                table = words[at + 1]
                del words[at : at + 2]
            table = table or "filter"
        if s.startswith(":"):
            name = words[0][1:]
            chain = families[-1].table(table).chain(name)
            if len(words) > 1 and words[1] != "-":
                chain.policy = words[1]
                if len(words) > 2:
                    chain.policy_counters = _counters(words[2])
            continue
        if not table:
            raise RemoraError(f"iptables-save line {lineno} comes before any `*table` line",
                              "give the whole `iptables-save` output (or name an "
                              "`iptables -S` file nat.txt / mangle.txt)")
        rs = families[-1]
        if words[0] in ("-N", "--new-chain"):
            rs.table(table).chain(words[1])
            continue
        if words[0] in ("-P", "--policy"):
            rs.table(table).chain(words[1]).policy = words[2]
            continue
        if words[0] not in ("-A", "--append", "-I", "--insert") or len(words) < 2:
            raise RemoraError(f"iptables-save line {lineno} is not a rule: {s[:60]!r}",
                              "give the output of `iptables-save` (or iptables-restore input)")
        chain_name = words[1]
        rest = words[2:]
        position = 0
        if words[0] in ("-I", "--insert"):
            position = 1
            if rest and rest[0].isdigit():
                position = int(rest[0])
                rest = rest[1:]
        matches, target = parse_rule_args(rest)
        source = " ".join(["-A", chain_name, *(_quote(w) for w in rest)])
        if any(isinstance(m, AddrMatch) and m.net is not None and m.net.version == 6
               for m in matches):
            rs.family = 6
        rule = Rule(table, chain_name, 0, matches, target, counters, source)
        chain = rs.table(table).chain(chain_name)
        if position:
            chain.rules.insert(position - 1, rule)
        else:
            chain.rules.append(rule)
    for rs in families:
        for tbl in rs.tables.values():
            for chain in tbl.chains.values():
                chain.rules = [_renumber(r, n) for n, r in enumerate(chain.rules, 1)]
    return [f for f in families if f.tables]


def _quote(word: str) -> str:
    return word if re.fullmatch(r"[\w@%+=:,./!-]+", word) else shlex.quote(word)


def _renumber(rule: Rule, index: int) -> Rule:
    return Rule(rule.table, rule.chain, index, rule.matches, rule.target, rule.counters,
                rule.source)

