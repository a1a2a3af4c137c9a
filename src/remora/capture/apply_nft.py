"""apply / verify / cleanup for the native nftables backend (`--native-nftables`).

Istio runs one nft transaction (`add table`, `flush table`, `add chain`, `add rule` ...) per
apply, so the three `inet istio-proxy-*` tables are replaced atomically; cleanup is
`add table` + `delete table` for each. remora runs the same text with `nft -f -` inside
the namespace. To know whether the rules are already installed it compares `nft list
ruleset` (Istio tables only, counters blanked) with the listing of the same transaction
applied in a throwaway namespace (`unshare --net`), as the iptables side does.
https://github.com/istio/istio/blob/master/tools/istio-nftables/pkg/capture/run.go
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from remora.capture.model_nft import TABLES, build_nft
from remora.capture.render_nft import cleanup_transaction, transaction
from remora.errors import RemoraError

if TYPE_CHECKING:
    from remora.capture.apply import Outcome, Session, Verification

_COUNTERS = re.compile(r"counter packets \d+ bytes \d+")
_TABLE = re.compile(r"^table inet (\S+) \{$")


def istio_tables(listing: str) -> dict[str, str]:
    """`nft list ruleset` -> {table: body} for Istio's tables, counters blanked."""
    out: dict[str, str] = {}
    current: str | None = None
    body: list[str] = []
    for line in listing.splitlines():
        m = _TABLE.match(line)
        if m:
            current, body = m.group(1), []
        elif line == "}" and current is not None:
            if current in TABLES:
                out[current] = "\n".join(body)
            current = None
        elif current is not None:
            body.append(_COUNTERS.sub("counter", line))
    return out


def _nft(s: Session, script: str, what: str) -> None:
    result = s.runner.run(["nft", "-f", "-"], stdin=script, netns_path=s.path)
    if not result.ok:
        raise RemoraError(f"nft rejected the {what}: {result.stderr.strip().splitlines()[0]}"
                          if result.stderr.strip() else f"nft rejected the {what}",
                          "nothing was changed (one nft transaction); fix the value the "
                          "message names and retry")


def _installed(s: Session) -> dict[str, str]:
    result = s.runner.run(["nft", "list", "ruleset"], netns_path=s.path)
    if not result.ok:
        raise RemoraError(f"nft list ruleset failed: {result.stderr.strip()}",
                          "check that nftables works in the namespace")
    return istio_tables(result.stdout)


def _expected(s: Session, script: str) -> dict[str, str]:
    s.need("unshare", "sh")
    result = s.runner.run(["unshare", "--net", "--", "sh", "-c",
                           "nft -f - && nft list ruleset"], stdin=script)
    if not result.ok:
        raise RemoraError(f"nft rejected the capture rules: {result.stderr.strip()}",
                          "nothing was changed; fix the value the message names and retry")
    return istio_tables(result.stdout)


def apply_nft(s: Session) -> Outcome:
    from remora.capture.apply import Outcome

    s.need("nft")
    rules = build_nft(s.config)
    script = transaction(rules)
    count = f"{len(rules)} nft rules"
    if s.runner.dry:
        s.runner.run(["nft", "-f", "-"], stdin=script, netns_path=s.path)
        return Outcome("dry-run", s.ruleset,
                       [f"would run: {i.describe(s.mark, s.table)}" for i in s.wanted_routing()],
                       count)
    current = _installed(s)
    action = "applied"
    if current and not s.config.force_apply:
        if current == _expected(s, script):
            s.add_routing()
            return Outcome("already-installed", s.ruleset, rules=count)
        if not s.config.reconcile:
            raise RemoraError("nftables capture rules are already installed in the namespace "
                              "but differ from the requested ones",
                              "rerun with --reconcile to replace them, or with --cleanup-only "
                              "to remove them")
        action = "reconciled"
    # Drop all three tables first in the same transaction: a table this config no longer
    # uses must not survive a reconcile.
    _nft(s, cleanup_transaction() + script, "capture rules")
    try:
        s.add_routing()
    except BaseException:
        _nft(s, cleanup_transaction(), "cleanup")
        raise
    if action == "reconciled":
        s.remove_unwanted_routing()
    return Outcome(action, s.ruleset, rules=count)


def cleanup_nft(s: Session) -> list[str]:
    s.need("nft")
    present = list(_installed(s))
    if present:
        _nft(s, cleanup_transaction(), "cleanup")
    return [f"deleted table inet {t}" for t in present]


def verify_nft(s: Session) -> Verification:
    from remora.capture.apply import Verification

    s.need("nft")
    current = _installed(s)
    expected = _expected(s, transaction(build_nft(s.config)))
    missing: list[str] = []
    unexpected: list[str] = []
    for table in TABLES:
        have = current.get(table, "").splitlines()
        want = expected.get(table, "").splitlines()
        missing += [f"{table}: {line.strip()}" for line in want
                    if line not in have and line.strip() not in ("", "}")]
        unexpected += [f"{table}: {line.strip()}" for line in have
                       if line not in want and line.strip() not in ("", "}")]
        if have != want and not missing and not unexpected:
            unexpected.append(f"{table}: rules present but in another order")
    present = s.routing.present(s.path, s.mark, s.table)
    missing += [i.describe(s.mark, s.table) for i in s.wanted_routing() if i not in present]
    return Verification(not missing and not unexpected, missing, unexpected)
