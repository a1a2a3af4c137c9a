"""Read ``iptables -t TABLE -L -v`` listings (the form the seed shows) into the rule model.

The listing is what people paste into issues and blog posts, including the seed: counters
(``11627  698K``), ``any``/``lo`` interfaces, ``anywhere``/``localhost``/``!localhost``
addresses, ``tcp dpt:ssh`` service names, and each match and target printed by its
libxt_*.c ``print`` function (``owner UID match 1337``, ``mark match ! 0x53a``,
``redir ports 15006``, ``TPROXY redirect 0.0.0.0:15006 mark 0x539/0xffffffff``, ...).
``-n``, ``--line-numbers`` and listings without ``-v`` are read too, and so are
explanatory ``# ...`` lines and ``$ iptables -t nat -L -v`` prompts mixed in, so text cut
from the seed works unchanged. A listing does not say its table; it comes from the
``-t`` of a pasted command line, from the caller, or from the targets and chains used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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

# the command line above a listing, after a prompt of any common shape (`$ `, `# `,
# `[root@host dir]# `, `user@host:~$ `, `bash-4.4# `, `~ `) or `kubectl exec ... -- `
_COMMAND = re.compile(
    r"^(?:.*?[\s$#>~])?(?:sudo\s+)?ip6?tables(?:-nft|-legacy)?\s+(-.*-L.*)$")
_CHAIN = re.compile(
    r"^Chain (\S+) \((?:policy (\w+)(?: (\S+) packets, (\S+) bytes)?|(\d+) references)\)")
_OPTS = {"--", "-f", "!f"}
_TARGET_PRINTS = {"reject-with", "LOG", "CT", "NOTRACK", "masq", "random", "persistent",
                  "TOS", "DSCP", "CLASSIFY", "NFLOG", "nflog-group", "NFQUEUE", "zone"}


def _num(text: str) -> int:
    mult = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    if text and text[-1] in mult:
        return int(float(text[:-1]) * mult[text[-1]])
    return int(text)


@dataclass
class Listing:
    """One pasted listing: its table (if known) and the rule lines per chain."""

    table: str | None
    chains: dict[str, tuple[str | None, Counters | None, list[str]]]


def split_listings(text: str) -> list[Listing]:
    listings: list[Listing] = []
    current: Listing | None = None
    chain: str | None = None
    for line in text.splitlines():
        cmd = _COMMAND.match(line)
        if cmd:
            table = re.search(r"-t\s*(\w+)", cmd.group(1))
            current = Listing(table.group(1) if table else "filter", {})
            listings.append(current)
            chain = None
            continue
        stripped = line.strip()
        head = _CHAIN.match(stripped)
        if head:
            name = head.group(1)
            if current is None or name in current.chains:
                current = Listing(None, {})
                listings.append(current)
            counters = None
            if head.group(3):
                counters = Counters(_num(head.group(3)), _num(head.group(4)), head.group(3))
            current.chains[name] = (head.group(2), counters, [])
            chain = name
            continue
        if not stripped or stripped.startswith("#") or chain is None or current is None:
            continue
        if stripped.startswith(("pkts ", "num ", "target ")):
            current.chains[chain][2].append(stripped)  # header: keeps the column layout
            continue
        current.chains[chain][2].append(stripped)
    return [x for x in listings if x.chains]


def looks_like_listing(text: str) -> bool:
    return any(_CHAIN.match(line.strip()) for line in text.splitlines())


def _infer_table(listing: Listing, weak: bool = True) -> str | None:
    """The table a listing's own content names: targets only one table allows, the
    built-in chains only one table has; with ``weak``, also the INPUT/FORWARD guess."""
    names = set(listing.chains)
    targets = " ".join(" ".join(lines) for _, _, lines in listing.chains.values())
    if re.search(r"\b(TPROXY|MARK|CONNMARK|TOS|TTL)\b", targets) or ("FORWARD" in names and (
        "PREROUTING" in names
    )):
        return "mangle"
    if re.search(r"\b(REDIRECT|DNAT|SNAT|MASQUERADE)\b", targets) or "POSTROUTING" in names:
        return "nat"
    if re.search(r"\bCT\b|NOTRACK", targets):
        return "raw"
    if weak and names & {"INPUT", "FORWARD"}:
        return "filter"
    return None


def parse_listing(text: str, table: str | None = None,
                  origin: str = "iptables -L -v") -> Ruleset:
    """Every listing in ``text`` merged into one ruleset (one table per listing)."""
    listings = split_listings(text)
    if not listings:
        raise RemoraError("no `Chain NAME (policy ...)` lines found in the iptables listing",
                          "give the output of `iptables -t nat -L -v` (or `-t mangle`)")
    rs = Ruleset(origin=origin)
    for listing in listings:
        name = listing.table if listing.table not in (None, "filter") else None
        # Each listing's own content decides before the caller's hint: a file named
        # nat.txt may hold `iptables -t nat -L -v; iptables -t mangle -L -v` without the
        # prompts, and the hint (from the file name) can only be right for one of them.
        hint = table if len(listings) == 1 else None
        name = (name or _infer_table(listing, weak=False) or hint or _infer_table(listing)
                or listing.table)
        if name is None:
            raise RemoraError("cannot tell which table an iptables listing is from",
                              "paste the `iptables -t nat -L -v` command line above it, or "
                              "name the file nat.txt / mangle.txt")
        tbl = rs.table(name)
        for chain_name, (policy, counters, lines) in listing.chains.items():
            chain = tbl.chain(chain_name)
            chain.policy, chain.policy_counters = policy, counters
            header: list[str] = ["pkts", "bytes", "target", "prot", "opt", "in", "out",
                                 "source", "destination"]
            for line in lines:
                if line.startswith(("pkts ", "num ", "target ")):
                    header = line.split()
                    if "in" not in header:
                        rs.interfaces_known = False  # `-L` without -v
                    continue
                chain.rules.append(parse_rule_line(name, chain_name, len(chain.rules) + 1,
                                                   line, header))
    return rs


def parse_rule_line(table: str, chain: str, index: int, line: str, header: list[str]) -> Rule:
    toks = line.split()
    pos = 0
    counters = None
    if header and header[0] == "num":
        pos += 1
    if "pkts" in header:
        try:
            counters = Counters(_num(toks[pos]), _num(toks[pos + 1]), toks[pos])
        except (ValueError, IndexError) as exc:
            raise RemoraError(f"iptables listing rule in chain {chain} has no counters: "
                              f"{line[:60]!r}", "give the output of `iptables -L -v`") from exc
        pos += 2
    if pos + 2 >= len(toks):
        raise RemoraError(f"iptables listing line in chain {chain} is too short: {line[:60]!r}",
                          "give the unedited output of `iptables -L -v`")
    target = ""
    # The target column is blank for a rule without -j: then the protocol comes first and
    # the opt column (`--`) right after it. ip6tables prints no opt column at all.
    if toks[pos + 1] in _OPTS:
        pass
    elif toks[pos + 2] in _OPTS or (_is_proto(toks[pos + 1]) and not _is_proto(toks[pos])):
        target = toks[pos]
        pos += 1
    matches: list[Match] = []
    proto = toks[pos]
    pos += 1
    if proto != "all":
        neg = proto.startswith("!")
        matches.append(ProtoMatch(neg, proto.lstrip("!")))
    if pos < len(toks) and toks[pos] in _OPTS:
        pos += 1
    if "in" in header:
        for which, tok in (("in", toks[pos]), ("out", toks[pos + 1])):
            if tok not in ("any", "*"):
                matches.append(IfaceMatch(tok.startswith("!"), which, tok.lstrip("!")))
        pos += 2
    for which, tok in (("src", toks[pos]), ("dst", toks[pos + 1])):
        neg = tok.startswith("!")
        raw = tok.lstrip("!")
        if raw in ("anywhere", "0.0.0.0/0", "::/0") and not neg:
            continue
        matches.append(AddrMatch(neg, which, parse_net(raw), raw))
    extra, tgt = parse_extras(toks[pos + 2 :], target)
    matches.extend(extra)
    shown = toks[2:] if counters is not None else toks  # counters are shown on their own
    return Rule(table, chain, index, tuple(matches), tgt, counters, " ".join(shown))


def _is_proto(tok: str) -> bool:
    return tok.lstrip("!") in ("all", "tcp", "udp", "icmp", "sctp", "udplite", "esp", "ah",
                               "ipv6-icmp", "icmpv6") or tok.lstrip("!").isdigit()


def parse_extras(toks: list[str], target: str) -> tuple[list[Match], Target]:
    """The free-form tail of a listing line: match prints, then target prints."""
    out: list[Match] = []
    to_port = on_ip = op = None
    mark: tuple[int, int] | None = None
    i = 0
    neg = False

    def at(k: int) -> str:
        return toks[k] if k < len(toks) else ""

    while i < len(toks):
        tok = toks[i]
        if tok == "!":
            neg, i = True, i + 1
            continue
        m = re.fullmatch(r"([ds])pts?:(!?)(\S+)", tok)
        if m:
            ranges = _ranges(m.group(3))
            which = "dport" if m.group(1) == "d" else "sport"
            if ranges is None:
                out.append(OpaqueMatch(bool(m.group(2)), tok))
            else:
                out.append(PortMatch(bool(m.group(2)), which, ranges, m.group(3)))
            i += 1
        elif tok in ("tcp", "udp", "sctp") and re.match(r"[ds]pts?:|flags:", at(i + 1)):
            i += 1  # the protocol module's name; its options follow
        elif tok == "multiport" and at(i + 1) in ("dports", "sports", "ports"):
            k = i + 2
            mneg = neg
            if at(k) == "!":
                mneg, k = True, k + 1
            value = at(k).lstrip("!")
            mneg = mneg or at(k).startswith("!")
            ranges = _ranges(value)
            which = "sport" if at(i + 1) == "sports" else "dport"
            out.append(PortMatch(mneg, which, ranges or ((0, -1),), value, multiport=True))
            i = k + 1
        elif tok == "owner" and at(i + 1) in ("UID", "GID") and at(i + 2) == "match":
            raw = at(i + 3)
            out.append(OwnerMatch(neg, "uid" if at(i + 1) == "UID" else "gid",
                                  parse_owner_ids(raw), raw))
            i += 4
        elif tok in ("mark", "connmark") and at(i + 1) == "match":
            k = i + 2
            mneg = neg
            if at(k) == "!":
                mneg, k = True, k + 1
            mark_value, mark_mask = parse_mark(at(k))
            out.append(MarkMatch(mneg, tok == "connmark", mark_value, mark_mask))
            i = k + 1
        elif tok in ("ctstate", "state"):
            out.append(StateMatch(neg, frozenset(at(i + 1).split(","))))
            i += 2
        elif tok == "/*":
            end = toks.index("*/", i) if "*/" in toks[i:] else len(toks) - 1
            out.append(OpaqueMatch(False, " ".join(toks[i : end + 1]), harmless=True))
            i = end + 1
        elif tok == "redir" and at(i + 1) == "ports":
            to_port = int(at(i + 2).split("-")[0])
            i += 3
        elif tok == "TPROXY" and at(i + 1) == "redirect":
            on_ip, _, port = at(i + 2).rpartition(":")
            to_port = int(port)
            i += 3
            if at(i) == "mark":
                mark = parse_mark(at(i + 1))
                i += 2
        elif tok in ("MARK", "CONNMARK") and at(i + 1) in ("set", "xset", "and", "or", "xor",
                                                           "save", "restore"):
            op = at(i + 1)
            i += 2
            if op not in ("save", "restore"):
                mark = parse_mark(at(i))
                i += 1
            if tok == "CONNMARK" and op == "and" and mark == (0, 0xFFFFFFFF):
                # iptables-nft lists Istio's --save-mark / --restore-mark this way (the seed
                # shows it for both); which one it is follows from the match on the rule.
                op = "restore" if any(isinstance(x, MarkMatch) and x.conn for x in out) else "save"
                mark = None
            while at(i) == "mask":
                i += 2
        else:
            words = [tok]
            while i + 1 < len(toks) and toks[i + 1] != "!" and not _starts_known(toks, i + 1):
                i += 1
                words.append(toks[i])
            # A target's own print (REJECT's `reject-with ...`, DNAT's `to:...`, `CT zone 1`)
            # is not a match: it must not make the rule's match uncertain.
            is_target_print = tok in _TARGET_PRINTS or tok.startswith("to:")
            out.append(OpaqueMatch(neg, ("! " if neg else "") + " ".join(words),
                                   harmless=is_target_print))
            i += 1
        neg = False
    raw = target
    return out, Target(target, to_port=to_port, on_ip=on_ip, mark=mark, op=op, raw=raw)


def _starts_known(toks: list[str], i: int) -> bool:
    tok = toks[i]
    return bool(re.fullmatch(r"[ds]pts?:\S+", tok)) or tok in (
        "tcp", "udp", "multiport", "owner", "mark", "connmark", "ctstate", "state", "/*",
        "redir", "TPROXY", "MARK", "CONNMARK")


def _ranges(text: str) -> tuple[tuple[int, int], ...] | None:
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        lo_text, sep, hi_text = part.partition(":")
        # as iptables(8) reads a range: an omitted first port is 0, an omitted last 65535
        lo = parse_port(lo_text) if lo_text or not sep else 0
        hi = parse_port(hi_text) if hi_text else (65535 if sep else lo)
        if lo is None or hi is None:
            return None
        out.append((lo, hi))
    return tuple(out)
