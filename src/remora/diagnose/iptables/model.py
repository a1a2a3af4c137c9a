"""One rule model for iptables evidence, whatever form it came in.

Both readers (``iptables_save`` for ``iptables-save`` / ``iptables-restore`` text and the
goldens, ``iptables_listing`` for ``iptables -t nat -L -v``) produce these objects, and the
packet walk (``iptables_walk``) evaluates them. Only the matches Istio's capture rules use
have semantics here (istio/istio tools/istio-iptables/pkg/capture/run.go): addresses,
interfaces, protocol, tcp/udp ports, multiport, owner, mark, connmark, conntrack state.
Anything else is kept as an ``OpaqueMatch`` so it is shown, and evaluated as "unknown".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names `iptables -L` prints for ports (from /etc/services) that appear around Istio pods.
# `-L` without `-n` shows `tcp dpt:ssh`; `-L -n` shows `tcp dpt:22`.
SERVICE_PORTS: dict[str, int] = {
    "ftp-data": 20, "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53,
    "http": 80, "www": 80, "pop3": 110, "sunrpc": 111, "ntp": 123, "imap": 143, "imap2": 143,
    "snmp": 161, "ldap": 389, "https": 443, "microsoft-ds": 445, "submission": 587,
    "ldaps": 636, "imaps": 993, "pop3s": 995, "socks": 1080, "openvpn": 1194,
    "ms-sql-s": 1433, "mysql": 3306, "postgresql": 5432, "amqp": 5672, "x11": 6000,
    "redis": 6379, "http-alt": 8080, "webcache": 8080, "tproxy": 8081, "sunproxyadmin": 8081,
    "mongodb": 27017,
}

# Names `iptables -L` prints for addresses (reverse DNS of the pod's /etc/hosts).
HOST_NAMES: dict[str, str] = {
    "anywhere": "0.0.0.0/0",
    "localhost": "127.0.0.1/32",
    "localhost.localdomain": "127.0.0.1/32",
    "ip6-localhost": "::1/128",
    "ip6-loopback": "::1/128",
}

Tri = bool | None  # True, False, or None = cannot tell from the evidence


def parse_port(text: str) -> int | None:
    text = text.strip()
    if text.isdigit():
        return int(text)
    return SERVICE_PORTS.get(text)


def parse_owner_ids(text: str) -> tuple[int, int] | None:
    """An xt_owner id as iptables-save (``1337``, ``0-999``) or the listing (``UID match
    1337``) shows it -> an inclusive range; ``root`` is 0; None for another user name."""
    lo, _, hi = text.partition("-")
    if not lo.isdigit() or (hi and not hi.isdigit()):
        return {"root": (0, 0)}.get(text)
    return int(lo), int(hi or lo)


def parse_int(text: str) -> int:
    """An iptables number: decimal or 0x hex (marks are printed in hex)."""
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def parse_mark(text: str) -> tuple[int, int]:
    """``0x539``, ``1337``, ``0x539/0xfff`` -> (value, mask)."""
    value, _, mask = text.partition("/")
    return parse_int(value), parse_int(mask) if mask else 0xFFFFFFFF


def parse_net(text: str) -> IPNet | None:
    """An address as iptables shows it; None when it is a name we cannot resolve."""
    text = HOST_NAMES.get(text, text)
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


@dataclass(frozen=True)
class Packet:
    """The first packet (SYN) of a connection, and the socket facts owner/mark see.

    ``uid``/``gid`` are those of the local process that sent it (None for a packet that
    arrived from outside: owner matches never match in PREROUTING). ``in_iface`` is set
    for arriving packets, ``out_iface`` for locally sent ones.
    """

    src: IPAddr
    dst: IPAddr
    dport: int
    sport: int = 40000
    proto: str = "tcp"
    in_iface: str | None = None
    out_iface: str | None = None
    uid: int | None = None
    gid: int | None = None
    mark: int = 0
    ctmark: int = 0
    ctstate: str = "NEW"


@dataclass(frozen=True)
class Match:
    negated: bool

    def test(self, p: Packet) -> Tri:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError

    def _neg(self, value: Tri) -> Tri:
        if value is None:
            return None
        return (not value) if self.negated else value

    @property
    def bang(self) -> str:
        return "! " if self.negated else ""


@dataclass(frozen=True)
class AddrMatch(Match):
    which: str  # "src" or "dst"
    net: IPNet | None
    raw: str

    def test(self, p: Packet) -> Tri:
        addr = p.src if self.which == "src" else p.dst
        if self.net is None:
            return None
        if addr.version != self.net.version:
            return self._neg(False)
        return self._neg(addr in self.net)

    def text(self) -> str:
        flag = "-s" if self.which == "src" else "-d"
        return f"{self.bang}{flag} {self.raw}"


@dataclass(frozen=True)
class IfaceMatch(Match):
    which: str  # "in" or "out"
    name: str

    def test(self, p: Packet) -> Tri:
        iface = p.in_iface if self.which == "in" else p.out_iface
        if iface is None:
            # -i never matches in OUTPUT, -o never in PREROUTING (no such interface yet).
            return self._neg(False)
        if self.name.endswith("+"):
            return self._neg(iface.startswith(self.name[:-1]))
        return self._neg(iface == self.name)

    def text(self) -> str:
        return f"{self.bang}{'-i' if self.which == 'in' else '-o'} {self.name}"


@dataclass(frozen=True)
class ProtoMatch(Match):
    proto: str

    def test(self, p: Packet) -> Tri:
        names = {"6": "tcp", "17": "udp", "1": "icmp"}
        return self._neg(names.get(self.proto, self.proto) == p.proto)

    def text(self) -> str:
        return f"{self.bang}-p {self.proto}"


@dataclass(frozen=True)
class PortMatch(Match):
    which: str  # "dport" or "sport"
    ports: tuple[tuple[int, int], ...]  # inclusive ranges
    raw: str
    multiport: bool = False

    def test(self, p: Packet) -> Tri:
        port = p.dport if self.which == "dport" else p.sport
        return self._neg(any(lo <= port <= hi for lo, hi in self.ports))

    def text(self) -> str:
        if self.multiport:
            return f"-m multiport {self.bang}--{self.which}s {self.raw}"
        return f"{self.bang}--{self.which} {self.raw}"


@dataclass(frozen=True)
class OwnerMatch(Match):
    which: str  # "uid" or "gid"
    ids: tuple[int, int] | None  # inclusive range; None = a name we cannot resolve
    raw: str

    def test(self, p: Packet) -> Tri:
        value = p.uid if self.which == "uid" else p.gid
        if value is None:
            # No local socket: xt_owner returns (match ^ invert) == 0, so only the
            # negated form matches (net/netfilter/xt_owner.c owner_mt).
            return self.negated
        if self.ids is None:
            return None
        return self._neg(self.ids[0] <= value <= self.ids[1])

    def text(self) -> str:
        return f"-m owner {self.bang}--{self.which}-owner {self.raw}"


@dataclass(frozen=True)
class MarkMatch(Match):
    conn: bool  # connmark (on the conntrack entry) vs mark (on the packet)
    value: int
    mask: int

    def test(self, p: Packet) -> Tri:
        mark = p.ctmark if self.conn else p.mark
        return self._neg((mark & self.mask) == self.value)

    def text(self) -> str:
        mask = "" if self.mask == 0xFFFFFFFF else f"/{self.mask:#x}"
        return f"-m {'connmark' if self.conn else 'mark'} {self.bang}--mark {self.value:#x}{mask}"


@dataclass(frozen=True)
class StateMatch(Match):
    states: frozenset[str]

    def test(self, p: Packet) -> Tri:
        return self._neg(p.ctstate in self.states)

    def text(self) -> str:
        return f"-m conntrack {self.bang}--ctstate {','.join(sorted(self.states))}"


@dataclass(frozen=True)
class OpaqueMatch(Match):
    """A match without semantics here (comment, tcp flags, ...); ``harmless`` ones pass."""

    raw: str
    harmless: bool = False

    def test(self, p: Packet) -> Tri:
        return True if self.harmless else None

    def text(self) -> str:
        return self.raw


@dataclass(frozen=True)
class Counters:
    packets: int
    bytes: int
    packets_text: str  # as printed: `11627`, `698K`

    def __str__(self) -> str:
        return f"{self.packets_text} pkts"


@dataclass(frozen=True)
class Target:
    """``-j NAME`` and its options, normalised: ports, marks, addresses as values."""

    name: str  # REDIRECT, TPROXY, RETURN, ACCEPT, MARK, CONNMARK, a chain name, "" = none
    to_port: int | None = None  # REDIRECT --to-ports / TPROXY --on-port
    on_ip: str | None = None  # TPROXY --on-ip
    mark: tuple[int, int] | None = None  # TPROXY --tproxy-mark / MARK --set-(x)mark
    op: str | None = None  # MARK/CONNMARK operation: set, save, restore, and, or, ...
    goto: bool = False  # -g instead of -j
    raw: str = ""

    def text(self) -> str:
        return self.raw or self.name


@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    index: int  # 1-based, as `iptables -L --line-numbers` numbers it
    matches: tuple[Match, ...]
    target: Target
    counters: Counters | None = None
    source: str = ""  # the line it was read from, for the trace

    def text(self) -> str:
        if self.source:
            return self.source
        parts = [m.text() for m in self.matches]
        if self.target.name:
            parts.append(("-g " if self.target.goto else "-j ") + self.target.text())
        return f"-A {self.chain} " + " ".join(parts)


BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}


@dataclass
class Chain:
    name: str
    policy: str | None = None  # builtin chains only
    policy_counters: Counters | None = None
    rules: list[Rule] = field(default_factory=list)


@dataclass
class Table:
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)

    def chain(self, name: str) -> Chain:
        if name not in self.chains:
            builtin = name in BUILTIN_CHAINS.get(self.name, ())
            self.chains[name] = Chain(name, policy="ACCEPT" if builtin else None)
        return self.chains[name]


@dataclass
class Ruleset:
    """The tables of one address family, plus where they came from."""

    tables: dict[str, Table] = field(default_factory=dict)
    origin: str = ""  # "iptables-save", "iptables -L -v", file names
    family: int = 4
    # `iptables -L` without -v prints no in/out columns: `-o lo` conditions are invisible
    interfaces_known: bool = True
    # iptables-nft printed "# Warning: iptables-legacy tables present": the pod also has
    # rules in the legacy backend, which this evidence does not show
    legacy_hidden: bool = False

    def table(self, name: str) -> Table:
        if name not in self.tables:
            self.tables[name] = Table(name)
        return self.tables[name]

    def merge(self, other: Ruleset) -> None:
        for name, table in other.tables.items():
            if name in self.tables and any(c.rules for c in self.tables[name].chains.values()):
                continue  # first evidence for a table wins; a later copy is a duplicate
            self.tables[name] = table
        self.origin = ", ".join(x for x in (self.origin, other.origin) if x)
        self.interfaces_known = self.interfaces_known and other.interfaces_known
        self.legacy_hidden = self.legacy_hidden or other.legacy_hidden

    def rule_count(self) -> int:
        return sum(len(c.rules) for t in self.tables.values() for c in t.chains.values())
