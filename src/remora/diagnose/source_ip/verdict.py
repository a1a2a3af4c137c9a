"""Step 5 of `explain source-ip`: the address the app sees, its confirmation, and the fix.

The fixes are Istio's documented ones (istio-internals.md section 7): interception mode
TPROXY (``sidecar.istio.io/interceptionMode``; the inbound listener then gets
``original_src``), or for HTTP a header the app reads (X-Forwarded-For appended by an HCM
with ``use_remote_address: true``; X-Envoy-External-Address at a gateway, trusted per
``gatewayTopology.numTrustedProxies``).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from remora.diagnose.envoy.upstream import bind_address
from remora.diagnose.facts import Missing, app_peer, is_ip, split_hostport
from remora.diagnose.source_ip.evidence import Evidence, PodEvidence
from remora.diagnose.source_ip.facts import for_port, log_port
from remora.diagnose.source_ip.istio_version import VersionInfo, detect

if TYPE_CHECKING:
    from remora.diagnose.envoy.access_log import AccessLogEntry
    from remora.diagnose.iptables.model import Rule
    from remora.diagnose.source_ip.explain import Step
    from remora.diagnose.source_ip.facts import Fact

TPROXY_PATCH = {"spec": {"template": {"metadata": {"annotations": {
    "sidecar.istio.io/interceptionMode": "TPROXY"}}}}}
BIND_RULE = "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"
LOOP_RULE = ("-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 "
             "-m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT")
# istio-iptables repeats them in ip6tables with ::6 and ::1 (tools/istio-iptables
# capture: PLACEHOLDER_IP_VERSION_SPECIFIC; the ipv6-*.golden files)
BIND_RULE6 = "-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN"
LOOP_RULE6 = LOOP_RULE.replace("127.0.0.1/32", "::1/128")


@dataclass
class Fix:
    title: str
    commands: list[str]
    cost: list[str]


@dataclass
class Verdict:
    failure: str | None = None
    app_sees: str | None = None
    app_sees_why: str = ""
    inferred: bool = False  # from the mode alone, not from the sidecar's config
    # established (the evidence named in basis), inferred (the assumption named in
    # basis) or undecided (the missing piece in basis, its command in missing)
    kind: str = "undecided"
    basis: str = ""
    model_note: str = ""  # when the access log overrides the model: why the model was wrong
    istio_version: str = ""  # the version used, and why
    client_ip: str = ""
    sees_client: bool | None = None
    confirmed: bool | None = None
    confirmation: str = ""
    xff_carries_client: bool | None = None
    xff: str = ""
    explanation_127: list[str] = field(default_factory=list)
    fixes: list[Fix] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)


def deployment_of(pod: PodEvidence) -> tuple[str, str]:
    """(deployment, namespace) for the patch command; placeholders when unknown."""
    name, ns = pod.pod, pod.namespace
    node_pod, node_ns = pod.node_pod()
    name, ns = name or node_pod, ns or node_ns
    if name:
        # ReplicaSet pods are DEPLOYMENT-<pod-template-hash>-<5 chars>
        m = re.fullmatch(r"(.+)-[a-z0-9]{5,10}-[a-z0-9]{5}", name)
        name = m.group(1) if m else name
    return name or "SERVER_DEPLOYMENT", ns or "SERVER_NAMESPACE"


def tproxy_fix(pod: PodEvidence) -> Fix:
    name, ns = deployment_of(pod)
    patch = json.dumps(TPROXY_PATCH, separators=(",", ":"))
    return Fix(
        "switch the server's inbound interception to TPROXY (sidecar.istio.io/interceptionMode)",
        [f"remora patch deployment {name} -n {ns} -p '{patch}'",
         f"kubectl patch deployment {name} -n {ns} -p '{patch}'"],
        ["istio-proxy runs with CAP_NET_ADMIN, as uid 0 / gid 1337 (IP_TRANSPARENT and SO_MARK "
         "for original_src)",
         "mangle rules on every inbound TCP packet, not just the first (ISTIO_INBOUND, "
         "ISTIO_DIVERT mark 1337, CONNMARK save/restore), plus policy routing "
         "(ip rule fwmark 1337 lookup 133; local default route on lo)",
         "the sidecar reuses a pooled connection to the app only for the same client address",
         "the pods restart to get the new istio-init rules"])


def header_fix(client_ip: str) -> Fix:
    return Fix(
        "for HTTP: have the app read a header that carries the client",
        ["X-Forwarded-For: set use_remote_address: true on the server sidecar's inbound "
         f"http_connection_manager (an EnvoyFilter) so Envoy appends {client_ip}",
         "at an ingress gateway (already use_remote_address: true): read X-Forwarded-For or "
         "X-Envoy-External-Address, trusted per meshConfig.defaultConfig.gatewayTopology."
         "numTrustedProxies"],
        ["HTTP only; the app must be changed to read the header",
         "a header is only as trustworthy as the first proxy that sets it"])


def _first_failure(steps: list[Step]) -> Step | None:
    return next((s for s in steps if s.status == "failed"), None)


def _server_has_evidence(ev: Evidence) -> bool:
    pod = ev.server
    return (pod.iptables is not None or pod.config is not None or bool(pod.version_text)
            or bool(pod.declared) or ev.istio_version is not None
            or any(e.direction == "inbound" for e in pod.access_log))


def _inbound_cluster(ev: Evidence, port: int) -> tuple[str, str, str] | None:
    """An inbound cluster for the port in the server config, with the address its
    connection to the app comes from: (name, source, why). Istio's STATIC inbound clusters
    (before 1.10) carry the endpoint inline in load_assignment."""
    cfg = ev.server.config
    if cfg is None:
        return None
    for name, cluster in cfg.clusters.items():
        if not name.startswith(f"inbound|{port}|"):
            continue
        bind = ((cluster.get("upstream_bind_config") or {}).get("source_address") or {})
        if bind.get("address"):
            # the bind address of the connection's family (dual stack: ::6 is in
            # extra_source_addresses); an IPv4-only bind for an IPv6 connection is said
            address, field_ = bind_address(cluster, "[::1]:0" if ev.server.walk_family == 6
                                           else "127.0.0.1:0")
            why = f"its upstream_bind_config.{field_} {address}"
            if ev.server.walk_family == 6 and ":" not in address:
                why += (" (no IPv6 bind address in the cluster: Envoy cannot bind it for an "
                        "IPv6 upstream; is this the config of an IPv6 pod?)")
            return name, address, why
        eps = cfg.endpoints.get(name) or []
        if eps and eps[0].address.startswith("127."):
            return name, "127.0.0.1", (f"its endpoint {eps[0].address}:{eps[0].port} (inline "
                                       "load_assignment) with no upstream_bind_config: the "
                                       "kernel picks 127.0.0.1 for a loopback destination")
    return None


def _by_version(v: Verdict, ev: Evidence, port: int, ver: VersionInfo) -> None:
    """REDIRECT capture without the sidecar's config: Istio's inbound default by version."""
    found = _inbound_cluster(ev, port)
    if found:
        name, src, why = found
        v.app_sees, v.kind = src, "inferred"
        v.basis = (f"the connection reaches cluster {name} (the listener is not in the "
                   f"evidence); {why}")
        v.app_sees_why = f"inferred from cluster {name}: {why}"
        return
    if ver.mixed and ver.before_1_10 is None:
        # a data plane of versions on both sides of 1.10: each side gives another answer
        v.kind = "undecided"
        v.basis = f"Istio version: {ver.why}"
        v.missing.append(Missing("the server sidecar's Istio version",
                                 f"kubectl get pod {ev.server.pod_ref()} -o jsonpath="
                                 "'{.spec.containers[?(@.name==\"istio-proxy\")].image}'  (or "
                                 "istioctl proxy-status)"))
        return
    v.kind = "inferred"
    if ver.before_1_10:
        v.app_sees = "127.0.0.1"
        v.basis = (f"Istio {ver.label()} ({ver.why}) dials a declared port's app at "
                   "127.0.0.1 from 127.0.0.1, and the port is declared in a Service (an "
                   "undeclared port goes through InboundPassthroughClusterIpv4 from 127.0.0.6)")
    else:
        v.app_sees = "127.0.0.6"
        guess = "" if ver.before_1_10 is False else (
            "; the version is not in the evidence: before 1.10 it would be 127.0.0.1 "
            "(pass --istio-version X.Y)")
        v.basis = (f"Istio {ver.label() if ver.version or ver.at_least else '1.10 or later'} "
                   "binds inbound connections to 127.0.0.6 (upstream_bind_config)" + guess)
    v.app_sees_why = "inferred: " + v.basis


def _tproxy(v: Verdict, ver: VersionInfo, lead: str) -> None:
    """TPROXY capture without the sidecar's config: original_src by version. Istio adds the
    original_src listener filter to the inbound listener in TPROXY mode since 1.7
    (istio/istio#23275, "Preserve source ip in TPROXY mode"); before, the inbound cluster
    dialled the app at 127.0.0.1 from 127.0.0.1 even under TPROXY."""
    v.kind, v.inferred = "inferred", True
    if ver.older_than((1, 7)):
        v.app_sees = "127.0.0.1"
        v.basis = (f"{lead}Istio {ver.label()} ({ver.why}) had no original_src in TPROXY mode "
                   "(added in 1.7, istio/istio#23275): the inbound cluster dialled the app at "
                   "127.0.0.1 from 127.0.0.1")
    else:
        v.app_sees = v.client_ip
        guess = "" if ver.older_than((1, 7)) is False else (
            "; the version is not in the evidence: before 1.7 the app saw 127.0.0.1 (pass "
            "--istio-version X.Y)")
        v.basis = (f"{lead}in TPROXY mode Istio (1.7 and later) adds original_src to the "
                   "inbound listener, which binds the client's address (the sidecar's config "
                   "is not in the evidence)" + guess)
    v.app_sees_why = "inferred: " + v.basis


def _declared_capture(pod: PodEvidence, port: int) -> bool:
    """istio-init's variables say this port's inbound connections are captured."""
    include = pod.declared.get("INBOUND_PORTS_INCLUDE")
    exclude = [p for p in pod.declared.get("INBOUND_PORTS_EXCLUDE", "").split(",") if p]
    if include is None or str(port) in exclude:
        return False
    return include.strip() == "*" or str(port) in [p for p in include.split(",") if p]


def _contradiction(ev: Evidence, step3: Step, port: int) -> str | None:
    """The rules as pasted capture nothing, yet istio-init declares the capture, and the
    table its mode captures in is there: the paste is cut off. The declared mode, or None."""
    mode = ev.server.declared.get("INBOUND_INTERCEPTION_MODE", "")
    walk = step3.walk
    if walk is None or not mode or not _declared_capture(ev.server, port):
        return None
    table = "mangle" if mode == "TPROXY" else "nat"
    return mode if table not in walk.missing_tables else None


def decide(ev: Evidence, steps: list[Step], facts: dict[str, Fact], mode: str) -> Verdict:
    v = Verdict(client_ip=facts["client_ip"].value)
    ver = detect(ev)
    v.istio_version = f"{ver.label()} ({ver.why})"
    port = int(facts["port"].value)
    failed = _first_failure(steps)
    if failed is not None:
        v.failure = f"step {failed.number} ({failed.title}) failed: {failed.summary}"
        v.kind = "established"
        v.basis = "the step that failed, from the evidence"
        return v
    step3, step4 = steps[2], steps[3]
    incoming = step3.walk.packet.src if step3.walk else None
    declared = ev.server.declared
    z_in = [e for e in ev.server.ztunnel_log if e.direction == "inbound"]
    rejected = next((e for e in z_in if e.error), None)
    if mode == "ambient" and rejected is not None and len(z_in) == 1:
        v.failure = (f"ztunnel closed the inbound connection from {rejected.src} to "
                     f"{rejected.dst} (ztunnel log line {rejected.line}): {rejected.error}")
        v.kind = "established"
        v.basis = f"the ztunnel log, line {rejected.line}: error=\"{rejected.error}\""
        return v
    if mode == "ambient":
        v.app_sees, v.kind, v.inferred = v.client_ip, "inferred", True
        v.basis = ("ztunnel, which the ambient rules send the connection to, dials the "
                   "app from the client's address (its default inbound spoofing with "
                   "IP_TRANSPARENT); the rules are ambient's, not a sidecar's")
        v.app_sees_why = "inferred: " + v.basis
    elif step3.status == "not captured" and ev.server.iptables is not None and (
            ev.server.iptables.legacy_hidden):
        v.kind = "undecided"
        v.basis = ("the rules given capture nothing inbound, but they are iptables-nft's and "
                   "it warns that iptables-legacy tables are present: Istio's rules may be in "
                   "the legacy backend (istio-iptables picks the backend itself), which this "
                   "output does not show")
        v.missing.append(Missing("the server pod's iptables-legacy rules",
                                 f"kubectl exec {ev.server.pod_ref()} -c istio-proxy -- "
                                 "iptables-legacy-save  (or on its node: nsenter --target "
                                 "<container pid> --net iptables-legacy-save)"))
    elif step3.status == "not captured" and _contradiction(ev, step3, port):
        declared_mode = _contradiction(ev, step3, port)
        lead = (f"istio-init declares {declared_mode} capture of port {port} "
                f"(INBOUND_PORTS_INCLUDE={ev.server.declared.get('INBOUND_PORTS_INCLUDE')}) "
                "while the pasted rules capture nothing: they are cut off, the declaration "
                "is taken; ")
        if ver.older_than((1, 10)) is None and declared_mode == "REDIRECT":
            v.kind = "undecided"
            v.basis = lead + ("but the Istio version is not in the evidence either (127.0.0.1 "
                              "before 1.10, 127.0.0.6 after)")
            v.missing.append(Missing("the server pod's whole rule set and the Istio version",
                                     f"kubectl exec {ev.server.pod_ref()} -c istio-proxy -- "
                                     "iptables-save; istioctl version"))
        elif declared_mode == "TPROXY":
            _tproxy(v, ver, lead)
        else:
            _by_version(v, ev, port, ver)
            v.basis = lead + v.basis
            v.app_sees_why = "inferred: " + v.basis
    elif step3.status == "not captured" and step3.walk is not None:
        if "mangle" in step3.walk.missing_tables and not _nat_captures_inbound(ev):
            _nat_only(v, ev, step3, port, declared)
        else:
            v.app_sees, v.kind = str(incoming), "established"
            v.basis = "the server pod's rules: " + step3.walk.capture.reason
            v.app_sees_why = ("inbound is not captured (" + step3.walk.capture.reason +
                              "): the connection reaches the app unchanged")
    elif step4.sidecar is not None and step4.sidecar.upstream_source:
        v.app_sees = step4.sidecar.upstream_source
        v.app_sees_why = step4.sidecar.upstream_source_why
        if ev.server.iptables is not None:
            v.kind, v.basis = "established", ("the server pod's rules and its sidecar's config: "
                                              + v.app_sees_why)
        else:
            v.kind = "inferred"
            v.basis = (f"the server's interception mode is {mode} (its rules are not "
                       f"in the evidence); {v.app_sees_why}")
    elif mode in ("REDIRECT", "TPROXY") and _server_has_evidence(ev):
        v.inferred = True
        if mode == "TPROXY":
            _tproxy(v, ver, "")
        else:
            _by_version(v, ev, port, ver)
    _confirm(ev, v, mode, port)
    if v.app_sees is None and v.kind == "undecided" and not v.basis:
        v.basis = ("nothing in the evidence decides it: the server pod's rules, its sidecar's "
                   "config or an inbound access-log line is needed")
        v.missing.append(Missing("the server pod's capture rules",
                                 f"kubectl exec {ev.server.pod_ref()} -c istio-proxy -- "
                                 "iptables-save"))
    if v.app_sees is not None:
        v.sees_client = v.app_sees == v.client_ip
    _xff(ev, steps, v, port)
    if v.app_sees in ("127.0.0.6", "::6"):
        v.explanation_127 = _explain_127(step4, ev, v.app_sees)
    elif v.app_sees == "127.0.0.1":
        v.explanation_127 = explain_127_0_0_1(ver)
    if v.sees_client is False:
        fix = tproxy_fix(ev.server)
        if ver.older_than((1, 7)) is not False and v.app_sees == "127.0.0.1":
            fix.cost.insert(0, "needs Istio 1.7 or later: before, TPROXY mode had no "
                               "original_src (istio/istio#23275) and the app saw 127.0.0.1 "
                               "all the same")
        v.fixes.append(fix)
        http = step4.sidecar is None or step4.sidecar.network_filter != (
            "envoy.filters.network.tcp_proxy") or any(e.protocol for e in ev.server.access_log)
        if http:
            v.fixes.append(header_fix(v.client_ip))
    return v


def _nat_captures_inbound(ev: Evidence) -> bool:
    """Does nat PREROUTING lead to a REDIRECT (REDIRECT mode: nat is where inbound capture
    lives, so a port it lets through is not captured at all)?"""
    rs = ev.server.iptables
    nat = rs.tables.get("nat") if rs else None
    if nat is None:
        return False
    seen: set[str] = set()
    todo = ["PREROUTING"]
    while todo:
        name = todo.pop()
        if name in seen or name not in nat.chains:
            continue
        seen.add(name)
        for r in nat.chains[name].rules:
            if r.target.name == "REDIRECT":
                return True
            todo.append(r.target.name)
    return False


def _nat_only(v: Verdict, ev: Evidence, step3: Step, port: int,
              declared: dict[str, str]) -> None:
    """nat says "not captured" but mangle, where TPROXY capture lives, is not given."""
    mode = declared.get("INBOUND_INTERCEPTION_MODE", "")
    ports = declared.get("INBOUND_PORTS_INCLUDE")
    cmd = (f"kubectl exec {ev.server.pod_ref()} -c istio-proxy -- iptables-save  (all tables; "
           "or iptables -t mangle -L -v)")
    if mode == "TPROXY":
        _tproxy(v, detect(ev), "istio-init says INBOUND_INTERCEPTION_MODE=TPROXY, so inbound "
                "capture is in the mangle table (not in the evidence); ")
        return
    elif mode == "REDIRECT" and ports == "":
        v.app_sees, v.kind = v.client_ip, "inferred"
        v.basis = ("the rules are what istio-init wrote; it says "
                   "INBOUND_INTERCEPTION_MODE=REDIRECT with INBOUND_PORTS_INCLUDE empty, so "
                   "no inbound port is captured (no ISTIO_INBOUND chain) and the app sees the "
                   "client directly")
    elif mode and ports is not None and (ports == "*" or str(port) in ports.split(",")):
        v.kind = "undecided"
        v.basis = (f"the rules as given capture nothing inbound, but istio-init says "
                   f"INBOUND_INTERCEPTION_MODE={mode} with INBOUND_PORTS_INCLUDE={ports}: the "
                   "pasted rules are cut off")
        v.missing.append(Missing("the server pod's whole rule set", cmd))
        return
    else:
        v.kind = "undecided"
        v.basis = ("the nat table captures nothing inbound, but the mangle table, where "
                   "TPROXY-mode capture lives, is not in the evidence: it decides")
        rs = ev.server.iptables
        nat = rs.tables.get("nat") if rs else None
        empty = [c for c in ("ISTIO_IN_REDIRECT", "ISTIO_REDIRECT")
                 if nat and c in nat.chains and not nat.chains[c].rules]
        if empty:
            v.basis += (f"; and the nat listing looks cut off: {', '.join(empty)} "
                        "is declared but has no rule")
        v.missing.append(Missing("the server pod's mangle table", cmd))
        return
    v.app_sees_why = "inferred: " + v.basis


def _model_wrong(model: str, why: str, seen: str, client: str) -> str:
    if seen == "127.0.0.1" and model == "127.0.0.6":
        reason = ("the sidecar forwards to 127.0.0.1 as Istio did before 1.10 (or with "
                  "PILOT_ENABLE_INBOUND_PASSTHROUGH=false): the version assumed was wrong")
    elif seen == "127.0.0.6" and model == "127.0.0.1":
        reason = ("the sidecar binds 127.0.0.6 as Istio 1.10 and later do (or the port is not "
                  "declared in a Service): the version assumed was wrong")
    elif seen == client:
        reason = "the inbound listener keeps the client's address (original_src / TPROXY)"
    else:
        reason = ("the rules or config describe another moment or pod than the logged "
                  "request")
    return f"the model said {model} ({why}); the access log shows {seen}: {reason}"


def _confirm(ev: Evidence, v: Verdict, mode: str = "", port: int = 0) -> None:
    """The server sidecar's access log: its UPSTREAM_LOCAL_ADDRESS is the address the app's
    connection came from, stronger evidence than any model; it wins."""
    every = [e for e in ev.server.access_log if e.direction == "inbound"]
    # only lines for this destination port speak for it: another port may be declared
    # differently (127.0.0.1 vs 127.0.0.6 before 1.10) or be excluded from capture
    inbound = for_port(every, port)
    others = sorted({p for p in (log_port(e) for e in every if e not in inbound) if p})
    z_in = [e for e in ev.server.ztunnel_log if e.direction == "inbound"]
    if others:
        v.confirmation = (f"access log lines for other ports ({', '.join(map(str, others))}) "
                          f"are not evidence for port {port}; ")
    if not inbound and mode == "ambient" and z_in:
        z = z_in[0]
        v.confirmation = (f"ztunnel log line {z.line}: inbound src.addr {z.src} -> dst.addr "
                          f"{z.dst} (ztunnel does not log the address it dials the app from)")
    elif not inbound and mode == "ambient":
        # no sidecar: ztunnel logs each connection (src.addr, dst.addr) on the server's node
        v.confirmation = "no ztunnel access log given"
        v.missing.append(Missing("the server node's ztunnel log for a connection",
                                 "kubectl logs -n istio-system -l app=ztunnel --tail 50  (the "
                                 "ztunnel on the server pod's node: kubectl get pods -n "
                                 "istio-system -l app=ztunnel -o wide)"))
    elif not inbound and ev.server.access_log_off and not every:
        v.confirmation += (f"the server's istio-proxy log ({ev.server.access_log_off}) has no "
                           "access-log line: access logging is off (Istio's default profile)")
        v.missing.append(Missing(
            "the server sidecar's access log: turn access logging on, send a request, then "
            "kubectl logs " + ev.server.pod_ref() + " -c istio-proxy --tail 20",
            "istioctl install --set meshConfig.accessLogFile=/dev/stdout  (mesh-wide), or "
            "(Istio 1.12+) a Telemetry resource: kubectl apply -f - <<< "
            "'{\"apiVersion\":\"telemetry.istio.io/"
            "v1alpha1\",\"kind\":\"Telemetry\",\"metadata\":{\"name\":\"mesh-default\","
            "\"namespace\":\"istio-system\"},\"spec\":{\"accessLogging\":[{\"providers\":"
            "[{\"name\":\"envoy\"}]}]}}'"))
    elif not inbound:
        v.confirmation += ("no server access log line for this port" if every
                           else "no server access log given")
        v.missing.append(Missing("the server sidecar's access log for a request",
                                 f"kubectl logs {ev.server.pod_ref()} -c istio-proxy --tail 20"))
    else:
        seen = [(e, split_hostport(e.upstream_local_address or "")[0]) for e in inbound]
        logged = [(e, ip) for e, ip in seen if is_ip(ip)]
        agree = [(e, ip) for e, ip in logged if ip == v.app_sees]

        def kind_of(e: AccessLogEntry, ip: str) -> str:
            # under TPROXY each line shows its own client: "the client" is one answer
            return "client" if ip == split_hostport(e.downstream_remote_address or "")[0] else ip

        first_kind = kind_of(*agree[0]) if agree else ""
        differ = [(e, ip) for e, ip in logged if agree and kind_of(e, ip) != first_kind]
        if agree and differ:
            # lines of one port that disagree: another moment (a restart into another
            # mode or version) or another pod behind the port; the log does not decide
            v.confirmed = None
            lines = "; ".join(f"line {e.line}: UPSTREAM_LOCAL_ADDRESS {e.upstream_local_address}"
                              for e, _ in [agree[0], *differ[:3]])
            v.confirmation += (f"the access log disagrees with itself for port {port} "
                               f"({lines}): other moments or pods")
            v.kind = "undecided"
            v.app_sees = None
            v.basis = ("the server access log's lines for this port show different source "
                       f"addresses ({lines}); take the lines of one pod after its last restart")
            v.missing.append(Missing("the server sidecar's access log since its last restart",
                                     f"kubectl logs {ev.server.pod_ref()} -c istio-proxy "
                                     "--tail 20"))
        elif agree:
            e = agree[0][0]
            v.confirmed = True
            v.confirmation += (f"access log line {e.line}{_http2(e)}: UPSTREAM_LOCAL_ADDRESS "
                              f"{e.upstream_local_address} (UPSTREAM_CLUSTER "
                              f"{e.upstream_cluster}, DOWNSTREAM_REMOTE_ADDRESS "
                              f"{e.downstream_remote_address})")
            v.kind, v.inferred = "established", False
            v.basis = "the server access log: " + v.confirmation
        elif logged:
            e, ip = logged[0]
            if v.app_sees is not None:
                v.confirmed = False
                v.model_note = _model_wrong(v.app_sees, v.app_sees_why, ip, v.client_ip)
            v.confirmation += (f"access log line {e.line}{_http2(e)}: UPSTREAM_LOCAL_ADDRESS "
                               f"{e.upstream_local_address} (UPSTREAM_CLUSTER "
                               f"{e.upstream_cluster})")
            v.app_sees, v.kind, v.inferred = ip, "established", False
            v.app_sees_why = f"from the access log (line {e.line})"
            v.basis = "the server access log: " + v.confirmation
        else:
            e = inbound[0]
            v.confirmation += (f"access log line {e.line} does not log UPSTREAM_LOCAL_ADDRESS "
                              f"(UPSTREAM_HOST {e.upstream_host})")
    for line in ev.server.app_log:
        peer = app_peer(line)
        if peer:
            agree_app = split_hostport(peer[1])[0] == v.app_sees
            v.confirmation += (f"; the app's own log prints {peer[0]}"
                               + ("" if agree_app else " (differs!)"))
            break


def _http2(e: AccessLogEntry) -> str:
    """" (HTTP/2)" for a line whose %PROTOCOL% says so: the request crossed the sidecar as
    HTTP/2 (a gRPC or h2c port), which the verdict names; HTTP/1.1 stays unsaid."""
    return " (HTTP/2)" if (e.protocol or "").startswith("HTTP/2") else ""


def _xff(ev: Evidence, steps: list[Step], v: Verdict, port: int = 0) -> None:
    entries = for_port([e for e in ev.server.access_log
                        if e.direction == "inbound" and e.protocol], port)
    s4 = steps[3].sidecar
    appends = s4 is not None and s4.use_remote_address is True
    if entries:
        xff = entries[0].x_forwarded_for
        v.xff_carries_client = bool(xff and v.client_ip in xff)
        v.xff = (f"X-Forwarded-For is {'empty' if not xff else repr(xff)} in the access log "
                 f"(line {entries[0].line})")
    elif s4 is not None and s4.network_filter == "envoy.filters.network.tcp_proxy":
        v.xff = "plain TCP (tcp_proxy): there are no headers"
        v.xff_carries_client = False
        return
    if appends:
        v.xff_carries_client = True
        v.xff += ("; the inbound http_connection_manager has use_remote_address: true, so "
                  f"Envoy appends the downstream address {v.client_ip}")
    elif s4 is not None and s4.use_remote_address is False:
        v.xff += ("; sidecars keep use_remote_address: false, so no sidecar appends the client "
                  "to X-Forwarded-For: it carries only what the client app itself sent")
        if v.xff_carries_client is None:
            v.xff_carries_client = False
    v.xff = v.xff.lstrip("; ") or "unknown (no HTTP access log, no inbound HTTP config)"


def _explain_127(step4: Step, ev: Evidence, bound: str = "127.0.0.6") -> list[str]:
    """Why 127.0.0.6 (or IPv6's ::6, in the same two sentences), quoting the rules of the
    evidence where it has them, and saying so when a rule is quoted from Istio's defaults
    (istio-iptables) instead."""
    follow = step4.follow_up
    v6 = bound == "::6"
    loop = LOOP_RULE6 if v6 else LOOP_RULE
    if follow and follow.packet.uid != 1337 and follow.packet.gid == 1337:
        # a sidecar running as uid 0 / gid 1337 is caught by the --gid-owner twin
        loop = LOOP_RULE.replace("--uid-owner", "--gid-owner")
    loop_from = " (Istio's default rule, not in the evidence)"
    canonical_bind = BIND_RULE6 if v6 else BIND_RULE
    bind, bind_from = canonical_bind, " (Istio's default rule, not in the evidence)"
    rs = ev.server.iptables
    nat = rs.tables.get("nat") if rs else None
    out_chain = nat.chains.get("ISTIO_OUTPUT") if nat else None

    def cite(r: Rule, canonical: str, counters: str | None = None) -> tuple[str, str]:
        # Istio's form of the rule, then the pod's own line when it is written otherwise
        # (a -L listing, or iptables-save's `-s 127.0.0.6/32 -o lo` order)
        text = r.text()
        extra = f", {counters}" if counters else ""
        if text == canonical:
            return text, f" (in this pod: nat/ISTIO_OUTPUT #{r.index}{extra})"
        return canonical, f" (in this pod: nat/ISTIO_OUTPUT #{r.index} `{text}`{extra})"

    for r in (out_chain.rules if out_chain else []):
        text = r.text()
        if r.target.name == "ISTIO_IN_REDIRECT" and "lo" in text and (
                ("gid" in text.lower()) == ("gid" in loop)):
            # a listing line is quoted alone: Istio's form of this rule changed across
            # versions (`-p tcp ! --dport 15008` from 1.9), the pod's own line is the truth
            loop, loop_from = text, f" (in this pod: nat/ISTIO_OUTPUT #{r.index})"
            break
    decided = follow.capture.decided_by if follow else None
    for r in (out_chain.rules if out_chain else []):
        if r.target.name == "RETURN" and _binds(r, bound) and (
                decided is None or decided.index == r.index):
            bind, bind_from = cite(r, canonical_bind, decided.counters if decided else None)
            break
    return [
        "The server sidecar dials the app at the pod IP over lo as the proxy user, and "
        f"`{loop}`{loop_from} would send that connection straight back into the sidecar's "
        "port 15006, a loop.",
        f"So Istio binds its inbound connections to {bound} (upstream_bind_config"
        + ("'s extra_source_addresses for IPv6, 127.0.0.6's twin" if v6 else "")
        + f"; the 6 as in 15006) and lets exactly them through with `{bind}`{bind_from}: "
        "that source is what the app sees.",
    ]


def _binds(r: Rule, bound: str) -> bool:
    """The rule lets the bind address out: ``-s 127.0.0.6/32`` (``-s ::6/128``), or a
    listing's ``127.0.0.6`` / ``::6`` source column."""
    return any(getattr(m, "which", None) == "src" and getattr(m, "net", None) is not None
               and ipaddress.ip_address(bound) in m.net  # type: ignore[attr-defined]
               and m.net.prefixlen == m.net.max_prefixlen  # type: ignore[attr-defined]
               for m in r.matches)


def explain_127_0_0_1(ver: VersionInfo) -> list[str]:
    """Why 127.0.0.1 (Istio before 1.10)."""
    return [
        f"Istio {ver.label()} ({ver.why}) forwarded inbound connections to localhost: the "
        "inbound cluster's endpoint is 127.0.0.1:PORT, and the kernel gives a connection to a "
        "loopback address the source 127.0.0.1.",
        "From 1.10 the sidecar forwards to the pod IP from 127.0.0.6 instead (Istio 1.10 "
        "upgrade notes, \"Inbound Forwarding Configuration\"); in both, only TPROXY "
        "interception with original_src (Istio 1.7 and later) keeps the client's address.",
    ]
