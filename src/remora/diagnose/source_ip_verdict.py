"""Step 5 of `explain source-ip`: the address the app sees, its confirmation, and the fix.

The fixes are Istio's documented ones (istio-internals.md section 7): interception mode
TPROXY (``sidecar.istio.io/interceptionMode``; the inbound listener then gets
``original_src``), or for HTTP a header the app reads (X-Forwarded-For appended by an HCM
with ``use_remote_address: true``; X-Envoy-External-Address at a gateway, trusted per
``gatewayTopology.numTrustedProxies``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from remora.diagnose.evidence import Evidence, PodEvidence
from remora.diagnose.facts import Missing, is_ip, split_hostport

if TYPE_CHECKING:
    from remora.diagnose.source_ip import Step
    from remora.diagnose.source_ip_facts import Fact

TPROXY_PATCH = {"spec": {"template": {"metadata": {"annotations": {
    "sidecar.istio.io/interceptionMode": "TPROXY"}}}}}
BIND_RULE = "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"
LOOP_RULE = ("-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 "
             "-m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT")


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


def decide(ev: Evidence, steps: list[Step], facts: dict[str, Fact], mode: str) -> Verdict:
    v = Verdict(client_ip=facts["client_ip"].value)
    failed = _first_failure(steps)
    if failed is not None:
        v.failure = f"step {failed.number} ({failed.title}) failed: {failed.summary}"
        return v
    step3, step4 = steps[2], steps[3]
    incoming = step3.walk.packet.src if step3.walk else None
    if step3.status == "not captured" and step3.walk is not None:
        v.app_sees = str(incoming)
        v.app_sees_why = ("inbound is not captured (" + step3.walk.capture.reason +
                          "): the connection reaches the app unchanged")
    elif step4.sidecar is not None and step4.sidecar.upstream_source:
        v.app_sees = step4.sidecar.upstream_source
        v.app_sees_why = step4.sidecar.upstream_source_why
    elif mode in ("REDIRECT", "TPROXY"):
        v.inferred = True
        if mode == "REDIRECT":
            v.app_sees = "127.0.0.6"
            v.app_sees_why = ("inferred: in REDIRECT mode Istio's inbound clusters bind "
                              "upstream connections to 127.0.0.6 (upstream_bind_config)")
        else:
            v.app_sees = v.client_ip
            v.app_sees_why = ("inferred: in TPROXY mode Istio adds original_src to the inbound "
                              "listener, which binds the client's address")
    _confirm(ev, v)
    if v.app_sees is not None:
        v.sees_client = v.app_sees == v.client_ip
    _xff(ev, steps, v)
    if v.app_sees == "127.0.0.6":
        v.explanation_127 = _explain_127(step4)
    if v.sees_client is False:
        v.fixes.append(tproxy_fix(ev.server))
        http = step4.sidecar is None or step4.sidecar.network_filter != (
            "envoy.filters.network.tcp_proxy") or any(e.protocol for e in ev.server.access_log)
        if http:
            v.fixes.append(header_fix(v.client_ip))
    return v


def _confirm(ev: Evidence, v: Verdict) -> None:
    inbound = [e for e in ev.server.access_log if e.direction == "inbound"]
    if not inbound:
        v.confirmation = "no server access log given"
        v.missing.append(Missing("the server sidecar's access log for a request",
                                 f"kubectl logs {ev.server.pod_ref()} -c istio-proxy --tail 20"))
    else:
        seen = [(e, split_hostport(e.upstream_local_address or "")[0]) for e in inbound]
        if v.app_sees is None:
            e, ip = seen[0]
            if is_ip(ip):
                v.app_sees = ip
                v.app_sees_why = f"from the access log (line {e.line})"
        agree = [(e, ip) for e, ip in seen if ip == v.app_sees]
        if agree:
            e = agree[0][0]
            v.confirmed = True
            v.confirmation = (f"access log line {e.line}: UPSTREAM_LOCAL_ADDRESS "
                              f"{e.upstream_local_address} (UPSTREAM_CLUSTER "
                              f"{e.upstream_cluster}, DOWNSTREAM_REMOTE_ADDRESS "
                              f"{e.downstream_remote_address})")
        else:
            e, ip = seen[0]
            v.confirmed = False
            v.confirmation = (f"access log line {e.line} says UPSTREAM_LOCAL_ADDRESS "
                              f"{e.upstream_local_address}, not {v.app_sees}: the log and the "
                              "rules/config are probably from different moments or pods")
    for line in ev.server.app_log:
        m = re.search(r"RemoteAddr=(\S+)", line)
        if m:
            ip = split_hostport(m.group(1).rstrip(","))[0]
            agree_app = ip == v.app_sees
            v.confirmation += (f"; the app's own log prints RemoteAddr={m.group(1)}"
                               + ("" if agree_app else " (differs!)"))
            break


def _xff(ev: Evidence, steps: list[Step], v: Verdict) -> None:
    entries = [e for e in ev.server.access_log if e.direction == "inbound" and e.protocol]
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


def _explain_127(step4: Step) -> list[str]:
    evidence = ""
    follow = step4.follow_up
    if follow and follow.capture.decided_by is not None:
        d = follow.capture.decided_by
        evidence = f" (in this pod: {d.ref()}{', ' + d.counters if d.counters else ''})"
    loop = LOOP_RULE
    if follow and follow.packet.uid != 1337 and follow.packet.gid == 1337:
        # a sidecar running as uid 0 / gid 1337 is caught by the --gid-owner twin
        loop = LOOP_RULE.replace("--uid-owner", "--gid-owner")
    return [
        "The server sidecar dials the app at the pod IP over lo as the proxy user, and "
        f"`{loop}` would send that connection straight back into the sidecar's port "
        "15006, a loop.",
        "So Istio binds its inbound connections to 127.0.0.6 (upstream_bind_config; the 6 as "
        f"in 15006) and lets exactly them through with `{BIND_RULE}`{evidence}: that source "
        "is what the app sees.",
    ]
