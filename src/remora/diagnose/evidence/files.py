"""Fill ``Evidence`` from files a user collected from a real cluster (the I/O edge).

``--istio-dump DIR`` layout (docs/explain.md): ``DIR/client/`` and ``DIR/server/``, or
files named ``client-*`` / ``server-*`` (also ``client_*``, ``client.*``); files with
neither are the server's. Within a side, a file is classified by name, then by content:
- ``*.json``: Envoy config (config_dump.json, listeners.json, clusters.json, ...; merged)
- ``iptables*``, ``*nat*``, ``*mangle*``, ``*.rules``: iptables-save text or ``-L -v``
  listings (a ``nat``/``mangle`` in the name tells a listing's table)
- ``*.log``, ``access*``: Istio access-log lines; the app's ``RemoteAddr=`` lines too
- ``ip-rules*``, ``ip_rule*``, ``policy-routing*``: `ip rule show` and `ip route show
  table 133` output (TPROXY's policy routing)
"""

from __future__ import annotations

import re
from pathlib import Path

from remora.diagnose.envoy.access_log import parse_access_log
from remora.diagnose.envoy.config import EnvoyConfig, parse_config_text
from remora.diagnose.facts import app_peer
from remora.diagnose.iptables.listing import looks_like_listing, parse_listing
from remora.diagnose.iptables.model import Ruleset
from remora.diagnose.iptables.nft import looks_like_nft, parse_nft
from remora.diagnose.iptables.policy_routing import parse_policy_text
from remora.diagnose.iptables.save import looks_like_save, parse_iptables_save
from remora.diagnose.pasted import (
    agent_version,
    istio_init,
    istio_versions,
    looks_like_istio_init,
    rule_lines,
    unframe,
)
from remora.diagnose.source_ip.evidence import Evidence, PodEvidence
from remora.diagnose.source_ip.ztunnel_log import looks_like_ztunnel, parse_ztunnel_log
from remora.diagnose.textdecode import decode_evidence
from remora.errors import RemoraError

SIDES = ("client", "server")


def read_text(path: Path, what: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        side, sep, rest = str(path).partition("=")
        if sep and side.isalpha() and side not in SIDES and Path(rest).is_file():
            # `--iptables clinet=FILE`: a misspelt SIDE, not a missing file
            raise RemoraError(f"{what} file {path}: {side!r} is not a side (client or "
                              "server)", f"write client={rest} or server={rest} (the path "
                              "alone is the server's)") from None
        raise RemoraError(f"{what} file {path} does not exist",
                          "check the path (see `remora explain source-ip --help`)") from None
    except IsADirectoryError:
        raise RemoraError(f"{what} {path} is a directory, expected a file",
                          "name the file, or use --istio-dump DIR for a directory") from None
    except OSError as exc:
        raise RemoraError(f"cannot read {what} file {path}: {exc.strerror}",
                          "check the file's permissions") from exc
    return decode_evidence(data, str(path))


def parse_iptables_text(text: str, name: str) -> Ruleset:
    """iptables-save text or `iptables -L -v` listings; the IPv4 rules when both families."""
    return parse_iptables_families(text, name)[0]


def family_of(rs: Ruleset, text: str, name: str) -> int:
    """6 for ip6tables evidence: an IPv6 address in a rule (Istio's ``::6``, ``::1``,
    ``:::15006``), ``ip6tables`` in a prompt or header, or ``ip6``/``ipv6`` in the
    file name."""
    if rs.family == 6 or re.search(r"ip6tables", text) or re.search(r"ip6|ipv6|v6\b",
                                                                       name.lower()):
        return 6
    for table in rs.tables.values():
        for chain in table.chains.values():
            for rule in chain.rules:
                if any(getattr(m, "net", None) is not None and m.net.version == 6  # type: ignore[attr-defined]
                       for m in rule.matches):
                    return 6
                if rule.target.name == "TPROXY" and ":::" in rule.source:
                    return 6
    return 4


def parse_iptables_families(text: str, name: str) -> list[Ruleset]:
    """Every address family in iptables-save text (or a golden with both blocks) or in
    `iptables -L -v` / `ip6tables -L -v` listings, IPv4 first."""
    families = _parse_iptables_families(text, name)
    # iptables-nft (iptables/nft.c, nft_rule_list / nft_chain_save) prints "# Warning:
    # iptables-legacy tables present, use iptables-legacy-save to see them" when the
    # legacy backend has tables too. istio-iptables picks its backend itself (tools/
    # istio-iptables/pkg/dependencies: the one whose save output already has rules, else
    # by the kernel), so Istio's rules may be there and not in this output.
    if re.search(r"iptables-legacy tables present", text):
        for rs in families:
            rs.legacy_hidden = True
    return families


def _parse_iptables_families(text: str, name: str) -> list[Ruleset]:
    hint = "nat" if "nat" in name.lower() else "mangle" if "mangle" in name.lower() else None
    text = unframe(text)
    if looks_like_nft(text):
        return parse_nft(text, origin=name)
    if looks_like_listing(text):
        rs = parse_listing(text, table=hint, origin=f"{name} (iptables -L -v)")
        rs.family = family_of(rs, text, name)
        if rs.family == 6:
            rs.origin = rs.origin.replace("(iptables -L -v)", "(ip6tables -L -v)")
        return [rs]
    if looks_like_save(text):
        text, _ = rule_lines(text)
        families = parse_iptables_save(text, origin=f"{name} (iptables-save)", table_hint=hint)
        if len(families) == 1 and family_of(families[0], text, name) == 6:
            families[0].family = 6
            families[0].origin = f"{name} (ip6tables-save)"
        if families:
            return families
    raise RemoraError(
        f"{name} is not an iptables listing: expected `iptables-save` output (`*nat`, "
        "`-A CHAIN ...` lines) or `iptables -t nat -L -v` output (`Chain NAME (policy ...)`)",
        "collect it with `iptables-save` (or `iptables -t nat -L -v`) in the pod's network "
        "namespace")


def add_iptables(pod: PodEvidence, path: Path) -> None:
    for rs in parse_iptables_families(read_text(path, "iptables"), path.name):
        pod.add_rules(rs)
    pod.sources.append(f"iptables: {path}")


def add_istio_init(pod: PodEvidence, path: Path) -> None:
    """The istio-init container's log: its variables and the rules it wrote."""
    init = istio_init(read_text(path, "istio-init log"))
    pod.declared.update(init.variables)
    pod.shell_script = pod.shell_script or init.shell_script
    if init.rules.strip():
        families = parse_iptables_save(init.rules, origin=f"{path.name} (istio-init log)")
        if families:
            if pod.iptables is None:
                pod.iptables = families[0]
            else:
                pod.iptables.merge(families[0])
    pod.sources.append(f"istio-init log: {path} ({len(init.variables)} variables"
                       + (", istio-iptables.sh trace" if init.shell_script else "") + ")")


def add_version(pod: PodEvidence, path: Path) -> None:
    text = read_text(path, "version")
    versions, whose = istio_versions(text)
    if whose == "client":
        raise RemoraError(f"{path} has only istioctl's own version (client version "
                          f"{versions[0][0]}.{versions[0][1]}), not the sidecars'",
                          "run `istioctl version` with access to the cluster (it prints "
                          "`data plane version: ...`), or pass --istio-version X.Y")
    if not versions:
        raise RemoraError(f"{path} names no Istio version: expected `istioctl version` output "
                          "(`data plane version: 1.9.0 ...`)",
                          "collect it with `istioctl version`, or pass --istio-version X.Y")
    pod.version_text.append(text)
    pod.sources.append(f"version: {path}")


def add_config(pod: PodEvidence, path: Path) -> None:
    if pod.config is None:
        pod.config = EnvoyConfig()
    parse_config_text(pod.config, read_text(path, "config dump"), str(path))
    pod.sources.append(f"config: {path}")


def add_access_log(pod: PodEvidence, path: Path) -> None:
    text = read_text(path, "access log")
    found = agent_version(text)
    if found:
        line = text[:text.find(found[1])].count("\n") + 1
        pod.agent_version = found[0], f"{path} line {line}: {' '.join(found[1].split())}"
    entries = parse_access_log(text, str(path))
    app = [line.strip() for line in text.splitlines() if app_peer(line) is not None]
    if not entries and not app and re.search(
            r"^\S+\s+(?:info|warn|warning|error)\s", text, re.M):
        # pilot-agent's own lines and no access-log line: access logging is off, which is
        # Istio's default profile (no meshConfig.accessLogFile; istio.io "Envoy Access
        # Logs"). The diagnosis goes on without it and says how to turn it on.
        pod.access_log_off = str(path)
        pod.sources.append(f"access log: {path} (istio-proxy's own log, no access-log line: "
                           "access logging is off)")
        return
    if not entries and not app:
        raise RemoraError(f"{path} has no access-log lines: expected Istio's default text "
                          "format (`[START_TIME] \"GET /path HTTP/1.1\" 200 ...`) or JSON lines",
                          f"collect it with `kubectl logs {pod.pod_ref()} -c istio-proxy`")
    pod.access_log.extend(entries)
    pod.app_log.extend(app)
    pod.sources.append(f"access log: {path} ({len(entries)} entries)")


def add_ip_rules(pod: PodEvidence, path: Path) -> None:
    pr = parse_policy_text(read_text(path, "ip rules"), str(path))
    if not pr.rules:
        raise RemoraError(f"{path} has no `ip rule show` lines: expected lines like "
                          "`32765: from all fwmark 0x539 lookup 133`",
                          f"collect it with `kubectl exec {pod.pod_ref()} -c istio-proxy -- "
                          "sh -c 'ip rule show; ip route show table 133'`")
    pod.policy_routing = pr
    count = f"{len(pr.rules)} rule" + ("" if len(pr.rules) == 1 else "s")
    pod.sources.append(f"policy routing: {path} ({count})")


def set_proxy_id(pod: PodEvidence, which: str, value: str) -> None:
    """``--sidecar-uid`` / ``--sidecar-gid``: the sidecar process's uid or gid."""
    if not value.isdigit():
        raise RemoraError(f"--sidecar-{which} {value!r} is not a number",
                          f"give the sidecar's numeric {which}, e.g. --sidecar-{which} "
                          f"{pod.role}=1337 (`id -{which[0]}` in the istio-proxy container)")
    setattr(pod, f"proxy_{which}", int(value))
    pod.proxy_ids_source = "given on the command line"


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".json"):
        return "config"
    if re.search(r"istio[-_]?init|envoy[-_]init", name):
        return "istioinit"
    if re.match(r"(istioctl[-_])?version", name):
        return "version"
    if re.search(r"ip[-_]?rules?\b|ip[-_]rule|policy[-_]rout", name):
        return "iprules"
    if re.search(r"iptables|nat|mangle|\.rules$|rules\.txt$", name):
        return "iptables"
    text = read_text(path, "evidence")[:4000]
    if name.endswith((".yaml", ".yml")) and re.search(
            r"@type|filterChains|filter_chains|^configs:", text, re.M):
        return "config"  # `istioctl proxy-config ... -o yaml`
    if looks_like_istio_init(text):
        return "istioinit"
    if looks_like_ztunnel(text):
        return "ztunnel"
    if name.endswith(".log") and _rule_shaped(text):
        return "iptables"  # e.g. istio-cni's log, which prints the rules it writes
    if name.endswith(".log") or "access" in name or name.startswith("log"):
        return "log"
    stripped = text.lstrip()
    if looks_like_listing(text) or looks_like_save(text):
        return "iptables"
    if stripped.startswith(("{", "[")) and ('"listeners"' in text or '"configs"' in text
                                            or '"filterChains"' in text
                                            or '"filter_chains"' in text):
        return "config"
    if re.search(r'^\[\S+\] "', text, re.M) or "upstream_local_address" in text:
        return "log"
    return None


def _rule_shaped(text: str) -> bool:
    """At least two `-A CHAIN ...` rules once a log's line prefixes are taken off."""
    kept, _ = rule_lines(unframe(text))
    return sum(1 for line in kept.splitlines() if line.lstrip().startswith("-A ")) >= 2


def add_ztunnel_log(pod: PodEvidence, path: Path) -> None:
    entries = parse_ztunnel_log(read_text(path, "ztunnel log"))
    pod.ztunnel_log.extend(entries)
    pod.sources.append(f"ztunnel log: {path} ({len(entries)} entries)")


def _side_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root).parts
    if len(rel) > 1 and rel[0].lower() in SIDES:
        return rel[0].lower()
    m = re.match(r"(client|server)[-_.]", path.name.lower())
    return m.group(1) if m else "server"


def load_dump_dir(root: Path, ev: Evidence | None = None) -> Evidence:
    if not root.is_dir():
        raise RemoraError(f"--istio-dump {root} is not a directory",
                          "give a directory with client/ and server/ subfolders")
    ev = ev or Evidence()
    used = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        kind = _kind(path)
        pod = ev.client if _side_of(path, root) == "client" else ev.server
        if kind is None:
            pod.sources.append(f"skipped: {path} (not recognised as evidence)")
            continue
        {"config": add_config, "iptables": add_iptables, "log": add_access_log,
         "iprules": add_ip_rules, "istioinit": add_istio_init,
         "version": add_version, "ztunnel": add_ztunnel_log}[kind](pod, path)
        used += 1
    if not used:
        raise RemoraError(f"--istio-dump {root} has no evidence files",
                          "add config_dump.json, iptables.txt (or nat.txt/mangle.txt) and "
                          "access.log under client/ and server/")
    return ev


def split_side(value: str) -> tuple[str, Path]:
    """``client=FILE`` / ``server=FILE`` / ``FILE`` (the server's)."""
    side, text = split_side_text(value)
    return side, Path(text)


def split_side_text(value: str) -> tuple[str, str]:
    side, sep, rest = value.partition("=")
    if sep and side in SIDES:
        return side, rest
    return "server", value
