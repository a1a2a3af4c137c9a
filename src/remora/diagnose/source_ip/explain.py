"""`remora explain source-ip`: which address the server's app sees, step by step.

A pure function from evidence (rules, Envoy config, access log of the client and server
pods) to a ``Report``: the five steps of the seed's investigation, each decided by the
rule or config that decides it in the real data path, then the verdict.
1. client pod: nat OUTPUT (REDIRECT to 15001, or why not captured)
2. client sidecar: listener, filter chain, route, cluster, endpoint, TLS
3. server pod: PREROUTING (nat REDIRECT to 15006 or mangle TPROXY with mark, or why not)
4. server sidecar: listener, chain, cluster, and the source address it dials the app from
5. verdict: the address the app sees, confirmed by the access log's UPSTREAM_LOCAL_ADDRESS
Unknown facts are listed with the command that would collect them; assumptions are said.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from remora.diagnose.envoy.sim import Downstream, SidecarTrace, TlsHello, simulate
from remora.diagnose.envoy.trace import sock
from remora.diagnose.facts import Missing, hostport, is_ip, split_hostport
from remora.diagnose.iptables.model import Packet, Ruleset
from remora.diagnose.iptables.policy_routing import check_tproxy
from remora.diagnose.iptables.walk import WalkResult, walk
from remora.diagnose.source_ip.evidence import Evidence, PodEvidence
from remora.diagnose.source_ip.facts import Fact, family_of, ip_of, resolve_facts
from remora.diagnose.source_ip.verdict import Verdict, decide
from remora.errors import RemoraError

_BLIND = ("the listing has no in/out columns (`iptables -L` without -v): Istio's `-o lo` "
          "conditions on OUTPUT cannot be seen")
APP_UID = 0  # the seed's apps run as root; anything but 1337 walks the same rules
PROXY_ID = 1337
EPHEMERAL = 40000
ISTIO_ALPN = {"HTTP/1.0": ("istio-http/1.0", "istio", "http/1.0"),
              "HTTP/1.1": ("istio-http/1.1", "istio", "http/1.1"),
              "HTTP/2": ("istio-h2", "istio", "h2")}


@dataclass
class Step:
    number: int
    title: str
    status: str  # "ok", "failed", "unknown", "not captured"
    summary: str
    walk: WalkResult | None = None
    sidecar: SidecarTrace | None = None
    follow_up: WalkResult | None = None  # the sidecar's own upstream packet through the rules
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    steps: list[Step]
    verdict: Verdict
    facts: dict[str, Fact]
    missing: list[Missing]
    assumptions: list[str]
    mode: str  # server interception mode: REDIRECT, TPROXY, none, unknown
    sources: dict[str, list[str]] = field(default_factory=dict)  # what was read, per side

def is_ambient(rules: Ruleset | None) -> bool:
    """Istio ambient's capture: istio-cni's in-pod ISTIO_PRERT chain (cni/pkg/iptables,
    TPROXY or REDIRECT to ztunnel's 15006/15008 with marks 0x111/0x539 in 0xfff) or the
    early node-level ztunnel-* chains (1.16-1.20). Not a sidecar's rules."""
    if rules is None:
        return False
    return any(name == "ISTIO_PRERT" or name.startswith("ztunnel-")
               for t in rules.tables.values() for name in t.chains)


def _mode_of(rules: Ruleset | None) -> str:
    if rules is None:
        return "unknown"
    if is_ambient(rules):
        return "ambient"
    mangle = rules.tables.get("mangle")
    if mangle and any(r.target.name == "TPROXY" for c in mangle.chains.values() for r in c.rules):
        return "TPROXY"
    return "REDIRECT"


def _proxy_ids(pod: PodEvidence, mode: str, assumptions: list[str]) -> tuple[int, int]:
    """The uid/gid the sidecar's own sockets carry, for the owner matches of OUTPUT.

    From the evidence when known (the live lab reads the sidecar process's
    /proc/PID/status; offline --sidecar-uid/--sidecar-gid). Otherwise Istio's defaults,
    said under "assumed": istio-proxy runs as uid 1337 / gid 1337, and as uid 0 / gid 1337
    in TPROXY mode (injection-template.yaml), where only the --gid-owner rules recognise it.
    """
    default = (0, PROXY_ID) if mode == "TPROXY" else (PROXY_ID, PROXY_ID)
    uid = default[0] if pod.proxy_uid is None else pod.proxy_uid
    gid = default[1] if pod.proxy_gid is None else pod.proxy_gid
    if pod.proxy_uid is None or pod.proxy_gid is None:
        guessed = " and ".join(f"{k} {v}" for k, v, known in (
            ("uid", uid, pod.proxy_uid is not None), ("gid", gid, pod.proxy_gid is not None))
            if not known)
        note = (f"the {pod.role} sidecar runs as {guessed} (Istio's default in "
                f"{mode if mode == 'TPROXY' else 'REDIRECT'} mode; not in the evidence: "
                f"--sidecar-uid/--sidecar-gid {pod.role}=N)")
        if note not in assumptions:
            assumptions.append(note)
    return uid, gid


def _iptables_cmd(pod: PodEvidence) -> str:
    save = "ip6tables-save" if pod.walk_family == 6 else "iptables-save"
    return (f"kubectl exec {pod.pod_ref()} -c istio-proxy -- {save}  (or on its node: "
            f"nsenter --target <container pid> --net {save})")


def for_family(ev: Evidence, family: int) -> Evidence:
    """EV with the rules of FAMILY in ``iptables``: an IPv6 connection goes through the
    ip6tables rules (Istio repeats its capture there with ::1 and ::6), never IPv4's."""
    if family == 4:
        return ev
    return replace(ev, client=replace(ev.client, iptables=ev.client.iptables6, walk_family=6),
                   server=replace(ev.server, iptables=ev.server.iptables6, walk_family=6))


def _config_cmd(pod: PodEvidence) -> str:
    return f"istioctl proxy-config all {pod.pod_ref()} -o json"


def explain_source_ip(ev: Evidence) -> Report:
    """Pure: evidence in, report out."""
    if ev.client.empty and ev.server.empty:
        raise RemoraError("no evidence given", "pass --istio-dump DIR, or --config-dump / "
                          "--iptables / --access-log files for the client and/or server pod")
    server_cfg = ev.server.config
    if server_cfg is not None and server_cfg.node_type() == "router":
        # A gateway (node type router) is no server sidecar: no inbound capture, no
        # virtualInbound on 15006; its IP and listeners must not stand for the server's.
        ev.server.config = None
        ev.server.sources.append(
            f"set aside: the config dump ({server_cfg.node_id}) is an Istio gateway's (node "
            "type router), not the server sidecar's; a gateway has no inbound capture and "
            "dials pods from its own pod IP: give it as the client (--config-dump client=...)")
    facts = resolve_facts(ev)
    ev = for_family(ev, family_of(ev, facts))
    gateway = ev.client.config is not None and ev.client.config.node_type() == "router"
    missing: list[Missing] = []
    assumptions: list[str] = [f"{name} = {f.value} ({f.source})" for name, f in facts.items()
                              if not f.known]
    assumptions.append(f"the apps run as uid {APP_UID}, not the proxy's {PROXY_ID}")
    client_ip, server_ip = facts["client_ip"].value, facts["server_ip"].value
    port = int(facts["port"].value)
    vip = facts["service_ip"].value
    authority = facts["authority"].value if "authority" in facts else None
    s_in = [e for e in ev.server.access_log if e.direction == "inbound"]
    http = ev.target.http
    if http is None:
        http = not s_in or any(e.protocol for e in s_in)
    steps: list[Step] = []

    # 1. client pod capture
    c_mode = _mode_of(ev.client.iptables)
    step1 = Step(1, "client pod: nat OUTPUT", "unknown", "")
    capture_kind = "unknown"
    if gateway and ev.client.iptables is None:
        # Istio's gateways run Envoy as the pod's main process, with no istio-init and no
        # capture rules (manifests/charts/gateway): the connection leaves the gateway as is
        capture_kind = "gateway"
        step1.status = "skipped"
        node = ev.client.config.node_id if ev.client.config else ""
        step1.summary = (f"the client is an Istio gateway ({node}): no capture rules, its "
                         "Envoy connects to the server pod itself, from its pod IP "
                         f"{client_ip}")
    elif ev.client.iptables is None:
        step1.summary = "client pod rules not given"
        missing.append(Missing("client pod capture rules", _iptables_cmd(ev.client)))
    else:
        pkt = Packet(ipaddress.ip_address(client_ip), ipaddress.ip_address(vip), port,
                     sport=EPHEMERAL, out_iface="eth0", uid=APP_UID, gid=APP_UID)
        w = walk(ev.client.iptables, pkt, "local")
        step1.walk = w
        capture_kind = w.capture.kind
        if not ev.client.iptables.interfaces_known and capture_kind in ("none", "DROP"):
            # Istio's OUTPUT rules hinge on `-o lo`, which `iptables -L` without -v hides
            capture_kind = "unknown"
            step1.notes.append(_BLIND)
            missing.append(Missing("client pod rules with interfaces (`iptables -L` without -v "
                                   "hides `-o lo`)", _iptables_cmd(ev.client)))
        step1.summary = f"{client_ip} -> {hostport(vip, port)}: {w.capture.summary()}"
        step1.status = "ok" if capture_kind == "REDIRECT" else (
            "unknown" if capture_kind == "unknown" else
            "failed" if capture_kind == "DROP" else "not captured")
        if w.missing_tables:
            step1.notes.append("tables not in the evidence: " + ", ".join(w.missing_tables))
    steps.append(step1)

    # 2. client sidecar
    step2 = Step(2, "client sidecar", "unknown", "")
    tls: TlsHello | None = None
    upstream_src = client_ip
    if capture_kind == "gateway":
        listeners = sorted({str(lst.get("address", {}).get("socket_address", {})
                                .get("port_value", "?"))
                            for lst in (ev.client.config.listeners if ev.client.config else [])})
        step2.status = "skipped"
        step2.summary = (f"gateway: its listeners (ports {', '.join(listeners) or 'none'}) "
                         "route by Gateway and VirtualService and are not simulated; it "
                         f"dials the server pod from {client_ip}, over Istio mTLS, and the "
                         "server sidecar sees that address as the downstream")
    elif capture_kind in ("none", "DROP"):
        step2.status, step2.summary = "skipped", "not captured: the app connects directly"
    elif ev.client.config is None:
        step2.summary = "client sidecar config not given"
        missing.append(Missing("client sidecar config", _config_cmd(ev.client)))
    else:
        arrived = step1.walk.capture.port if step1.walk and step1.walk.capture.port else 15001
        ds = Downstream(client_ip, EPHEMERAL, vip, port, "REDIRECT", arrived, None, http,
                        authority, ev.target.path)
        t = simulate(ev.client.config, ds, "client", client_ip, server_ip,
                     pod=ev.client.pod_ref())
        step2.sidecar = t
        missing.extend(t.missing)
        if t.failure:
            step2.status, step2.summary = "failed", f"{t.failure}: {t.failure_detail}"
        elif t.endpoint:
            step2.status = "ok"
            step2.summary = f"{t.listener} / {t.chain} -> {t.cluster} -> {t.endpoint}"
            if t.upstream_tls and t.upstream_tls.mode == "TLS":
                tls = TlsHello(t.upstream_tls.sni, t.upstream_tls.alpn)
                step2.summary += f" over TLS (SNI {t.upstream_tls.sni or '-'})"
            else:
                step2.summary += " in plain text"
            ep_ip = ip_of(t.endpoint)
            if ep_ip and ep_ip != server_ip and facts["server_ip"].known:
                step2.notes.append(f"the chosen endpoint {t.endpoint} is not the server pod "
                                   f"{server_ip}")
            if t.upstream_source and is_ip(t.upstream_source):
                upstream_src = t.upstream_source
            if ev.client.iptables is not None and ep_ip:
                uid, gid = _proxy_ids(ev.client, c_mode, assumptions)
                follow = walk(ev.client.iptables, Packet(
                    ipaddress.ip_address(upstream_src), ipaddress.ip_address(ep_ip),
                    int(t.endpoint.rsplit(":", 1)[1]), sport=EPHEMERAL + 1, out_iface="eth0",
                    uid=uid, gid=gid), "local")
                step2.follow_up = follow
                if follow.capture.kind == "REDIRECT" and not ev.client.iptables.interfaces_known:
                    step2.notes.append(_BLIND + "; the loop check is skipped")
                elif follow.capture.kind == "REDIRECT":
                    step2.status = "failed"
                    step2.summary = ("loop: the sidecar's own connection to "
                                     f"{t.endpoint} is redirected back to port "
                                     f"{follow.capture.port}")
        else:
            step2.summary = "stopped: " + "; ".join(m.what + " not given" for m in t.missing)
    if tls is None and s_in and s_in[0].requested_server_name and step2.sidecar is None:
        # An Istio client sidecar offers ALPN by protocol (istio.alpn filter for HTTP,
        # istio-peer-exchange for TCP); the log's PROTOCOL says which.
        alpn = ISTIO_ALPN.get(s_in[0].protocol or "", ("istio-peer-exchange", "istio"))
        tls = TlsHello(s_in[0].requested_server_name, alpn)
        step2.notes.append(f"TLS with SNI {tls.sni} (from the server access log, line "
                           f"{s_in[0].line}); ALPN {','.join(alpn)} assumed from its protocol")
    steps.append(step2)

    # 3. server pod capture
    mode = _mode_of(ev.server.iptables)
    if mode == "unknown" and any(e.direction == "inbound" for e in ev.server.ztunnel_log):
        mode = "ambient"  # ztunnel took the connection inbound: the pod is in ambient mode
    step3 = Step(3, "server pod: PREROUTING", "unknown", "")
    s_capture = "unknown"
    s_port = 15006
    if mode == "ambient":
        step3.status = "ok"
        step3.summary = ("ambient: Istio's in-pod capture for ztunnel (ISTIO_PRERT / ztunnel-* "
                         "chains), not a sidecar's")
        s_capture = "ambient"
    elif ev.server.iptables is None:
        missing.append(Missing("server pod capture rules", _iptables_cmd(ev.server)))
        osrc = _server_has_original_src(ev.server)
        declared = (ev.server.config.node_metadata.get("INTERCEPTION_MODE")
                    if ev.server.config else None) or ev.server.declared.get(
                        "INBOUND_INTERCEPTION_MODE")
        mode = "TPROXY" if osrc or declared == "TPROXY" else "REDIRECT"
        how = ("original_src on the inbound listener" if osrc else
               f"the sidecar's INTERCEPTION_MODE {declared}" if declared else "Istio default")
        step3.summary = f"server pod rules not given; assumed {mode} ({how})"
        assumptions.append(f"server interception mode {mode} (rules not given)")
        s_capture = mode
        s_port = _inbound_capture_port(ev.server)
        if s_port != 15006:
            assumptions.append(f"inbound is captured to port {s_port}: the config has the "
                               "15001 `virtual` listener (use_original_dst) and no 15006 "
                               "virtualInbound (Istio 1.2 and before)")
    else:
        pkt = Packet(ipaddress.ip_address(upstream_src), ipaddress.ip_address(server_ip), port,
                     sport=EPHEMERAL + 1, in_iface="eth0")
        w = walk(ev.server.iptables, pkt, "arriving")
        step3.walk = w
        s_capture = w.capture.kind
        s_port = w.capture.port or s_port
        step3.summary = f"{upstream_src} -> {hostport(server_ip, port)}: {w.capture.summary()}"
        step3.status = "ok" if s_capture in ("REDIRECT", "TPROXY") else (
            "failed" if s_capture == "DROP" else "not captured")
        if s_capture == "TPROXY":
            _policy_routing(ev.server, step3, w.capture.mark, missing)
        if w.missing_tables:
            step3.notes.append("tables not in the evidence: " + ", ".join(w.missing_tables))
            if "nat" in w.missing_tables or "mangle" in w.missing_tables:
                missing.append(Missing("server pod " + " and ".join(w.missing_tables) +
                                       " table (a TPROXY or REDIRECT rule there could "
                                       "decide first)",
                                       _iptables_cmd(ev.server)))
    steps.append(step3)

    # 4. server sidecar
    step4 = Step(4, "server sidecar", "unknown", "")
    if s_capture == "ambient":
        step4.status = "skipped"
        step4.summary = ("ambient: no sidecar; ztunnel (inbound port 15006/15008) connects to "
                         "the app")
    elif s_capture in ("none", "DROP"):
        step4.status, step4.summary = "skipped", "not captured: the connection goes to the app"
    elif ev.server.config is None:
        step4.summary = "server sidecar config not given"
        missing.append(Missing("server sidecar config", _config_cmd(ev.server)))
    else:
        ds = Downstream(upstream_src, EPHEMERAL + 1, server_ip, port,
                        "TPROXY" if s_capture == "TPROXY" else "REDIRECT", s_port, tls, http,
                        authority, ev.target.path)
        t = simulate(ev.server.config, ds, "server", server_ip, server_ip,
                     pod=ev.server.pod_ref())
        step4.sidecar = t
        missing.extend(t.missing)
        if t.failure:
            step4.status, step4.summary = "failed", f"{t.failure}: {t.failure_detail}"
        elif t.upstream_source:
            step4.status = "ok"
            step4.summary = (f"{t.listener} / {t.chain} -> {t.cluster} -> {t.endpoint}, "
                             f"dialled from {t.upstream_source}")
            _follow_to_app(ev, step4, t, mode, server_ip, assumptions)
        else:
            step4.summary = "stopped: " + "; ".join(m.what + " not given" for m in t.missing)
    steps.append(step4)

    verdict = decide(ev, steps, facts, mode)
    missing.extend(verdict.missing)
    return Report(steps, verdict, facts, list(dict.fromkeys(missing)), assumptions, mode,
                  {"client": list(ev.client.sources), "server": list(ev.server.sources)})


def _policy_routing(pod: PodEvidence, step: Step, mark: int | None,
                    missing: list[Missing]) -> None:
    """TPROXY needs `ip rule fwmark 1337 lookup 133` + `local default dev lo table 133`."""
    if pod.policy_routing is None:
        missing.append(Missing("TPROXY policy routing (fwmark 1337 -> table 133, local "
                               "default route on lo) in the server pod",
                               f"kubectl exec {pod.pod_ref()} -c istio-proxy -- sh -c "
                               "'ip rule show; ip route show table 133'  (then --ip-rules "
                               "server=FILE)"))
        return
    check = check_tproxy(pod.policy_routing, PROXY_ID if mark is None else mark)
    step.notes.append(("policy routing: " if check.established else
                       "policy routing NOT in place: ") + check.summary)


def _inbound_capture_port(pod: PodEvidence) -> int:
    """Where REDIRECT delivers inbound when the rules are not given: 15006 (virtualInbound,
    Istio 1.3+) unless the config only has the old 15001 `virtual` listener, which took
    inbound too (use_original_dst hands it to the PODIP_PORT listener)."""
    cfg = pod.config
    if cfg is None:
        return 15006
    ports = {sock(x)[1] for x in cfg.listeners}
    if 15006 not in ports and any(sock(x)[1] == 15001 and x.get("use_original_dst")
                                  for x in cfg.listeners):
        return 15001
    return 15006


def _server_has_original_src(pod: PodEvidence) -> bool:
    cfg = pod.config
    if cfg is None:
        return False
    for lst in cfg.listeners:
        for f in lst.get("listener_filters", []) or []:
            if str(f.get("name", "")).endswith("original_src"):
                return True
    return False


def _follow_to_app(ev: Evidence, step: Step, t: SidecarTrace, mode: str, server_ip: str,
                   assumptions: list[str]) -> None:
    """The sidecar's connection to the app goes through OUTPUT again: it must not loop."""
    if ev.server.iptables is None or not t.endpoint or not t.upstream_source:
        return
    ep_ip, ep_port = split_hostport(t.endpoint)
    src = t.upstream_source if is_ip(t.upstream_source) else server_ip
    local = ep_ip == server_ip or ipaddress.ip_address(ep_ip).is_loopback
    uid, gid = _proxy_ids(ev.server, mode, assumptions)
    pkt = Packet(ipaddress.ip_address(src), ipaddress.ip_address(ep_ip), ep_port or 0,
                 sport=EPHEMERAL + 2, out_iface="lo" if local else "eth0", uid=uid, gid=gid,
                 mark=t.upstream_mark or 0)
    follow = walk(ev.server.iptables, pkt, "local")
    step.follow_up = follow
    if follow.capture.kind == "REDIRECT" and not ev.server.iptables.interfaces_known:
        step.notes.append(_BLIND + "; the loop check is skipped")
    elif follow.capture.kind == "REDIRECT":
        step.status = "failed"
        step.summary = (f"loop: the sidecar's connection from {src} to the app {t.endpoint} "
                        f"is redirected back to port {follow.capture.port}")
