"""`remora explain source-ip --from POD -n NS --to SERVICE[:PORT]|POD[:PORT]`: the live form.

It collects, from the running lab, the same evidence a user collects by hand from a real
cluster, and hands it to the same pure core (remora.diagnose.source_ip.explain):
- each pod's ``iptables-save -c`` from inside its network namespace (the node daemon's
  exec argv), just before and just after the probe, so the trace shows the counters the
  probe moved (remora.diagnose.evidence.lab_counters);
- each sidecar's ``/config_dump?include_eds`` from its admin port 127.0.0.1:15000, over a
  socket made in the pod's namespace (remora.lab.admin, as `remora proxy-config` does);
- one real HTTP request from the client pod (remora.diagnose.evidence.lab_probe) and the lines it
  left in the client's and the server's istio-proxy access logs, found by its
  x-request-id: the server's UPSTREAM_LOCAL_ADDRESS is the confirmation of the verdict;
- the server app's own log line for that connection (``RemoteAddr=``), when it prints one;
- each sidecar process's uid/gid and the server pod's TPROXY policy routing
  (remora.diagnose.evidence.lab_pod_facts).
The lab's objects come from the node daemon (remora.node.client via remora.lab.session).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from remora.controlplane.protocol import GRPC, is_http2
from remora.diagnose.envoy.access_log import AccessLogEntry
from remora.diagnose.envoy.config import EnvoyConfig, parse_config_text
from remora.diagnose.evidence import lab_pod_facts as live_pod_facts
from remora.diagnose.evidence import lab_probe as live_probe
from remora.diagnose.evidence.lab_counters import MovedRule, annotate, complete_tables
from remora.diagnose.evidence.lab_probe import ProbeResult
from remora.diagnose.evidence.review import review
from remora.diagnose.evidence.target import (
    Destination,
    LabPod,
    family_of_ip,
    find_pod,
    resolve_destination,
)
from remora.diagnose.facts import app_peer, hostport, is_ip, split_hostport
from remora.diagnose.iptables.model import Ruleset
from remora.diagnose.iptables.save import parse_iptables_save
from remora.diagnose.source_ip.evidence import Evidence, PodEvidence
from remora.diagnose.source_ip.explain import Report, explain_source_ip
from remora.errors import RemoraError
from remora.lab import admin, session
from remora.node.client import NodeClient

LOG_TAIL = 400  # access-log lines read per poll: the probe's line is among the last ones


@dataclass
class LiveRun:
    evidence: Evidence
    client: LabPod
    server: LabPod
    dest: Destination
    probe: ProbeResult
    moved: dict[str, list[MovedRule]] = field(default_factory=dict)  # "client"/"server"
    notes: list[str] = field(default_factory=list)
    app_line: str = ""  # the server app's log line for the probe's connection


def _save(node: NodeClient, pod: LabPod, family: int) -> Ruleset:
    """``iptables-save -c`` (FAMILY 6: ``ip6tables-save -c``, the rules Istio repeats for
    IPv6 with ``::1`` and ``::6``) in POD's network namespace."""
    save = "ip6tables-save" if family == 6 else "iptables-save"
    argv = [*node.exec_argv(pod.namespace, pod.name), save, "-c"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RemoraError(f"cannot run {save} in pod {pod.ref}: {exc}",
                          "is iptables (iptables-nft) installed on this host?") from None
    if done.returncode != 0:
        raise RemoraError(f"{save} -c in pod {pod.ref} failed: "
                          f"{(done.stderr or done.stdout).strip()[:200]}",
                          f"try `remora exec -n {pod.namespace} {pod.name} -- {save}`")
    families = parse_iptables_save(done.stdout, origin=f"{save} -c in pod {pod.ref}")
    rules = complete_tables(families[0] if families else Ruleset(origin=f"{save} -c"))
    rules.family = family
    return rules


def _iptables(node: NodeClient, pod: LabPod) -> Ruleset:
    return _save(node, pod, 4)


def _ip6tables(node: NodeClient, pod: LabPod) -> Ruleset | None:
    """A pod with an IPv6 address (status.podIPs, a dual-stack or IPv6 lab): its
    ``ip6tables-save`` too, the rules an IPv6 connection is walked through."""
    if not any(":" in ip for ip in pod.ips):
        return None
    try:
        return _save(node, pod, 6)
    except RemoraError:
        return None


def _config(pod: LabPod) -> EnvoyConfig:
    body = admin.request(pod.netns, "GET", "/config_dump?include_eds", where=pod.ref)
    cfg = EnvoyConfig()
    parse_config_text(cfg, body.decode("utf-8", errors="replace"),
                      f"/config_dump?include_eds of {pod.ref}")
    return cfg


def _flush_access_log(pod: LabPod) -> None:
    """Envoy writes file access logs every --file-flush-interval-msec (10 s by default);
    its admin `POST /reopen_logs` writes them out now
    (https://www.envoyproxy.io/docs/envoy/latest/operations/admin#post--reopen_logs).
    `remora proxy` writes each line at once and has no such endpoint: nothing to do."""
    if not pod.has_sidecar:
        return
    with contextlib.suppress(RemoraError):
        admin.request(pod.netns, "POST", "/reopen_logs", timeout=3.0, where=pod.ref)


def _log_reader(node: NodeClient, pod: LabPod, container: str) -> Callable[[], str]:
    def read() -> str:
        return str(node.logs(pod.namespace, pod.name, container, tail=LOG_TAIL)["text"])
    return read


def _entries(node: NodeClient, pod: LabPod, rid: str, timeout: float) -> list[AccessLogEntry]:
    if not pod.has_sidecar:
        return []
    return live_probe.wait_entries(_log_reader(node, pod, "istio-proxy"), rid,
                                   f"istio-proxy log of {pod.ref}", timeout)


def _wait_both(node: NodeClient, src: LabPod, server: LabPod, rid: str,
               timeout: float) -> tuple[list[AccessLogEntry], list[AccessLogEntry]]:
    """The probe's lines in both sidecars' logs. The server's line is the one that
    matters; once it is there the client's gets a short grace (a TCP passthrough line
    carries no request id and will never match)."""
    start = time.monotonic()
    deadline = start + timeout
    c_found: list[AccessLogEntry] = []
    s_found: list[AccessLogEntry] = []
    s_done_at: float | None = None if server.has_sidecar else start
    while True:
        if src.has_sidecar and not c_found:
            c_found = live_probe.probe_entries(_log_reader(node, src, "istio-proxy")(), rid,
                                               f"istio-proxy log of {src.ref}")
        if server.has_sidecar and not s_found:
            s_found = live_probe.probe_entries(_log_reader(node, server, "istio-proxy")(),
                                               rid, f"istio-proxy log of {server.ref}")
            if s_found:
                s_done_at = time.monotonic()
        now = time.monotonic()
        if (c_found or not src.has_sidecar) and s_done_at is not None:
            break
        if now > deadline or (s_done_at is not None and now - s_done_at > 0.5):
            break
        time.sleep(0.1)
    return c_found, s_found


def pick_server(node: NodeClient, dest: Destination, c_entries: list[AccessLogEntry],
                 rid: str, timeout: float, notes: list[str]) -> tuple[LabPod, list[AccessLogEntry]]:
    """The endpoint that served the probe: the client log's UPSTREAM_HOST, else the
    candidate whose sidecar logged it, else the only (or first) candidate."""
    ups = [split_hostport(e.upstream_host or "")[0] for e in c_entries if e.upstream_host]
    for pod in dest.candidates:
        if set(pod.ips) & set(ups):
            return pod, _entries(node, pod, rid, timeout)
    if len(dest.candidates) > 1:
        for pod in dest.candidates:
            found = _entries(node, pod, rid, timeout / len(dest.candidates))
            if found:
                return pod, found
        notes.append(f"could not tell which of {len(dest.candidates)} endpoints served the "
                     f"probe; showing {dest.candidates[0].ref}")
    pod = dest.candidates[0]
    return pod, _entries(node, pod, rid, timeout)


def _app_line(node: NodeClient, pod: LabPod, addresses: list[str]) -> str:
    """The server app's own log line for the probe's connection (``RemoteAddr=IP:PORT``,
    or a gRPC server's ``Peer=ipv4:IP:PORT``: remora.diagnose.facts.app_peer)."""
    if not pod.app_container or not addresses:
        return ""
    try:
        text = str(node.logs(pod.namespace, pod.name, pod.app_container, tail=LOG_TAIL)["text"])
    except RemoraError:
        return ""
    for line in reversed(text.splitlines()):
        peer = app_peer(line)
        if peer is not None and peer[1] in addresses:
            return line.strip()
    return ""


def _pod_evidence(pe: PodEvidence, pod: LabPod, rules: Ruleset | None,
                  cfg: EnvoyConfig | None, entries: list[AccessLogEntry], rid: str,
                  rules6: Ruleset | None = None, family: int = 4) -> None:
    """RULES / RULES6: the pod's IPv4 / IPv6 rules; those of the connection's FAMILY were
    read before and after the probe (their counters say what it moved)."""
    pe.pod, pe.namespace, pe.ip = pod.name, pod.namespace, pod.ip
    pe.iptables, pe.config, pe.access_log = rules, cfg, entries
    timing = " (before and after the probe)"
    if rules is not None:
        pe.sources.append(f"iptables-save -c in pod {pod.ref}{timing if family == 4 else ''}")
    if rules6 is not None:
        pe.iptables6 = rules6
        pe.sources.append(f"ip6tables-save -c in pod {pod.ref}{timing if family == 6 else ''}")
    if cfg is not None:
        pe.sources.append(f"config: /config_dump?include_eds from {pod.ref}'s sidecar "
                          "(127.0.0.1:15000 in its network namespace)")
    else:
        pe.sources.append(f"no sidecar (istio-proxy) in {pod.ref}")
    if entries:
        pe.sources.append(f"access log: istio-proxy log of {pod.ref}, line "
                          f"{entries[0].line} (x-request-id {rid})")


def collect(state_dir: Path, from_pod: str, namespace: str, to: str, path: str = "/",
            timeout: float = 5.0, family: int | None = None) -> LiveRun:
    """Everything the live form needs, from the running lab; raises RemoraError with a
    one-line problem and fix when the lab, a pod or a service is not what was expected."""
    node = session.connect(state_dir)
    pods, services = node.get("Pod"), node.get("Service")
    src = find_pod(pods, from_pod, namespace, "client", deployments=node.get("Deployment"))
    dest = resolve_destination(to, src.namespace, services, pods, family=family)
    notes: list[str] = []
    _real_family(dest, src, notes)
    # The connection's family is the destination address's: an IPv6 ClusterIP or pod IP
    # is walked through ip6tables, probed over IPv6, and each pod is named by its address
    # of that family (a dual-stack pod has one of each, status.podIPs).
    fam = family_of_ip(dest.host)
    src = replace(src, ip=src.ip_of(fam))
    dest.candidates = [replace(p, ip=p.ip_of(fam)) for p in dest.candidates]
    watched = [src, *[p for p in dest.candidates if p.name != src.name]]
    before = {p.ref: _save(node, p, fam) for p in watched}
    rid = live_probe.new_request_id()
    if is_http2(dest.protocol):  # the port's protocol: what its clients speak
        result = live_probe.probe_h2(src.netns, dest.host, dest.port, dest.authority, path,
                                     rid, timeout, grpc=dest.protocol == GRPC)
    else:
        result = live_probe.probe(src.netns, dest.host, dest.port, dest.authority, path,
                                  rid, timeout)
    after = {p.ref: _save(node, p, fam) for p in watched}
    for p in watched:
        _flush_access_log(p)
    moved = {p.ref: annotate(before[p.ref], after[p.ref]) for p in watched}
    if len(dest.candidates) == 1:
        server = dest.candidates[0]
        c_entries, s_entries = _wait_both(node, src, server, rid, min(timeout, 3.0))
    else:
        c_entries = _entries(node, src, rid, min(timeout, 3.0))
        server, s_entries = pick_server(node, dest, c_entries, rid, min(timeout, 3.0), notes)
    ev = Evidence()
    for pe, pod, entries in ((ev.client, src, c_entries), (ev.server, server, s_entries)):
        rules: Ruleset | None
        rules6: Ruleset | None
        if fam == 6:
            v4 = _iptables(node, pod) if any(":" not in ip for ip in pod.ips) else None
            rules, rules6 = v4, after[pod.ref]
        else:
            rules, rules6 = after[pod.ref], _ip6tables(node, pod)
        _pod_evidence(pe, pod, rules, _config(pod) if pod.has_sidecar else None, entries,
                      rid, rules6, fam)
    live_pod_facts.fill(ev.client, node, src, routing=False, family=fam)
    live_pod_facts.fill(ev.server, node, server, routing=True, family=fam)
    ev.target.host, ev.target.port, ev.target.path = dest.host, dest.port, path
    # What the server's app saw for this connection, from the address the last hop used.
    seen = [e.upstream_local_address for e in s_entries if e.upstream_local_address]
    if not server.has_sidecar:
        seen += [e.upstream_local_address for e in c_entries if e.upstream_local_address]
        if not src.has_sidecar and result.local_address:
            seen.append(result.local_address)
    app_line = _app_line(node, server, seen)
    if app_line:
        ev.server.app_log.append(app_line)
    _notes(notes, src, server, result, c_entries, s_entries)
    _http2_note(notes, dest, result, s_entries)
    _crossed(notes, dest, c_entries)
    pooled = [e.upstream_local_address for e in c_entries if e.upstream_local_address]
    if server.has_sidecar and not moved[server.ref] and pooled and result.status is not None:
        notes.append(f"no rule counter moved in {server.ref}: the client sidecar sent the "
                     f"probe over a connection it already had open (from {pooled[0]}), and "
                     "the nat table sees only a connection's first packet")
    return LiveRun(ev, src, server, dest, result,
                   {"client": moved[src.ref], "server": moved[server.ref]}, notes, app_line)


def _real_family(dest: Destination, src: LabPod, notes: list[str]) -> None:
    """A dual-stack service dialled on its ClusterIP of the other family than its pods'
    primary one, from a pod with a sidecar: the app's connection ends at its own sidecar,
    which reaches the server at the endpoint's ``address``, the pod's primary address
    (istiod with ISTIO_DUAL_STACK: endpoint_builder.go buildEnvoyLbEndpoint, the other
    family only in ``additional_addresses``, a Happy Eyeballs fallback). So what the
    server's app sees travels over the primary family, and a walk of the dialled family
    on both sides would be a connection that never exists (an IPv6 client to an IPv4
    server). Walk and probe the path the traffic takes past the client sidecar: the
    ClusterIP of the pods' primary family; say so."""
    if dest.kind != "service" or not src.has_sidecar or len(dest.cluster_ips) < 2 \
            or not dest.candidates:
        return
    pod_ips = dest.candidates[0].ips
    if len(pod_ips) < 2:
        return
    dialled, primary = family_of_ip(dest.host), family_of_ip(pod_ips[0])
    real = next((ip for ip in dest.cluster_ips if family_of_ip(ip) == primary), None)
    if dialled == primary or real is None:
        return
    notes.append(
        f"IPv{dialled} is not the path the traffic takes to the server: the app's "
        f"connection to {hostport(dest.host, dest.port)} ends at its own sidecar (captured "
        f"by the IPv{dialled} rules, as the IPv{primary} one would be), and the sidecar "
        f"reaches {dest.candidates[0].ref} at its primary address {pod_ips[0]} over "
        f"IPv{primary}: Istio's EDS lists a dual-stack pod at its primary address, the "
        "other family only as additional_addresses, a Happy Eyeballs fallback. So the "
        f"server's app sees an IPv{primary} connection; the probe and the steps below "
        f"use the service's IPv{primary} ClusterIP {real}, the path that decides what the "
        "app sees")
    dest.host = real


def _crossed(notes: list[str], dest: Destination, c_entries: list[AccessLogEntry]) -> None:
    """A dual-stack service dialled on its ClusterIP of the other family than its pods'
    primary one: the client sidecar still reaches the server at the endpoint's
    ``address`` (istiod's EDS with ISTIO_DUAL_STACK: the pod's primary address, the other
    family in ``additional_addresses`` for Happy Eyeballs only), so the two sides of the
    connection are of different families. The diagnosis walks one family; say so."""
    fam = family_of_ip(dest.host)
    for e in c_entries:
        host = split_hostport(e.upstream_host or "")[0]
        if host and is_ip(host) and family_of_ip(host) != fam:
            notes.append(
                f"the app dialled IPv{fam} ({dest.host}) but its sidecar reached the server "
                f"at {e.upstream_host} (IPv{family_of_ip(host)}, client access log line "
                f"{e.line}): Istio's EDS lists a dual-stack pod at its primary address and "
                "the other family only as additional_addresses, a Happy Eyeballs fallback; "
                f"the steps below walk IPv{fam} on both sides, the server's access log line "
                "is what really happened there")
            return


def _notes(notes: list[str], src: LabPod, server: LabPod, probe: ProbeResult,
           c_entries: list[AccessLogEntry], s_entries: list[AccessLogEntry]) -> None:
    if probe.status is None:
        notes.append(f"the probe failed ({probe.error}); the steps below come from the rules "
                     "and config alone")
    if not src.has_sidecar:
        notes.append(f"client pod {src.ref} has no sidecar (istio-proxy): its connections "
                     "leave it uncaptured, in plain text, with its own address")
    elif not c_entries:
        notes.append(f"the probe left no line in {src.ref}'s istio-proxy access log")
    if not server.has_sidecar:
        notes.append(f"server pod {server.ref} has no sidecar (istio-proxy): no mesh on its "
                     "side, nothing rewrites the source, so its app sees the address the "
                     "connection really comes from")
    elif not s_entries:
        notes.append(f"the probe left no line in {server.ref}'s istio-proxy access log, so "
                     "the verdict is not confirmed by it")


def _http2_note(notes: list[str], dest: Destination, probe: ProbeResult,
                s_entries: list[AccessLogEntry]) -> None:
    """An HTTP/2 port: why the probe spoke HTTP/2, and that it changes nothing about the
    address the app sees (HTTP/2 streams ride the sidecars' TCP connections; the server
    sidecar's own connection to the app carries them as h2c)."""
    if probe.protocol != "HTTP/2":
        return
    what = "a gRPC call" if probe.grpc else "an HTTP/2 request"
    logged = next((e for e in s_entries if e.protocol), None)
    seen = (f"; the server sidecar logged it as {logged.protocol} (access log line "
            f"{logged.line})" if logged is not None else "")
    notes.append(f"the port's protocol is {dest.protocol} (Istio's protocol selection: the "
                 f"Service port's name or appProtocol), so the probe was {what} over HTTP/2 "
                 f"(h2c, prior knowledge) as the port's clients send it{seen}; HTTP/2 rides "
                 "the same TCP connections, so the address the app sees is decided the same "
                 "way: by the server sidecar's own connection to the app")


def explain(run: LiveRun) -> Report:
    """The core's report for the live evidence, with what only the live run knows."""
    return review(explain_source_ip(run.evidence), run.client, run.server, run.app_line,
                  "the probe's connection")
