"""`explain source-ip --kube`: the evidence from a cluster, through the Kubernetes API.

The same steps a user takes by hand (docs/explain.md, "Collecting the evidence"), with the
user's kubeconfig and the same code path for the lab (`remora kubeconfig`) and a real
cluster:
- the pods and services (`--from` pod, `--to` service or pod and its ready endpoints,
  remora.diagnose.evidence.target, which the lab's live form uses too);
- each sidecar's config dump, by pod exec in the istio-proxy container as istioctl did
  before it port-forwarded: `pilot-agent request GET config_dump?include_eds` (Istio's
  proxy image: pilot-agent talks to Envoy's admin on localhost:15000), else `curl` or
  `wget` of `http://localhost:15000/config_dump?include_eds` (images without
  pilot-agent, such as the lab's, where exec runs in the pod's network namespace);
- the capture rules: `iptables-save`, else `iptables -t nat|mangle -L -v`, in the
  istio-proxy container (Istio's proxy image ships iptables; it needs root or
  CAP_NET_ADMIN, which istio-proxy has only in TPROXY mode), and `ip6tables-save` for a
  pod with an IPv6 address;
- the recent access log (`kubectl logs -c istio-proxy --tail`), the server app's own
  recent `RemoteAddr=` lines;
- for the server, `ip rule show` and the tables its fwmark rules look up (TPROXY);
- each sidecar's uid/gid from the istio-proxy container's securityContext (what the
  kubelet runs it as; Istio's injector sets 1337/1337, or 0/1337 in TPROXY mode).
A step that cannot be collected (RBAC, a distroless image, no root) is recorded as a
`Gap` with the reason and the command to run instead; the diagnosis goes on with what
there is. There is no probe request: on a cluster the client's own traffic is the
evidence, its latest access-log lines the confirmation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from remora.diagnose.envoy.access_log import AccessLogEntry, parse_access_log
from remora.diagnose.envoy.config import EnvoyConfig, parse_config_text
from remora.diagnose.evidence.kube_client import ExecResult
from remora.diagnose.evidence.target import (
    Destination,
    LabPod,
    family_of_ip,
    find_pod,
    resolve_destination,
)
from remora.diagnose.facts import app_peer, hostport, split_hostport
from remora.diagnose.iptables.listing import parse_listing
from remora.diagnose.iptables.model import Ruleset
from remora.diagnose.iptables.nft import looks_like_nft, parse_nft
from remora.diagnose.iptables.policy_routing import marked_tables, parse_policy_text
from remora.diagnose.iptables.save import parse_iptables_save
from remora.diagnose.source_ip.evidence import Evidence, PodEvidence
from remora.errors import RemoraError

SIDECAR = "istio-proxy"
LOG_TAIL = 200
CONFIG_PATH = "config_dump?include_eds"
ADMIN = "http://localhost:15000/"  # Envoy's admin address in Istio's bootstrap


class Cluster(Protocol):
    """What the collection needs from a cluster (remora.diagnose.evidence.kube_client)."""

    def pods(self, namespaces: list[str] | None = None) -> list[dict[str, Any]]: ...
    def services(self, namespaces: list[str] | None = None) -> list[dict[str, Any]]: ...
    def logs(self, namespace: str, pod: str, container: str, tail: int) -> tuple[str, str]: ...
    def exec(self, namespace: str, pod: str, container: str, argv: list[str],
             timeout: float = 20.0) -> ExecResult: ...


@dataclass(frozen=True)
class Gap:
    """A step that could not be collected, why, and what to run instead."""

    step: str
    why: str
    instead: str

    def line(self) -> str:
        return f"{self.step}: {self.why}; instead: {self.instead}"


@dataclass
class KubeRun:
    evidence: Evidence
    client: LabPod
    server: LabPod
    dest: Destination
    server_url: str = ""
    context: str = ""
    collected: list[str] = field(default_factory=list)  # "client config dump: pilot-agent ..."
    gaps: list[Gap] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    app_line: str = ""


def as_candidate(pod: dict[str, Any]) -> dict[str, Any]:
    """A pod as the API serves it, with the ``status.ready`` the endpoint selection reads
    (remora.resources.selection): the Ready condition, as the endpoints controller
    reads it."""
    status = dict(pod.get("status") or {})
    status["ready"] = any(c.get("type") == "Ready" and c.get("status") == "True"
                          for c in status.get("conditions") or [])
    return {**pod, "status": status}


def _namespaces(namespace: str, to: str) -> list[str]:
    """The namespaces `--to` may be in: the client's and a ``NAME.NS`` one."""
    host = to.rsplit(":", 1)[0] if to.count(":") == 1 else to
    names = [namespace]
    parts = host.split(".")
    if len(parts) >= 2 and not host.replace(".", "").isdigit():
        names.append(parts[1])
    return list(dict.fromkeys(names))


def _objects(cluster: Cluster, namespace: str,
             to: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Pods and services in every namespace, or (when listing everything is forbidden)
    in the namespaces the names point at."""
    try:
        return cluster.pods(), cluster.services(), ""
    except RemoraError as exc:
        if "forbidden" not in str(exc):
            raise
        names = _namespaces(namespace, to)
        note = (f"listing pods and services in all namespaces is forbidden; read them in "
                f"{', '.join(names)} only")
        return cluster.pods(names), cluster.services(names), note


def _exec_first(cluster: Cluster, pod: LabPod, container: str,
                tries: list[list[str]]) -> tuple[ExecResult | None, list[ExecResult]]:
    """The first of TRIES that succeeds, and every failed one (for the gap's reason)."""
    failed: list[ExecResult] = []
    for argv in tries:
        result = cluster.exec(pod.namespace, pod.name, container, argv)
        if result.ok and result.stdout.strip():
            return result, failed
        failed.append(result)
        if result.refusal.startswith(("forbidden", "unauthorized", "exec refused")):
            break  # the exec itself is refused: another command will not fare better
    return None, failed


def _why(failed: list[ExecResult]) -> str:
    parts = [f"`{' '.join(r.argv[:3])}`: {r.refusal or f'exit {r.code}, no output'}"
             for r in failed]
    return "; ".join(parts) or "nothing to try"


def _kubectl(pod: LabPod, container: str, cmd: str) -> str:
    return f"kubectl exec {pod.name} -n {pod.namespace} -c {container} -- {cmd}"


def fetch_config_dump(cluster: Cluster, pod: LabPod) -> tuple[ExecResult | None,
                                                             list[ExecResult]]:
    """The sidecar's ``/config_dump?include_eds`` through pods/exec: pilot-agent (Istio's
    proxy image), else curl or wget of the admin port (images without pilot-agent)."""
    tries = [["pilot-agent", "request", "GET", CONFIG_PATH],
             ["curl", "-s", "--max-time", "10", ADMIN + CONFIG_PATH],
             ["wget", "-q", "-O", "-", ADMIN + CONFIG_PATH]]
    return _exec_first(cluster, pod, SIDECAR, tries)


def find_sidecar_pod(cluster: Cluster, name: str, namespace: str) -> LabPod:
    """POD in NAMESPACE, with an istio-proxy container (for proxy-config --kube)."""
    pods = [as_candidate(p) for p in cluster.pods([namespace])]
    pod = find_pod(pods, name, namespace, "the", netns=False)
    if not pod.has_sidecar:
        raise RemoraError(f"pod {pod.ref} has no sidecar (istio-proxy)",
                          "label its namespace istio-injection=enabled and re-create the pod")
    return pod


def config_dump_text(cluster: Cluster, pod: LabPod) -> str:
    """The config dump's text, or a RemoraError naming each try's failure."""
    ok, failed = fetch_config_dump(cluster, pod)
    if ok is None:
        raise RemoraError(f"cannot read the config dump of {pod.ref}: {_why(failed)}",
                          f"istioctl proxy-config all {pod.name} -n {pod.namespace} -o json "
                          "> dump.json, then --file dump.json")
    return ok.stdout


def _config(cluster: Cluster, pod: LabPod, run: KubeRun, role: str) -> EnvoyConfig | None:
    ok, failed = fetch_config_dump(cluster, pod)
    if ok is None:
        run.gaps.append(Gap(f"{role} sidecar config dump", _why(failed),
                            f"istioctl proxy-config all {pod.name} -n {pod.namespace} -o json "
                            "> config_dump.json (it port-forwards to the admin port), then "
                            "--config-dump"))
        return None
    cfg = EnvoyConfig()
    where = f"`{' '.join(ok.argv)}` in {pod.ref} -c {SIDECAR}"
    try:
        parse_config_text(cfg, ok.stdout, where)
    except RemoraError as exc:
        run.gaps.append(Gap(f"{role} sidecar config dump", f"{where} printed no config dump "
                            f"({exc.problem})", f"istioctl proxy-config all {pod.name} -n "
                            f"{pod.namespace} -o json"))
        return None
    tried = f" (tried first: {_why(failed)})" if failed else ""
    run.collected.append(f"{role} config dump: {where}{tried}")
    return cfg


def _rules(cluster: Cluster, pod: LabPod, container: str, run: KubeRun,
           role: str) -> Ruleset | None:
    ok, failed = _exec_first(cluster, pod, container, [["iptables-save"]])
    where = f"in {pod.ref} -c {container}"
    if ok is not None:
        families = parse_iptables_save(ok.stdout, origin=f"iptables-save {where}")
        if families:
            run.collected.append(f"{role} capture rules: iptables-save {where}")
            return families[0]
    listings: list[str] = []
    for table in ("nat", "mangle"):
        got, more = _exec_first(cluster, pod, container, [["iptables", "-t", table, "-L", "-v"]])
        failed += more
        if got is not None:
            listings.append(f"$ iptables -t {table} -L -v\n{got.stdout}")
    if listings:
        run.collected.append(f"{role} capture rules: iptables -t nat|mangle -L -v {where}")
        return parse_listing("\n".join(listings), origin=f"iptables -L -v {where}")
    run.gaps.append(Gap(f"{role} capture rules", _why(failed),
                        "on the pod's node: nsenter --target $(crictl inspect --output go-"
                        "template --template '{{.info.pid}}' CONTAINER) --net iptables-save, "
                        f"or `kubectl debug node/NODE` (for {pod.ref}); then --iptables"))
    return None


def _istio_chains(rs: Ruleset | None) -> bool:
    return rs is not None and any(name.startswith("ISTIO") for table in rs.tables.values()
                                  for name in table.chains)


def _nft(cluster: Cluster, pod: LabPod, container: str, run: KubeRun,
         role: str) -> list[Ruleset]:
    """Istio's native nftables mode (its inet ``istio-proxy-*`` tables): ``nft list
    ruleset``, both families, when the iptables rules hold no Istio chain."""
    got, _ = _exec_first(cluster, pod, container, [["nft", "list", "ruleset"]])
    if got is None or not looks_like_nft(got.stdout) or "istio-proxy-" not in got.stdout:
        return []
    where = f"in {pod.ref} -c {container}"
    found = parse_nft(got.stdout, origin=f"nft list ruleset {where}")
    run.collected.append(f"{role} capture rules: nft list ruleset {where} (Istio's native "
                         "nftables tables)")
    return found


def _rules6(cluster: Cluster, pod: LabPod, container: str, run: KubeRun,
            role: str) -> Ruleset | None:
    """A pod with an IPv6 address (status.podIPs): its ip6tables rules too, walked when
    the connection is IPv6 (Istio repeats its capture there with ::1 and ::6)."""
    ips = [str(a.get("ip", "")) for a in (pod.obj.get("status") or {}).get("podIPs") or []]
    if not any(":" in ip for ip in ips):
        return None
    ok, failed = _exec_first(cluster, pod, container, [["ip6tables-save"]])
    if ok is None:
        run.gaps.append(Gap(f"{role} IPv6 capture rules", _why(failed),
                            _kubectl(pod, container, "ip6tables-save") + " > ip6tables.txt, "
                            "then --iptables"))
        return None
    where = f"in {pod.ref} -c {container}"
    families = parse_iptables_save(ok.stdout, origin=f"ip6tables-save {where}")
    if not families:
        return None
    families[0].family = 6
    run.collected.append(f"{role} IPv6 capture rules: ip6tables-save {where}")
    return families[0]


def _policy_routing(cluster: Cluster, pod: LabPod, pe: PodEvidence, run: KubeRun,
                    family: int = 4) -> None:
    """`ip rule show` and its fwmark tables, of the connection's FAMILY (Istio adds the
    same rule and local route with `ip -6` for IPv6)."""
    v = f"-{family}"
    ok, failed = _exec_first(cluster, pod, SIDECAR, [["ip", v, "rule", "show"]])
    if ok is None:
        run.gaps.append(Gap("server policy routing (TPROXY)", _why(failed),
                            _kubectl(pod, SIDECAR, "sh -c 'ip rule show; ip route show table "
                                     "133'") + " > ip-rules.txt, then --ip-rules"))
        return
    pr = parse_policy_text(ok.stdout, f"ip {v} rule show in {pod.ref}")
    for table in marked_tables(pr):
        got = cluster.exec(pod.namespace, pod.name, SIDECAR,
                           ["ip", v, "route", "show", "table", table])
        pr.tables[table] = [line.strip() for line in got.stdout.splitlines() if line.strip()]
    pe.policy_routing = pr
    tables = "".join(f"; ip {v} route show table {t}" for t in pr.tables)
    run.collected.append(f"server policy routing: ip {v} rule show{tables} in {pod.ref}")
    pe.sources.append(f"policy routing: ip {v} rule show{tables} in pod {pod.ref} "
                      "(pods/exec)")


def _ids(pod: LabPod, pe: PodEvidence) -> None:
    for c in (pod.obj.get("spec") or {}).get("containers") or []:
        if c.get("name") != SIDECAR:
            continue
        sc = c.get("securityContext") or {}
        if isinstance(sc.get("runAsUser"), int) and isinstance(sc.get("runAsGroup"), int):
            pe.proxy_uid, pe.proxy_gid = sc["runAsUser"], sc["runAsGroup"]
            pe.proxy_ids_source = "the istio-proxy container's securityContext"
            pe.sources.append(f"sidecar: uid {pe.proxy_uid} / gid {pe.proxy_gid} (the "
                              f"istio-proxy container's securityContext in {pod.ref})")


def _access_log(cluster: Cluster, pod: LabPod, run: KubeRun,
                role: str) -> list[AccessLogEntry]:
    text, refusal = cluster.logs(pod.namespace, pod.name, SIDECAR, LOG_TAIL)
    if refusal:
        run.gaps.append(Gap(f"{role} access log", refusal,
                            f"kubectl logs {pod.name} -n {pod.namespace} -c {SIDECAR} "
                            f"--tail {LOG_TAIL} > access.log, then --access-log"))
        return []
    where = f"istio-proxy log of {pod.ref} (last {LOG_TAIL} lines)"
    entries = parse_access_log(text, where)
    run.collected.append(f"{role} access log: {where}, {len(entries)} entries")
    return entries


def _relevant(entries: list[AccessLogEntry], role: str, dest: Destination,
              server_ip: str) -> list[AccessLogEntry]:
    """The lines of this connection: the client's outbound ones to the destination, the
    server's inbound ones (the ones that name its pod IP when they name one)."""
    if role == "client":
        mine = [e for e in entries if e.direction == "outbound"
                and (split_hostport(e.downstream_local_address or "")
                     == (dest.host, dest.port))]
    else:
        mine = [e for e in entries if e.direction == "inbound"
                and split_hostport(e.downstream_local_address or "")[0] in ("", server_ip)]
    return mine[-20:]


def _app_line(cluster: Cluster, pod: LabPod, entries: list[AccessLogEntry]) -> str:
    """The server app's latest ``RemoteAddr=`` (or gRPC ``Peer=``) line, when it prints
    one (the seed's servers do)."""
    if not pod.app_container:
        return ""
    text, refusal = cluster.logs(pod.namespace, pod.name, pod.app_container, 50)
    if refusal:
        return ""
    seen = {e.upstream_local_address for e in entries if e.upstream_local_address}
    peers = [(line.strip(), app_peer(line)) for line in text.splitlines()]
    lines = [line for line, peer in peers if peer is not None]
    matching = [line for line, peer in peers if peer is not None and peer[1] in seen]
    return (matching or lines or [""])[-1]


def _pod_evidence(cluster: Cluster, pe: PodEvidence, pod: LabPod, run: KubeRun, role: str,
                  dest: Destination, server_ip: str) -> None:
    pe.pod, pe.namespace, pe.ip = pod.name, pod.namespace, pod.ip
    container = SIDECAR if pod.has_sidecar else (pod.app_container or SIDECAR)
    pe.iptables = _rules(cluster, pod, container, run, role)
    if pe.iptables is not None:
        pe.sources.append(f"iptables: {run.collected[-1].split(': ', 1)[1]} (pods/exec)")
    pe.iptables6 = _rules6(cluster, pod, container, run, role)
    if pe.iptables6 is not None:
        pe.sources.append(f"ip6tables: {run.collected[-1].split(': ', 1)[1]} (pods/exec)")
    if pod.has_sidecar and not _istio_chains(pe.iptables) and not _istio_chains(pe.iptables6):
        found = _nft(cluster, pod, container, run, role)
        if found:
            pe.iptables = pe.iptables6 = None
            run.gaps = [g for g in run.gaps if g.step not in (f"{role} capture rules",
                                                              f"{role} IPv6 capture rules")]
            for rs in found:
                pe.add_rules(rs)
            pe.sources.append(f"nft: {run.collected[-1].split(': ', 1)[1]} (pods/exec)")
    if not pod.has_sidecar:
        pe.sources.append(f"no sidecar (istio-proxy) in {pod.ref}")
        return
    pe.config = _config(cluster, pod, run, role)
    if pe.config is not None:
        pe.sources.append(f"config: {run.collected[-1].split(': ', 1)[1]} (pods/exec)")
    entries = _relevant(_access_log(cluster, pod, run, role), role, dest, server_ip)
    pe.access_log = entries
    if entries:
        pe.sources.append(f"access log: istio-proxy log of {pod.ref}, {len(entries)} "
                          "matching entries")
    _ids(pod, pe)


def _pick_server(cluster: Cluster, client: LabPod, dest: Destination,
                 run: KubeRun) -> LabPod:
    """The endpoint the client's latest request went to (its log's UPSTREAM_HOST), else
    the first ready one."""
    if len(dest.candidates) == 1:
        return dest.candidates[0]
    if client.has_sidecar:
        text, _ = cluster.logs(client.namespace, client.name, SIDECAR, LOG_TAIL)
        ups = [split_hostport(e.upstream_host or "")[0]
               for e in parse_access_log(text, "client log") if e.upstream_host]
        for ip in reversed(ups):
            for pod in dest.candidates:
                if ip in pod.ips:
                    return pod
    run.notes.append(f"{len(dest.candidates)} endpoints can serve it; showing "
                     f"{dest.candidates[0].ref}")
    return dest.candidates[0]


def collect(cluster: Cluster, from_pod: str, namespace: str, to: str, path: str = "/",
            server_url: str = "", context: str = "") -> KubeRun:
    """Everything `explain source-ip --kube` needs, through the cluster's API."""
    pods, services, note = _objects(cluster, namespace, to)
    pods = [as_candidate(p) for p in pods]
    try:
        src = find_pod(pods, from_pod, namespace, "client", netns=False)
        dest = resolve_destination(to, src.namespace, services, pods, netns=False)
    except RemoraError as exc:  # the same checks as the lab's; a cluster's user has kubectl
        exc.problem = exc.problem.replace("`remora get", "`kubectl get")
        exc.fix = (exc.fix or "").replace("remora get", "kubectl get").replace(
            "remora describe", "kubectl describe") or None
        raise
    # the connection's family is the destination address's (an IPv6 ClusterIP: ip6tables,
    # ::6, `ip -6 rule`); each pod is named by its address of that family
    fam = family_of_ip(dest.host)
    src = replace(src, ip=src.ip_of(fam))
    dest.candidates = [replace(p, ip=p.ip_of(fam)) for p in dest.candidates]
    run = KubeRun(Evidence(), src, dest.candidates[0], dest, server_url, context)
    if note:
        run.notes.append(note)
    server = _pick_server(cluster, src, dest, run)
    run.server = server
    ev = run.evidence
    _pod_evidence(cluster, ev.client, src, run, "client", dest, server.ip)
    if server.ref != src.ref:
        _pod_evidence(cluster, ev.server, server, run, "server", dest, server.ip)
    if server.has_sidecar:
        _policy_routing(cluster, server, ev.server, run, fam)
    ev.target.host, ev.target.port, ev.target.path = dest.host, dest.port, path
    run.app_line = _app_line(cluster, server, ev.server.access_log)
    if run.app_line:
        ev.server.app_log.append(run.app_line)
    return run


def header_lines(run: KubeRun) -> list[str]:
    d = run.dest
    what = f"{d.kind} {d.namespace}/{d.name} ({hostport(d.host, d.port)})"
    where = f" (context {run.context})" if run.context else ""
    lines = [f"kube: {run.server_url}{where}: from pod {run.client.ref} ({run.client.ip}) to "
             f"{what}, served by pod {run.server.ref} ({run.server.ip})"]
    lines.extend(f"  collected: {c}" for c in run.collected)
    lines.extend(f"  could not collect {g.line()}" for g in run.gaps)
    lines.extend(f"  note: {n}" for n in run.notes)
    return lines


def to_json(run: KubeRun) -> dict[str, Any]:
    return {
        "server": run.server_url, "context": run.context or None,
        "client_pod": {"name": run.client.name, "namespace": run.client.namespace,
                       "ip": run.client.ip, "sidecar": run.client.has_sidecar},
        "server_pod": {"name": run.server.name, "namespace": run.server.namespace,
                       "ip": run.server.ip, "sidecar": run.server.has_sidecar},
        "destination": {"kind": run.dest.kind, "name": run.dest.name,
                        "namespace": run.dest.namespace, "host": run.dest.host,
                        "port": run.dest.port, "authority": run.dest.authority},
        "collected": run.collected,
        "not_collected": [{"step": g.step, "why": g.why, "instead": g.instead}
                          for g in run.gaps],
        "app_log_line": run.app_line or None,
        "notes": run.notes,
    }
