"""Pasted evidence as users really paste it: prompts, frames, istio-init logs, versions.

Pure text functions used by ``evidence_files`` before the iptables / access-log readers:
- ``unframe``: a log viewer's box (``│ ... │``, k9s) and `kubectl logs --prefix`-free text;
- ``istio_init``: the istio-init container's log. Its ``Variables:`` block (istio-iptables
  prints every setting, tools/istio-iptables/pkg/config) says the interception mode and the
  captured inbound ports; the rules it wrote follow ``Writing following contents to rules
  file`` (Go istio-iptables, 1.5+) or come as a ``set -x`` trace ``+ iptables -t nat -A ...``
  (the istio-iptables.sh shell script of Istio 1.4 and before);
- ``rule_lines``: of a pasted iptables text, the lines that are rules, so headings and
  shell prompts (``$ ``, ``# ``, ``[root@host dir]# ``, ``user@host:~# ``, ``~ ``) are
  skipped as docs/explain.md promises;
- ``istio_version``: ``istioctl version`` output, or an image tag ``proxyv2:1.6.0``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_FRAME = re.compile(r"^\s*[│|]\s?(.*?)\s*[│|]?\s*$")
_PROMPT = re.compile(r"^\s*(?:\[[^\]]*\][#$]|[\w.-]+@[\w.-]+:[^#$]*[#$]|[$#~]|>)\s+\S")
_RULE = re.compile(r"^\s*(?:\[\d+:\d+\]\s*)?(?:-[AINP]\s|\*\s*\w+|:[\w-]+\s|COMMIT\b)")
_CMD = re.compile(r"^\s*(?:\+\s+)?(?:sudo\s+)?ip6?tables(?:-nft|-legacy)?\s+.*-[AINP]\s")


def _unprefix(text: str) -> str:
    """`kubectl logs --prefix` / `stern` lines: one leading word ahead of every line
    (`istio-cni-node-j457b -A PREROUTING ...`, `[pod/x/c] ...`), taken off."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return text
    first = {ln.split(maxsplit=1)[0] for ln in lines}
    if len(first) != 1:
        return text
    word = first.pop()
    if (word[0] in "-*:#$[" and not word.startswith("[pod/")) or word in (
            "iptables", "ip6tables", "iptables-nft", "iptables-legacy", "sudo", "+", "Chain",
            "COMMIT"):
        return text
    return "\n".join(ln.split(maxsplit=1)[1] if ln.strip() and len(ln.split()) > 1 else ""
                     for ln in text.splitlines())


def unframe(text: str) -> str:
    """Lines framed by a log viewer (``│ -A ... │``) or prefixed with the pod's name
    (`kubectl logs --prefix`), without the frame or the prefix."""
    lines = text.splitlines()
    framed = [ln for ln in lines if ln.strip()]
    if framed and sum(1 for ln in framed if ln.lstrip().startswith("│")) * 2 >= len(framed):
        out = []
        for ln in lines:
            m = _FRAME.match(ln)
            out.append(m.group(1) if m and ln.lstrip().startswith("│") else ln)
        return "\n".join(out)
    return _unprefix(text)


def is_prompt(line: str) -> bool:
    return bool(_PROMPT.match(line))


@dataclass
class IstioInit:
    """What an istio-init log says: its variables and the rules it wrote."""

    variables: dict[str, str] = field(default_factory=dict)
    rules: str = ""
    shell_script: bool = False  # istio-iptables.sh (Istio 1.4 and before)


# istio-iptables from 1.16 on (tools/istio-iptables/pkg/config Print and pkg/dependencies
# implementation_linux.go) prints "Istio iptables variables:" above its settings and
# "Running iptables-restore with the following input:" above the rules, each after a log
# timestamp and level, and "Running command (with wait lock): iptables-restore --noflush"
# after them.
_VARS_HEAD = re.compile(r"(?:^|\s)(?:Istio iptables variables|Variables):\s*$")
_RULES_HEAD = re.compile(r"Writing following contents to rules file|"
                         r"Running iptables-restore with the following input:")


def looks_like_istio_init(text: str) -> bool:
    return bool(re.search(r"^Variables:\s*$", text, re.M)
                or re.search(r"Istio iptables variables:\s*$", text, re.M)
                or _RULES_HEAD.search(text)
                or re.search(r"^\+ iptables ", text, re.M)
                or re.search(r"Running command \(with wait lock\): ip6?tables-restore", text))


def istio_init(text: str) -> IstioInit:
    out = IstioInit()
    in_vars = False
    rules: list[str] = []
    # a log cut just below its marker starts with the restore input itself (`* nat`)
    in_file = bool(re.match(r"\s*\*\s*(?:nat|mangle|raw|filter)\s*$", text.lstrip("\n")
                            .split("\n", 1)[0]))
    for line in text.splitlines():
        s = line.strip()
        if _VARS_HEAD.search(s):
            in_vars = True
            continue
        if in_vars:
            m = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", s)
            if m:
                out.variables[m.group(1)] = m.group(2)
                continue
            if s.startswith("---"):
                continue
            in_vars = False
        if "istio-iptables.sh" in s and "line" in s:
            out.shell_script = True
        if _RULES_HEAD.search(s):
            in_file = True
            continue
        if s.startswith("+ "):
            out.shell_script = True
            if _CMD.match(s):
                rules.append(s[2:])
            continue
        if in_file:
            if _RULE.match(s) or s.startswith("-N "):
                rules.append(s)
                continue
            if s in ("", "```"):
                continue
            in_file = False
        elif _CMD.match(s):
            rules.append(s)
    out.rules = "\n".join(rules) + ("\n" if rules else "")
    return out


def rule_lines(text: str) -> tuple[str, int]:
    """The rule-shaped lines of a pasted iptables-save / -S / restore text, and how many
    other lines (headings, prompts, notes) were skipped. `iptables -S` prompts are kept:
    the reader takes their table from them."""
    keep: list[str] = []
    skipped = 0
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("COMMIT"):
            keep.append("COMMIT")  # a viewer's trailing text after it (`COMMIT  ns=...`)
        elif not s or _RULE.match(s) or _CMD.match(s) or s.startswith("#"):
            keep.append(line)
        elif re.search(r"ip6?tables(?:-nft|-legacy)?\s+(?:-t\s*\w+\s+)?-S", s):
            keep.append("$ " + s[s.index("iptables") - (2 if "ip6tables" in s else 0):]
                        if "iptables" in s else line)
        else:
            skipped += 1
    return "\n".join(keep) + "\n", skipped


_VERSION = re.compile(
    r"(?:(?:client|control plane|data plane|istiod|pilot|citadel|galley)\s+version:\s*"
    r"(?:version\.BuildInfo\{Version:\")?|proxyv2:|istio/pilot:|Version:\")"
    r"v?(\d+)\.(\d+)(?:\.\d+)?")


def _minor(text: str) -> tuple[int, int] | None:
    m = re.match(r"\s*v?(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _distinct(found: list[tuple[int, int] | None]) -> list[tuple[int, int]]:
    return sorted({v for v in found if v is not None})


def istio_versions(text: str) -> tuple[list[tuple[int, int]], str]:
    """The Istio versions `istioctl version` (text or `-o json`) or an image tag names, and
    whose: "data plane" (the sidecars: what matters), "control plane" (istiod, pilot, an
    image tag: a hint), "client" (istioctl's own binary: says nothing about the sidecars),
    or "" when none. The data plane line lists one version per group of proxies
    (`1.9.5 (2 proxies), 1.10.3 (4 proxies)`, istioctl/pkg/version): all are returned."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            # istioctl version -o json: clientVersion, meshVersion[].Info.version,
            # dataPlaneVersion[].IstioVersion (istioctl/pkg/version, pkg/version)
            def items(key: str) -> list[dict[str, object]]:
                value = doc.get(key)
                return [x for x in value if isinstance(x, dict)] if isinstance(value, list) else []

            sidecars = _distinct([_minor(str(x.get("IstioVersion", "")))
                                  for x in items("dataPlaneVersion")])
            if sidecars:
                return sidecars, "data plane"
            infos = [x.get("Info") for x in items("meshVersion")]
            mesh = _distinct([_minor(str(info.get("version", ""))) for info in infos
                              if isinstance(info, dict)])
            if mesh:
                return mesh, "control plane"
            binary = doc.get("clientVersion")
            if isinstance(binary, dict) and _minor(str(binary.get("version", ""))):
                return _distinct([_minor(str(binary.get("version", "")))]), "client"
            return [], ""
    data = re.search(r"data plane version:\s*(.*)", text)
    if data:
        found = _distinct([_minor(v) for v in re.findall(
            r"(?:^|,)\s*(v?\d+\.\d+\S*)", data.group(1))])
        if found:
            return found, "data plane"
    m = _VERSION.search(re.sub(r"(?im)^\s*client version:.*$", "", text))
    if m:
        return [(int(m.group(1)), int(m.group(2)))], "control plane"
    own = re.search(r"client version:\s*(?:version\.BuildInfo\{Version:\")?v?(\d+)\.(\d+)",
                    text)
    if own:
        return [(int(own.group(1)), int(own.group(2)))], "client"
    return [], ""


# pilot-agent's first lines in `kubectl logs POD -c istio-proxy`: it logs its own build
# (`log.Infof("Version %s", version.Info.String())` in pilot/cmd/pilot-agent/app/cmd.go,
# BuildInfo.String() is VERSION-GITREVISION-STATUS), e.g.
# `2022-12-17T09:20:01.121035Z	info	Version 1.11.4-9f6f0327...-Clean`. The timestamp is
# optional (`kubectl logs --timestamps` adds another one in front, `--prefix` a pod tag).
_AGENT_VERSION = re.compile(r"^(?:.*\s)?info\s+Version\s+v?(\d+)\.(\d+)[\w.+-]*\s*$", re.M)


def agent_version(text: str) -> tuple[tuple[int, int], str] | None:
    """The Istio version pilot-agent logged at start in an istio-proxy log, and that line;
    None when the log does not reach back to the sidecar's start."""
    m = _AGENT_VERSION.search(text)
    if not m:
        return None
    return (int(m.group(1)), int(m.group(2))), m.group(0).strip()


def istio_version(text: str) -> tuple[int, int] | None:
    """The one Istio version of the sidecars `istioctl version` output or an image tag
    names: the data plane's, else the control plane's; None when only istioctl's own
    (client) version is there, or the data plane is mixed."""
    found, whose = istio_versions(text)
    return found[0] if len(found) == 1 and whose in ("data plane", "control plane") else None
