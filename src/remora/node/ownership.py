"""Which lab owns a namespace named with a lab's prefix.

Namespace names are `<prefix>node-N`, `<prefix>fabric` and `<prefix>pod-<hash>`, so two
labs in different state directories with the same prefix would share node and fabric
namespaces (and `down` of one would remove the other's). Each lab therefore has an id
(a uuid kept in its store's meta table) and writes it, with its state directory, into the
alias of `lo` in every node and fabric namespace it creates (IFLA_IFALIAS, what
`ip link set lo alias TEXT` sets): the namespace itself says who made it, which survives
a reboot of the store (a state dir kept across a reboot, whose namespaces are gone and
re-created by another lab) where inode numbers would not. Pod namespaces are ours when
the store lists them (a pod is recorded before its namespace is created and after it is
removed).

`foreign` is the pure decision; `marks`, `mark` and `check` do the netlink I/O.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from remora.errors import RemoraError
from remora.node import naming, netlink

MARK = "remora-lab"


@dataclass(frozen=True)
class Owner:
    lab_id: str
    state_dir: str


def mark_text(lab_id: str, state_dir: Path) -> str:
    return f"{MARK} {lab_id} {state_dir}"


def parse_mark(alias: str | None) -> Owner | None:
    parts = (alias or "").split(" ", 2)
    if len(parts) < 2 or parts[0] != MARK:
        return None
    return Owner(parts[1], parts[2] if len(parts) == 3 else "")


def is_pod_netns(prefix: str, name: str) -> bool:
    return name.startswith(f"{prefix}pod-")


def foreign(prefix: str, existing: dict[str, str | None], lab_id: str, fresh: bool,
            pods: set[str]) -> list[tuple[str, Owner | None]]:
    """The namespaces named with PREFIX that are not this lab's, with their owner if known.

    EXISTING maps namespace names to the alias of their `lo` (None for pod namespaces or
    when unread). A FRESH store owns nothing yet. Otherwise a pod namespace is ours when
    PODS lists it, a node or fabric namespace when it carries our mark or no mark at all
    (made by a remora from before marks, or by us just before a crash).
    """
    out = []
    for name in sorted(existing):
        if not naming.is_ours(prefix, name):
            continue
        owner = parse_mark(existing[name])
        if fresh:
            out.append((name, owner))
        elif is_pod_netns(prefix, name):
            if name not in pods:
                out.append((name, None))
        elif owner is not None and owner.lab_id != lab_id:
            out.append((name, owner))
    return out


# -- netlink ---------------------------------------------------------------------------------
def read_mark(netns_name: str) -> str | None:
    with contextlib.suppress(Exception), netlink.rtnl(netns_name) as ipr:
        alias = ipr.get_links(*ipr.link_lookup(ifname="lo"))[0].get_attr("IFLA_IFALIAS")
        return str(alias) if alias else None
    return None


def marks(prefix: str) -> dict[str, str | None]:
    """Every namespace named with PREFIX -> its mark (pod namespaces are not read)."""
    return {n: None if is_pod_netns(prefix, n) else read_mark(n)
            for n in netlink.names() if naming.is_ours(prefix, n)}


def mark(netns_name: str, lab_id: str, state_dir: Path) -> None:
    with netlink.rtnl(netns_name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0],
                 ifalias=mark_text(lab_id, state_dir))


def check(prefix: str, state_dir: Path, lab_id: str, fresh: bool, pods: set[str]) -> None:
    """Refuse to start a lab whose prefix another lab's namespaces use."""
    found = foreign(prefix, marks(prefix), lab_id, fresh, pods)
    if not found:
        return
    owners = sorted({o.state_dir for _, o in found if o is not None and o.state_dir})
    names = ", ".join(n for n, _ in found[:3]) + (f" and {len(found) - 3} more"
                                                  if len(found) > 3 else "")
    whose = f"the lab in {owners[0]}" if owners else "another lab"
    down = f"remora down --state-dir {owners[0]}" if owners else "remora down --state-dir DIR"
    raise RemoraError(
        f"another lab uses the prefix {prefix!r}: {names} belong to {whose}, not to the "
        f"lab in {state_dir}",
        f"give this lab another prefix (remora up --prefix lab2-), or take the other lab "
        f"down first ({down})")
