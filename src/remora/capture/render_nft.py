"""nft rules -> the nft transaction Istio runs, as knftables' Transaction.String() prints it.

Per table (nat, mangle, raw, in that order; a table only when one of its chains has
rules): `add table`, `flush table`, `add chain` for each chain that has rules (in Istio's
fixed chain order, base chains with their hook and priority), then the rules. An insert
into an empty chain, or at an index past its end, becomes an add (nftables refuses both),
exactly as `addIstioTableRules` does. The text is also a valid `nft -f` script.
https://github.com/istio/istio/blob/master/tools/istio-nftables/pkg/capture/run.go
"""

from __future__ import annotations

from collections.abc import Sequence

from remora.capture.model_nft import (
    DIVERT,
    DROP,
    IN_REDIRECT,
    INBOUND,
    MANGLE,
    NAT,
    OUTPUT,
    OUTPUT_CHAIN,
    OUTPUT_DNS,
    PREROUTING,
    RAW,
    REDIRECT,
    TABLES,
    TPROXY,
    NftRule,
)

# (chain, base-chain spec or None), in the order Istio declares them per table.
# knftables priorities: dstnat = -100, mangle = -150, raw = -300.
CHAINS: dict[str, tuple[tuple[str, str | None], ...]] = {
    NAT: ((PREROUTING, "type nat hook prerouting priority -100"),
          (OUTPUT, "type nat hook output priority -100"),
          (INBOUND, None), (REDIRECT, None), (IN_REDIRECT, None), (OUTPUT_CHAIN, None),
          (OUTPUT_DNS, None)),
    MANGLE: ((PREROUTING, "type filter hook prerouting priority -150"),
             (OUTPUT, "type route hook output priority -150"),
             (DIVERT, None), (TPROXY, None), (INBOUND, None), (DROP, None)),
    RAW: ((PREROUTING, "type filter hook prerouting priority -300"),
          (OUTPUT, "type filter hook output priority -300"),
          (INBOUND, None), (OUTPUT_DNS, None)),
}


def transaction(rules: Sequence[NftRule]) -> str:
    lines: list[str] = []
    for table in TABLES:
        mine = [r for r in rules if r.table == table]
        used = {r.chain for r in mine}
        chains = [(name, spec) for name, spec in CHAINS[table] if name in used]
        if not chains:
            continue
        lines += [f"add table inet {table}", f"flush table inet {table}"]
        for name, spec in chains:
            lines.append(f"add chain inet {table} {name}" + (f" {{ {spec} ; }}" if spec else ""))
        count: dict[str, int] = {}
        for r in mine:
            n = count.get(r.chain, 0)
            if r.index is not None and r.index < n:
                lines.append(f"insert rule inet {table} {r.chain} index {r.index} {r.rule}")
            else:
                lines.append(f"add rule inet {table} {r.chain} {r.rule}")
            count[r.chain] = n + 1
    return "".join(line + "\n" for line in lines)


def cleanup_transaction() -> str:
    """`--cleanup-only`: add (so that delete cannot fail) and delete each Istio table."""
    return "".join(f"add table inet {t}\ndelete table inet {t}\n" for t in TABLES)
