"""Apply, verify and clean up the capture rules of one namespace, all from the one model.

The flow follows Istio's `executeCommands` (tools/istio-iptables/pkg/capture/run.go):
save the current state (`iptables-save`, `ip6tables-save`), decide whether the rules are
absent, already installed or drifted, then `iptables-restore --noflush` (one transaction
per family), then the TPROXY routing, then a final save. Driven by a RecordingRunner on an
empty state, the commands recorded are exactly Istio's golden transcript, which is what
`--dry-run` prints.

Nothing is left half-applied: a restore is atomic; if the IPv6 restore or the routing
fails after the IPv4 restore succeeded, what this call added is removed again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from remora.capture import facts, render, state
from remora.capture.apply_nft import apply_nft, cleanup_nft, verify_nft
from remora.capture.config import CaptureConfig, with_overrides
from remora.capture.model import Rule, RuleSet, build
from remora.capture.routing import ALL_TPROXY, Item, Pyroute2Routing, RoutingOps, wanted
from remora.capture.runner import RecordingRunner, Runner, SubprocessRunner
from remora.errors import PrivilegeError, RemoraError


@dataclass(frozen=True)
class Family:
    ipv6: bool
    save: str
    restore: str

    @property
    def nft_family(self) -> str:
        return "ip6" if self.ipv6 else "ip"


def families(config: CaptureConfig) -> tuple[Family, Family]:
    infix = {"": "", "nft": "-nft", "legacy": "-legacy"}[config.force_iptables_binary]
    return (Family(False, f"iptables{infix}-save", f"iptables{infix}-restore"),
            Family(True, f"ip6tables{infix}-save", f"ip6tables{infix}-restore"))


@dataclass
class Outcome:
    action: str  # applied | already-installed | reconciled | cleaned | dry-run | skipped
    ruleset: RuleSet
    notes: list[str] = field(default_factory=list)
    rules: str = ""  # "18 IPv4 rules", "30 IPv4 + 32 IPv6 rules", "25 nft rules"


@dataclass
class Verification:
    ok: bool
    missing: list[str]
    unexpected: list[str]


def require_root() -> None:
    if os.geteuid() != 0:
        raise PrivilegeError(
            "remora capture must run as root to change iptables and routing in a namespace",
            "run it with sudo, or add --dry-run to only print the rules")


class Session:
    """One namespace, one config, one runner: the steps apply/verify/cleanup share."""

    def __init__(self, config: CaptureConfig, netns_path: Path | None,
                 runner: Runner, routing: RoutingOps) -> None:
        self.path = netns_path
        self.runner = runner
        self.routing = routing
        try:
            self.config = facts.resolve(config, netns_path)
        except PermissionError:
            raise PrivilegeError("reading the namespace's addresses needs root",
                                 "run with sudo, or pass --dual-stack to skip the lookup"
                                 ) from None
        except OSError as exc:
            raise RemoraError(f"cannot read the addresses of {netns_path}: {exc.strerror}",
                              "pass a network namespace name or a /proc/PID/ns/net path"
                              ) from None
        self.ruleset = build(self.config)
        self.v4, self.v6 = families(self.config)
        self.mark = int(self.config.inbound_tproxy_mark)
        self.table = int(self.config.inbound_tproxy_route_table)
        self._canonical: dict[tuple[Family, tuple[Rule, ...]], dict[str, state.TableState]] = {}

    # -- iptables ---------------------------------------------------------------------
    def rules(self, fam: Family) -> tuple[Rule, ...]:
        return self.ruleset.v6 if fam.ipv6 else self.ruleset.v4

    def need(self, *binaries: str) -> None:
        for binary in binaries:
            if not self.runner.available(binary):
                raise RemoraError(f"{binary} is not installed",
                                  "install iptables and util-linux "
                                  "(apt-get install iptables util-linux)")

    def save(self, fam: Family) -> str:
        result = self.runner.run([fam.save], netns_path=self.path)
        if not result.ok:
            raise RemoraError(f"{fam.save} failed: {_first(result.stderr)}",
                              "check that the namespace exists and iptables works in it")
        return result.stdout

    def restore(self, fam: Family, text: str, what: str) -> None:
        result = self.runner.run([fam.restore, "--noflush"], stdin=text, netns_path=self.path)
        if not result.ok:
            raise RemoraError(f"{fam.restore} rejected the {what}: {_first(result.stderr)}",
                              "nothing was changed; fix the value the message names "
                              "(e.g. an unknown group or interface) and retry")

    def canonical(self, fam: Family, ruleset: RuleSet | None = None
                  ) -> dict[str, state.TableState]:
        """The model's rules as iptables-save prints them, via a throwaway namespace."""
        rs = ruleset or self.ruleset
        rules = rs.v6 if fam.ipv6 else rs.v4
        if not rules:
            return {}
        key = (fam, rules)
        if key not in self._canonical:
            self.need("unshare", "sh")
            script = f"{fam.restore} --noflush && {fam.save}"
            result = self.runner.run(["unshare", "--net", "--", "sh", "-c", script],
                                     stdin=render.restore(rules))
            if not result.ok:
                raise RemoraError(f"{fam.restore} rejected the capture rules: "
                                  f"{_first(result.stderr)}",
                                  "nothing was changed; fix the value the message names "
                                  "(e.g. an unknown group or interface) and retry")
            self._canonical[key] = state.parse_save(result.stdout)
        return self._canonical[key]

    def ours(self, fam: Family) -> dict[str, frozenset[str]]:
        """Built-in-chain rules that are Istio's: this config's, and those TPROXY mode adds
        (so a REDIRECT config still recognises, verifies against and removes them)."""
        mine = state.builtin_rules(self.canonical(fam))
        tproxy = with_overrides(self.config, inbound_interception_mode="TPROXY",
                                inbound_ports_include=("*",))
        try:
            extra = state.builtin_rules(self.canonical(fam, build(tproxy)))
        except RemoraError:  # e.g. no xt_TPROXY on this kernel: no TPROXY leftovers either
            extra = {}
        return {t: mine.get(t, frozenset()) | extra.get(t, frozenset())
                for t in set(mine) | set(extra)}

    def views(self, fam: Family, saved: str) -> tuple[state.View, state.View]:
        """(actual, expected) Istio views; canonicalises only when the save has rules."""
        tables = state.parse_save(saved)
        if not state.istio_view(tables, {}) and not state.has_builtin_rules(tables):
            return {}, {}
        ours = self.ours(fam)
        return state.istio_view(tables, ours), state.istio_view(self.canonical(fam), ours)

    def clean_family(self, fam: Family, drop_empty_tables: bool) -> bool:
        saved = self.save(fam)
        tables = state.parse_save(saved)
        if not state.istio_view(tables, {}) and not state.has_builtin_rules(tables):
            return False
        ours = self.ours(fam)
        text = state.cleanup_restore(tables, ours)
        if not text:
            return False
        self.restore(fam, text, "cleanup")
        touched = set(state.istio_view(tables, ours))
        if drop_empty_tables and "(nf_tables)" in saved and self.runner.available("nft"):
            # With nf_tables a table exists only because iptables created it; an empty one
            # (built-in chains, ACCEPT, no rules) matches nothing, so "as before" means gone.
            for name in state.empty_tables(state.parse_save(self.save(fam))):
                if name in touched:
                    self.runner.run(["nft", "delete", "table", fam.nft_family, name],
                                    netns_path=self.path)
        return True

    # -- routing ----------------------------------------------------------------------
    def wanted_routing(self) -> list[Item]:
        return wanted(self.ruleset.routing is not None, self.ruleset.ipv6,
                      self.ruleset.lo_ipv6_address)

    def add_routing(self) -> list[Item]:
        present = self.routing.present(self.path, self.mark, self.table)
        added: list[Item] = []
        try:
            for item in self.wanted_routing():
                if item not in present:
                    self.routing.add(self.path, item, self.mark, self.table)
                    added.append(item)
        except BaseException:
            for item in reversed(added):
                self.routing.remove(self.path, item, self.mark, self.table)
            raise
        return added

    def remove_unwanted_routing(self) -> None:
        present = self.routing.present(self.path, self.mark, self.table)
        for item in ALL_TPROXY:
            if item in present and item not in self.wanted_routing():
                self.routing.remove(self.path, item, self.mark, self.table)

    def remove_routing(self) -> list[Item]:
        present = self.routing.present(self.path, self.mark, self.table)
        doomed = [i for i in ALL_TPROXY if i in present]
        if self.ruleset.lo_ipv6_address:
            doomed += [i for i in present if i.kind == "addr"]
        for item in doomed:
            self.routing.remove(self.path, item, self.mark, self.table)
        return doomed


def _first(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no error message"


def _session(config: CaptureConfig, netns_path: Path | None, runner: Runner | None,
             routing: RoutingOps | None) -> Session:
    if runner is None:
        require_root()
        runner = SubprocessRunner()
    return Session(config, netns_path, runner, routing or Pyroute2Routing())


def apply(config: CaptureConfig, netns_path: Path | None = None, *,
          runner: Runner | None = None, routing: RoutingOps | None = None) -> Outcome:
    """Install the rules (and TPROXY routing) CONFIG describes in the namespace at PATH."""
    s = _session(config, netns_path, runner, routing)
    if s.config.skip_rule_apply:
        return Outcome("skipped", s.ruleset)
    if s.config.native_nftables:
        return apply_nft(s)
    v4, v6 = s.v4, s.v6
    ipv6 = s.ruleset.ipv6
    count = f"{len(s.ruleset.v4)} IPv4" + (f" + {len(s.ruleset.v6)} IPv6" if ipv6 else "")
    count += " rules"
    s.need(v4.save, v4.restore, *((v6.save, v6.restore) if ipv6 else ()))
    # State check: both families, as Istio's VerifyIptablesState does.
    saved = {v4: s.save(v4)}
    if ipv6:
        saved[v6] = s.save(v6)
    elif s.runner.available(v6.save):
        # Istio checks both families; without IPv6 rules a failing ip6tables is no error.
        s.runner.run([v6.save], netns_path=s.path)
    planned = [v4, v6] if ipv6 else [v4]
    texts = {fam: render.restore(s.rules(fam)) for fam in planned}
    verdicts = []
    for fam in planned:
        actual, expected = s.views(fam, saved.get(fam, ""))
        verdicts.append("clean" if not actual else "installed" if actual == expected
                        else "drift")
    action = "applied"
    if not s.config.force_apply:
        if all(v == "installed" for v in verdicts):
            s.add_routing()
            return Outcome("already-installed", s.ruleset, rules=count)
        if any(v != "clean" for v in verdicts):
            if not s.config.reconcile:
                raise RemoraError(
                    "capture rules are already installed in the namespace but differ from "
                    "the requested ones",
                    "rerun with --reconcile to replace them, or with --cleanup-only to "
                    "remove them")
            # Removal and re-install in one restore per family: one transaction each.
            for fam in planned:
                tables = state.parse_save(saved[fam])
                undo = state.cleanup_restore(tables, s.ours(fam))
                texts[fam] = state.merge_restore(undo, texts[fam])
            action = "reconciled"
    s.restore(v4, texts[v4], "capture rules")
    notes: list[str] = []
    try:
        if ipv6:
            s.restore(v6, texts[v6], "IPv6 capture rules")
        if s.runner.dry:
            notes = [f"would run: {i.describe(s.mark, s.table)}" for i in s.wanted_routing()]
        else:
            s.add_routing()
    except BaseException:
        for fam in planned:
            s.clean_family(fam, drop_empty_tables=True)
        raise
    if action == "reconciled" and not s.runner.dry:
        s.remove_unwanted_routing()
    for fam in planned:
        s.save(fam)  # Istio's deferred "final iptables state"
    return Outcome("dry-run" if s.runner.dry else action, s.ruleset, notes, count)


def cleanup(config: CaptureConfig, netns_path: Path | None = None, *,
            runner: Runner | None = None, routing: RoutingOps | None = None) -> Outcome:
    """Remove every ISTIO_* chain, the Istio rules of built-in chains, and the routing."""
    s = _session(config, netns_path, runner, routing)
    if s.config.native_nftables:
        done = cleanup_nft(s)
        if not s.runner.dry:
            done += [f"removed `{i.describe(s.mark, s.table)}`" for i in s.remove_routing()]
        return Outcome("cleaned", s.ruleset, done)
    s.need(s.v4.save, s.v4.restore)
    done = [f"cleaned {fam.save[:-5]}" for fam in (s.v4, s.v6)
            if s.runner.available(fam.save) and s.runner.available(fam.restore)
            and s.clean_family(fam, drop_empty_tables=True)]
    if not s.runner.dry:
        done += [f"removed `{i.describe(s.mark, s.table)}`" for i in s.remove_routing()]
    return Outcome("cleaned", s.ruleset, done)


def verify(config: CaptureConfig, netns_path: Path | None = None, *,
           runner: Runner | None = None, routing: RoutingOps | None = None) -> Verification:
    """Are exactly CONFIG's rules (and routing) installed? Lists what is missing or extra."""
    s = _session(config, netns_path, runner, routing)
    if s.config.native_nftables:
        return verify_nft(s)
    missing: list[str] = []
    unexpected: list[str] = []
    for fam in (s.v4, s.v6):
        if not s.rules(fam) and not s.runner.available(fam.save):
            continue
        tables = state.parse_save(s.save(fam))
        ours = s.ours(fam)
        actual = state.describe(state.istio_view(tables, ours))
        expected = state.describe(state.istio_view(s.canonical(fam), ours))
        missing += [line for line in expected if line not in actual]
        unexpected += [line for line in actual if line not in expected]
        if not missing and not unexpected and actual != expected:
            unexpected.append(f"{fam.save[:-5]}: rules present but in another order")
    present = s.routing.present(s.path, s.mark, s.table)
    want = s.wanted_routing()
    missing += [i.describe(s.mark, s.table) for i in want if i not in present]
    unexpected += [i.describe(s.mark, s.table) for i in ALL_TPROXY
                   if i in present and i not in want]
    return Verification(not missing and not unexpected, missing, unexpected)


def dry_run(config: CaptureConfig, netns_path: Path | None = None) -> str:
    """What apply would run on a clean namespace, in Istio's golden transcript form."""
    recorder = RecordingRunner()
    apply(config, netns_path, runner=recorder)
    return recorder.transcript()
