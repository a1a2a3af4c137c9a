"""Istio's native nftables capture as evidence: ``nft list ruleset`` output or the
``add rule inet ...`` script istio-iptables applies with ``nft -f`` (its nft goldens).

Istio's nftables mode (tools/istio-nftables) writes ``inet`` tables ``istio-proxy-nat``,
``istio-proxy-mangle`` and ``istio-proxy-raw`` whose chains and rules mirror the iptables
ones: base chains ``prerouting``/``output`` on the same hooks, ``istio-inbound``,
``istio-output``, ... ; an ``inet`` rule with an ``ip`` match is IPv4's, with ``ip6``
IPv6's, with neither both families'. Each rule is written as the equivalent iptables rule
(``oifname lo`` -> ``-o lo``, ``meta skuid 1337`` -> ``-m owner --uid-owner 1337``,
``redirect to :15001`` -> ``-j REDIRECT --to-ports 15001``, ``tproxy ip to :15006 meta
mark set 0x539`` -> ``-j TPROXY --on-port 15006 --tproxy-mark 0x539/0xffffffff``, ...)
and read by the iptables-save reader, so one walker serves both (pure).
"""

from __future__ import annotations

import re

from remora.diagnose.iptables.model import Ruleset
from remora.diagnose.iptables.save import parse_iptables_save
from remora.errors import RemoraError

_TABLES = {"nat": "nat", "mangle": "mangle", "raw": "raw", "filter": "filter"}
_ADD = re.compile(r"^\s*(add|insert)\s+rule\s+(?:inet|ip|ip6)\s+(\S+)\s+(\S+)\s+(.*)$")
_TABLE = re.compile(r"^\s*table\s+(inet|ip|ip6)\s+(\S+)\s*\{")
_CHAIN = re.compile(r"^\s*chain\s+(\S+)\s*\{")


def looks_like_nft(text: str) -> bool:
    """Istio's native ``inet`` tables, and ``nft list ruleset`` of the ``ip``/``ip6``
    tables iptables-nft keeps (``table ip nat { chain ISTIO_INBOUND ...``)."""
    return bool(re.search(r"^\s*(?:add|insert)\s+rule\s+inet\s|"
                          r"^\s*table\s+(?:inet|ip|ip6)\s+\S+\s*\{", text, re.M))


def _table(name: str) -> str:
    """``istio-proxy-nat`` -> nat (the iptables table on the same hooks)."""
    last = name.rsplit("-", 1)[-1]
    return _TABLES.get(last, last)


def _chain(name: str) -> str:
    return name.upper().replace("-", "_")


def _sets(text: str) -> str:
    """``{ 53, 15008 }`` -> ``53,15008`` (one word), quotes off interface names."""
    text = re.sub(r"\{\s*([^{}]*?)\s*\}", lambda m: ",".join(
        p.strip() for p in m.group(1).split(",")), text)
    return text.replace('"', "")


class _Rule:
    """One nft rule as iptables words, and the families it applies to."""

    def __init__(self, words: list[str]) -> None:
        self.args: list[str] = []
        self.target: list[str] = []
        self.families = {4, 6}
        self.counters: tuple[str, str] | None = None
        self.proto = ""
        self.unknown: list[str] = []
        self._read(words)

    def _neg(self, words: list[str], i: int) -> tuple[bool, int]:
        if i < len(words) and words[i] == "!=":
            return True, i + 1
        return False, i

    def _add(self, neg: bool, *words: str) -> None:
        self.args.extend(["!", *words] if neg else list(words))

    def _read(self, w: list[str]) -> None:
        i = 0
        mark_set: str | None = None
        while i < len(w):
            tok = w[i]
            if tok == "meta" and i + 1 < len(w) and w[i + 1] in (
                    "l4proto", "skuid", "skgid", "mark", "iifname", "oifname"):
                i += 1
                tok = w[i]
                if tok == "mark" and w[i + 1:i + 2] == ["set"]:
                    value = w[i + 2] if i + 2 < len(w) else ""
                    if value == "ct" and w[i + 3:i + 4] == ["mark"]:
                        self.target = ["CONNMARK", "--restore-mark"]
                        i += 4
                        continue
                    mark_set = value
                    i += 3
                    continue
            if tok == "counter":
                if w[i + 1:i + 2] == ["packets"] and i + 4 < len(w):
                    self.counters = (w[i + 2], w[i + 4])
                    i += 5
                else:
                    i += 1
                continue
            if tok in ("iifname", "oifname"):
                neg, j = self._neg(w, i + 1)
                self._add(neg, "-i" if tok == "iifname" else "-o", w[j])
                i = j + 1
            elif tok == "l4proto":
                neg, j = self._neg(w, i + 1)
                self.proto = w[j]
                self._add(neg, "-p", w[j])
                i = j + 1
            elif tok in ("ip", "ip6") and i + 1 < len(w) and w[i + 1] in ("saddr", "daddr"):
                self.families &= {4} if tok == "ip" else {6}
                neg, j = self._neg(w, i + 2)
                self._add(neg, "-s" if w[i + 1] == "saddr" else "-d", w[j])
                i = j + 1
            elif tok in ("tcp", "udp") and i + 1 < len(w) and w[i + 1] in ("dport", "sport"):
                if not self.proto:
                    self.proto = tok
                    self.args.extend(["-p", tok])
                neg, j = self._neg(w, i + 2)
                value = w[j]
                if "," in value:
                    self.args.extend(["-m", "multiport"])
                    self._add(neg, f"--{w[i + 1]}s", value)
                else:
                    self._add(neg, f"--{w[i + 1]}", value)
                i = j + 1
            elif tok in ("skuid", "skgid"):
                neg, j = self._neg(w, i + 1)
                self.args.extend(["-m", "owner"])
                self._add(neg, "--uid-owner" if tok == "skuid" else "--gid-owner", w[j])
                i = j + 1
            elif tok == "mark":
                neg, j = self._neg(w, i + 1)
                self.args.extend(["-m", "mark"])
                self._add(neg, "--mark", w[j])
                i = j + 1
            elif tok == "ct" and i + 1 < len(w):
                what = w[i + 1]
                if what == "state":
                    neg, j = self._neg(w, i + 2)
                    self.args.extend(["-m", "conntrack"])
                    self._add(neg, "--ctstate", w[j].upper())
                    i = j + 1
                elif what == "mark" and w[i + 2:i + 3] == ["set"]:
                    # `ct mark set [meta] mark`: save the packet's mark to the connection
                    self.target = ["CONNMARK", "--save-mark"]
                    i += 4 if w[i + 3:i + 4] != ["meta"] else 5
                elif what == "mark":
                    neg, j = self._neg(w, i + 2)
                    self.args.extend(["-m", "connmark"])
                    self._add(neg, "--mark", w[j])
                    i = j + 1
                elif what == "zone" and w[i + 2:i + 3] == ["set"]:
                    self.target = ["CT", "--zone", w[i + 3]]
                    i += 4
                else:
                    self.unknown.append(" ".join(w[i:i + 2]))
                    i += 2
            elif tok in ("return", "accept", "drop"):
                if not self.target or self.target[0] == "MARK":
                    self.target = self.target or [tok.upper()]
                i += 1
            elif tok in ("jump", "goto"):
                self.target = [("-g:" if tok == "goto" else "") + _chain(w[i + 1])]
                i += 2
            elif tok == "redirect":
                port = w[i + 2].lstrip(":") if w[i + 1:i + 2] == ["to"] else ""
                self.target = ["REDIRECT", "--to-ports", port] if port else ["REDIRECT"]
                i += 3 if port else 1
            elif tok == "tproxy":
                j = i + 1
                if j < len(w) and w[j] in ("ip", "ip6"):
                    self.families &= {4} if w[j] == "ip" else {6}
                    j += 1
                port = w[j + 1].rsplit(":", 1)[-1] if w[j:j + 1] == ["to"] else ""
                self.target = ["TPROXY", "--on-port", port]
                i = j + 2
            else:
                self.unknown.append(tok)
                i += 1
        if mark_set is not None:
            if self.target and self.target[0] == "TPROXY":
                self.target += ["--tproxy-mark", f"{mark_set}/0xffffffff"]
            else:
                self.target = ["MARK", "--set-xmark", f"{mark_set}/0xffffffff"]

    def iptables(self, chain: str) -> str:
        target = self.target or ["CONTINUE"]
        jump = ["-g", target[0][3:]] if target[0].startswith("-g:") else ["-j", *target]
        if target == ["CONTINUE"]:
            jump = []  # a rule that only counts
        words = ["-A", _chain(chain), *self.args, *jump]
        if self.unknown:
            words += ["-m", "comment", "--comment", "nft: " + " ".join(self.unknown)]
        prefix = f"[{self.counters[0]}:{self.counters[1]}] " if self.counters else ""
        return prefix + " ".join(_quote(x) for x in words)


def _quote(word: str) -> str:
    return word if re.fullmatch(r"[\w@%+=:,./!-]+", word) else f'"{word}"'


def to_iptables_save(text: str) -> dict[int, str]:
    """The nft rules as iptables-save text per family (4, 6)."""
    rules: dict[int, dict[str, list[str]]] = {4: {}, 6: {}}
    chains: dict[str, list[str]] = {}

    def add(table: str, chain: str, rule: _Rule, insert_at: int | None = None) -> None:
        tbl = _table(table)
        chains.setdefault(tbl, [])
        if _chain(chain) not in chains[tbl]:
            chains[tbl].append(_chain(chain))
        line = rule.iptables(chain)
        if insert_at is not None:
            line = line.replace(f"-A {_chain(chain)} ", f"-I {_chain(chain)} {insert_at + 1} ",
                                1)
        for fam in sorted(rule.families):
            rules[fam].setdefault(tbl, []).append(line)

    table = chain = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        m = _ADD.match(line)
        if m:
            verb, tbl, ch, rest = m.groups()
            index = None
            im = re.match(r"index\s+(\d+)\s+(.*)$", rest)
            if verb == "insert":
                index = int(im.group(1)) if im else 0
                rest = im.group(2) if im else rest
            add(tbl, ch, _Rule(_sets(rest).split()), index)
            continue
        if (t := _TABLE.match(line)) is not None:
            table, chain = t.group(2), ""
            continue
        if (c := _CHAIN.match(line)) is not None and table:
            chain = c.group(1)
            chains.setdefault(_table(table), [])
            if _chain(chain) not in chains[_table(table)]:
                chains[_table(table)].append(_chain(chain))
            continue
        s = line.strip()
        if s == "}" or s.startswith(("type ", "policy ", "add ", "flush ", "delete ")):
            if s == "}" and chain:
                chain = ""
            elif s == "}":
                table = ""
            continue
        if table and chain:
            add(table, chain, _Rule(_sets(s).split()))
    out: dict[int, str] = {}
    for fam in (4, 6):
        parts = []
        for tbl, names in chains.items():
            body = rules[fam].get(tbl, [])
            parts.append(f"*{tbl}")
            parts += [f":{n} ACCEPT [0:0]" if n.isupper() and n in (
                "PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD") else f":{n} - [0:0]"
                      for n in names]
            parts += body
            parts.append("COMMIT")
        out[fam] = "\n".join(parts) + "\n"
    return out


def parse_nft(text: str, origin: str = "nft list ruleset") -> list[Ruleset]:
    """The IPv4 and the IPv6 rules of Istio's nft tables, in that order."""
    opaque = re.search(r"\bxt (target|match) (\S+)", text)
    if opaque:
        # iptables-nft keeps an extension nft has no expression for (TPROXY among them)
        # as an xtables blob that `nft list ruleset` prints as `xt target TPROXY`, without
        # its port or mark; walking it as anything would be a guess
        raise RemoraError(
            f"{origin}: nft shows the iptables-nft rule `xt {opaque.group(1)} "
            f"{opaque.group(2)}` without its options (port, mark), so it cannot be walked",
            "give `iptables-save` (iptables-nft-save) from the same pod's network namespace: "
            "it prints those rules whole")
    saved = to_iptables_save(text)
    out: list[Ruleset] = []
    for fam in (4, 6):
        families = parse_iptables_save(saved[fam], origin=f"{origin} (nft, IPv{fam})")
        if not families:
            continue
        rs = families[0]
        rs.family = fam
        out.append(rs)
    if not out:
        raise RemoraError("no nft rules of Istio's tables found",
                          "give `nft list ruleset` output from the pod's network namespace")
    return out
