"""Checks for istio-iptables values: each bad value becomes a one-line UsageError.

Istio splits its comma lists with `config.Split` (empty items dropped, so "6000,7000," is
fine) and mostly passes values to iptables unchecked; it even ignores unparsable CIDRs
"for bug compatibility". remora refuses them up front instead, because a value iptables
rejects later would otherwise surface as an iptables-restore error in the middle of apply.
"""

from __future__ import annotations

import ipaddress
import re

from remora.errors import UsageError

# tools/common/config/validation.go: all included groups go into one rule of N matches.
MAX_OWNER_GROUPS_INCLUDE = 64
_IFNAME = re.compile(r"^[^\s/:,]{1,15}$")
_GROUP = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$")


def split(value: str) -> list[str]:
    """Istio's config.Split: comma separated, empty items dropped."""
    return [item for item in value.split(",") if item]


def port(value: str, flag: str) -> str:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise UsageError(f"{flag} {value!r} is not a port number",
                         f"give {flag} a port between 1 and 65535")
    return str(int(value))


def ports(value: str, flag: str, wildcard: bool = False) -> tuple[str, ...]:
    if wildcard and value.strip() == "*":
        return ("*",)
    items = split(value)
    out = []
    for item in items:
        item = item.strip()
        if not item.isdigit() or not 0 < int(item) < 65536:
            more = " or '*'" if wildcard else ""
            raise UsageError(
                f"{flag} {value!r} is not a list of ports ({item!r} is not a port number)",
                f"give {flag} comma-separated ports between 1 and 65535{more}, e.g. 15090,15021")
        out.append(str(int(item)))
    return tuple(out)


def ids(value: str, flag: str, what: str) -> tuple[str, ...]:
    items = [item.strip() for item in split(value)]
    if not items:
        raise UsageError(f"{flag} is empty", f"give {flag} a numeric {what} such as 1337")
    for item in items:
        if not item.isdigit() or int(item) >= 2**32 - 1:
            raise UsageError(f"{flag} {value!r} is not a list of numeric {what}s ({item!r})",
                             f"give {flag} comma-separated numeric {what}s, e.g. 1337")
    return tuple(str(int(item)) for item in items)


def prefix(item: str) -> str:
    """Go's netip.ParsePrefix + Prefix.String(): address kept as given, bits appended."""
    if "/" not in item:
        raise ValueError("no prefix length")
    addr_text, bits_text = item.split("/", 1)
    addr = ipaddress.ip_address(addr_text)
    if not bits_text.isdigit() or int(bits_text) > addr.max_prefixlen or "%" in addr_text:
        raise ValueError("bad prefix length")
    return f"{addr}/{int(bits_text)}"


def cidrs(value: str, flag: str, wildcard: bool) -> tuple[str, ...]:
    if value.strip() == "*":
        if not wildcard:
            # run.go: `invalid value for OUTBOUND_IP_RANGES_EXCLUDE`.
            raise UsageError(f"{flag} cannot be '*' (that would exclude every destination)",
                             f"give {flag} CIDRs such as 10.0.0.0/8, or leave it empty")
        return ("*",)
    out = []
    for item in split(value):
        try:
            out.append(prefix(item.strip()))
        except ValueError:
            raise UsageError(
                f"{flag} {value!r} is not a list of CIDRs ({item!r} is not ADDRESS/BITS)",
                f"give {flag} comma-separated CIDRs such as 10.96.0.0/12,fd00::/8"
                + (" or '*'" if wildcard else "")) from None
    return tuple(out)


def interfaces(value: str, flag: str) -> tuple[str, ...]:
    items = [item.strip() for item in split(value)]
    for item in items:
        if not _IFNAME.match(item):
            raise UsageError(f"{flag} {item!r} is not an interface name",
                             f"give {flag} comma-separated interface names such as eth1")
    return tuple(items)


def mark(value: str) -> str:
    if not value.isdigit() or not 0 < int(value) < 2**32:
        raise UsageError(f"-t/--istio-inbound-tproxy-mark {value!r} is not a packet mark",
                         "give -t a decimal mark between 1 and 4294967295, e.g. 1337")
    return str(int(value))


def route_table(value: str) -> str:
    if not value.isdigit() or not 0 < int(value) < 2**32 or int(value) in (253, 254, 255):
        raise UsageError(
            f"-r/--istio-inbound-tproxy-route-table {value!r} is not a usable routing table",
            "give -r a table number other than 253-255 (default, main, local), e.g. 133")
    return str(int(value))


def owner_groups(include: str, exclude: str) -> None:
    for name, value in (("ISTIO_OUTBOUND_OWNER_GROUPS", include),
                        ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", exclude)):
        if name.endswith("GROUPS") and value == "*":
            continue
        for item in split(value):
            if not _GROUP.match(item):
                raise UsageError(f"{name} entry {item!r} is not a group name or GID",
                                 f"set {name} to comma-separated group names or GIDs")
    if include != "*" and len(split(include)) > MAX_OWNER_GROUPS_INCLUDE:
        raise UsageError(
            f"ISTIO_OUTBOUND_OWNER_GROUPS lists {len(split(include))} groups; at most "
            f"{MAX_OWNER_GROUPS_INCLUDE} fit in one iptables rule",
            "capture all groups ('*') and list the few to skip in "
            "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE")


def loopback_cidr(value: str, name: str) -> None:
    # tools/common/config/validation.go ValidateIPv4LoopbackCidr.
    try:
        addr = ipaddress.ip_address(value.split("/", 1)[0])
        bits = int(value.split("/", 1)[1])
    except (ValueError, IndexError):
        raise UsageError(f"{name} {value!r} is not a CIDR",
                         f"set {name} to an IPv4 loopback CIDR such as 127.0.0.1/32") from None
    if addr.version != 4 or not addr.is_loopback or not 8 <= bits <= 32:
        raise UsageError(f"{name} {value!r} is not an IPv4 loopback CIDR with mask 8-32",
                         f"set {name} to e.g. 127.0.0.1/32")
