"""TPROXY policy routing and the ::6 loopback address, through pyroute2 inside a namespace.

Istio's tools/common/tproxy/run_linux.go does, after the rules, only when -b is non-empty
and -m TPROXY:
    ip rule add fwmark <mark> lookup <table>            (AF_INET, and AF_INET6 with IPv6)
    ip route add local default dev lo table <table>     (0.0.0.0/0 and ::/0)
and, whenever IPv6 is on, `ip -6 addr add ::6/128 dev lo` (configureIPv6Addresses), the
inbound passthrough bind address that IPv6 loopback does not cover by default. Istio adds
the rule blindly; remora checks first, so a second apply adds nothing.
https://github.com/istio/istio/blob/master/tools/common/tproxy/run_linux.go
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from remora import netns
from remora.errors import RemoraError

RT_SCOPE_HOST = 254
RTN_LOCAL = 2
_DEFAULT: dict[int, str] = {int(socket.AF_INET): "0.0.0.0/0", int(socket.AF_INET6): "::/0"}


@dataclass(frozen=True)
class Item:
    """One piece of routing state: ("rule"|"route", family) or ("addr", AF_INET6)."""

    kind: str
    family: int

    def describe(self, mark: int, table: int) -> str:
        fam = "-6 " if self.family == socket.AF_INET6 else ""
        return {"rule": f"ip {fam}rule add fwmark {mark} lookup {table}",
                "route": f"ip {fam}route add local default dev lo table {table}",
                "addr": "ip -6 addr add ::6/128 dev lo"}[self.kind]


class RoutingOps(Protocol):
    def present(self, path: Path | None, mark: int, table: int) -> set[Item]: ...

    def add(self, path: Path | None, item: Item, mark: int, table: int) -> None: ...

    def remove(self, path: Path | None, item: Item, mark: int, table: int) -> None: ...


@contextlib.contextmanager
def _ipr(path: Path | None) -> Iterator[Any]:
    # The netlink socket belongs to the namespace it was created in; create it inside.
    with netns.entered(path):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _lo(ipr: Any) -> int:
    found = ipr.link_lookup(ifname="lo")
    if not found:
        raise RemoraError("the namespace has no `lo` interface", "create it or pick a pod netns")
    return int(found[0])


class Pyroute2Routing:
    """The real thing."""

    def present(self, path: Path | None, mark: int, table: int) -> set[Item]:
        items: set[Item] = set()
        with _ipr(path) as ipr:
            lo = _lo(ipr)
            for family in (socket.AF_INET, socket.AF_INET6):
                for rule in ipr.get_rules(family=family):
                    if rule.get("fwmark") == mark and rule.get("table") == table:
                        items.add(Item("rule", family))
                with contextlib.suppress(NetlinkError):
                    for route in ipr.get_routes(family=family, table=table):
                        if (route["type"] == RTN_LOCAL and route["dst_len"] == 0
                                and route.get("oif") == lo):
                            items.add(Item("route", family))
            for addr in ipr.get_addr(family=socket.AF_INET6, index=lo):
                if addr.get("address") == "::6" and addr["prefixlen"] == 128:
                    items.add(Item("addr", socket.AF_INET6))
        return items

    def add(self, path: Path | None, item: Item, mark: int, table: int) -> None:
        with _ipr(path) as ipr:
            lo = _lo(ipr)
            try:
                _request(ipr, "add", item, mark, table, lo)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise RemoraError(f"could not run `{item.describe(mark, table)}`: {exc}",
                                      "check that IPv6 is enabled in the namespace, or "
                                      "pick another -r table") from None

    def remove(self, path: Path | None, item: Item, mark: int, table: int) -> None:
        with _ipr(path) as ipr:
            lo = _lo(ipr)
            with contextlib.suppress(NetlinkError):
                _request(ipr, "del", item, mark, table, lo)


def _request(ipr: Any, op: str, item: Item, mark: int, table: int, lo: int) -> None:
    """The one netlink request for ITEM (the `ip rule` / `ip route` / `ip addr` it
    stands for), adding or deleting it; LO is the namespace's loopback index."""
    if item.kind == "rule":
        ipr.rule(op, family=item.family, fwmark=mark, table=table)
    elif item.kind == "route":
        ipr.route(op, dst=_DEFAULT[item.family], table=table, type="local",
                  scope=RT_SCOPE_HOST, oif=lo, family=item.family)
    else:
        ipr.addr(op, index=lo, address="::6", prefixlen=128, family=socket.AF_INET6)


def wanted(tproxy_routing: bool, ipv6: bool, lo_ipv6_address: bool) -> list[Item]:
    """The items a rule set needs, in the order Istio adds them (::6 first)."""
    items: list[Item] = []
    if lo_ipv6_address:
        items.append(Item("addr", socket.AF_INET6))
    if tproxy_routing:
        families = [socket.AF_INET] + ([socket.AF_INET6] if ipv6 else [])
        items += [Item("rule", f) for f in families]
        items += [Item("route", f) for f in families]
    return items


ALL_TPROXY = [Item(kind, fam) for kind in ("rule", "route")
              for fam in (socket.AF_INET, socket.AF_INET6)]


@dataclass
class RecordingRouting:
    """In-memory routing state for unit tests; FAIL_ON makes `add` of that item fail."""

    state: set[Item] | None = None
    fail_on: Item | None = None

    def present(self, path: Path | None, mark: int, table: int) -> set[Item]:
        return set(self.state or set())

    def add(self, path: Path | None, item: Item, mark: int, table: int) -> None:
        if item == self.fail_on:
            raise RemoraError(f"could not run `{item.describe(mark, table)}`", "test failure")
        self.state = (self.state or set()) | {item}

    def remove(self, path: Path | None, item: Item, mark: int, table: int) -> None:
        self.state = (self.state or set()) - {item}
