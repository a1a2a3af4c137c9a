"""Which lab pods a live `explain source-ip --from POD --to DEST` is about (pure).

Works on the Kubernetes-shaped objects the node daemon returns (`remora get -o json`):
pods carry ``status.podIP`` and a ``remora`` block with their network namespace, services
``spec.clusterIP`` and ports. ``--to`` names a Service (``NAME``, ``NAME.NS``,
``NAME.NS.svc.cluster.local``), a Pod (``NAME`` or ``NAME.NS``), or an address; a port
after ``:``. A service's candidates are its ready endpoints for that port
(remora.resources.selection, as for EDS and kube-proxy); the probe's access-log line
says which one served it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from remora.controlplane.protocol import convert_protocol
from remora.diagnose.facts import is_ip
from remora.errors import RemoraError, UsageError
from remora.resources import selection

SIDECAR = "istio-proxy"
CLUSTER_SUFFIXES = (".svc.cluster.local", ".svc")


@dataclass
class LabPod:
    name: str
    namespace: str
    ip: str
    netns: str
    has_sidecar: bool
    app_container: str | None  # the first container that is not istio-proxy
    status: str = ""
    obj: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ips(self) -> list[str]:
        """Every address of the pod (``status.podIPs``, the primary first)."""
        listed = [str(a.get("ip") or "") for a in
                  (self.obj.get("status") or {}).get("podIPs") or []]
        return [ip for ip in listed if ip] or ([self.ip] if self.ip else [])

    def ip_of(self, family: int) -> str:
        """The pod's address of FAMILY (4 or 6), else its primary address: a single-stack
        pod reached over the other family has none (the connection cannot be that)."""
        return next((ip for ip in self.ips if family_of_ip(ip) == family), self.ip)


def family_of_ip(ip: str) -> int:
    return 6 if ":" in ip else 4


def cluster_ips(svc: dict[str, Any]) -> list[str]:
    """A Service's ClusterIPs, the primary first (``spec.clusterIPs``, else ``clusterIP``)."""
    spec = svc.get("spec") or {}
    ips = [str(ip) for ip in spec.get("clusterIPs") or [] if ip]
    return ips or ([str(spec["clusterIP"])] if spec.get("clusterIP") else [])


@dataclass
class Destination:
    kind: str  # "service" or "pod"
    name: str
    namespace: str
    host: str  # what the client connects to: ClusterIP or pod IP
    port: int
    authority: str  # Host header: the service's short FQDN as Istio names it, or IP:PORT
    candidates: list[LabPod]  # server pods that may serve the connection
    # Istio's protocol of the Service port (remora.controlplane.protocol: appProtocol, the
    # port name, sniffing); for a pod, that of a Service port targeting it; "" if none
    protocol: str = ""
    cluster_ips: list[str] = field(default_factory=list)  # a service's, the primary first


def _alive(pod: dict[str, Any]) -> bool:
    return "deletionTimestamp" not in pod["metadata"]


def lab_pod(pod: dict[str, Any]) -> LabPod:
    containers = [c["name"] for c in pod.get("spec", {}).get("containers") or []]
    remora = pod.get("remora") or {}
    return LabPod(pod["metadata"]["name"], pod["metadata"].get("namespace", "default"),
                  (pod.get("status") or {}).get("podIP") or "", remora.get("netns") or "",
                  SIDECAR in containers, next((c for c in containers if c != SIDECAR), None),
                  str(remora.get("status") or ""), pod)


def _running(pod: LabPod, role: str, netns: bool = True) -> LabPod:
    """The pod if it runs. The lab's pods also need their network namespace (NETNS); a
    cluster's pods through the API have none to show, their IP is enough."""
    if (netns and not pod.netns) or not pod.ip:
        raise RemoraError(f"{role} pod {pod.ref} is not running yet (status "
                          f"{pod.status or 'unknown'}): it has no network namespace or IP",
                          f"wait until `remora get pods -n {pod.namespace}` shows it Running")
    return pod


def _owned_by(pod: dict[str, Any], deployment: str) -> bool:
    """Owned by the Deployment: directly (the lab's store) or through its ReplicaSet
    ``NAME-<pod-template-hash>``, as on a cluster (and the lab's API)."""
    owner = (pod["metadata"].get("ownerReferences") or [{}])[0]
    name = owner.get("name")
    if name == deployment:
        return True
    hash_ = (pod["metadata"].get("labels") or {}).get("pod-template-hash")
    return owner.get("kind") == "ReplicaSet" and bool(hash_) and name == f"{deployment}-{hash_}"


def find_pod(pods: list[dict[str, Any]], ref: str, namespace: str, role: str = "client",
             netns: bool = True, deployments: list[dict[str, Any]] | None = None) -> LabPod:
    """``POD``, ``POD.NS`` or ``deploy/NAME`` (its first live pod) in NAMESPACE."""
    name = ref
    if "/" in ref:
        kind, name = ref.split("/", 1)
        if kind.lower() not in ("deploy", "deployment", "deployments", "deployment.apps"):
            if kind.lower() not in ("pod", "pods", "po"):
                raise UsageError(f"--from {ref}: expected POD or deploy/NAME",
                                 "e.g. --from deploy/simple-client -n demo-from")
        else:
            owned = [p for p in pods if _alive(p)
                     and p["metadata"].get("namespace") == namespace
                     and _owned_by(p, name)]
            if not owned:
                from remora.lab.pods import missing_deployment
                if deployments is None:
                    # without the Deployments, their pods say where one is (here: none)
                    owners = [{"metadata": {"name": name, "namespace": ns}} for ns in
                              {p["metadata"].get("namespace") for p in pods
                               if _alive(p) and _owned_by(p, name)}]
                    if not owners:
                        raise RemoraError(f"deployment {name!r} has no pods in namespace "
                                          f"{namespace!r}",
                                          f"see `remora get deploy,pods -n {namespace}`")
                    deployments = owners
                raise missing_deployment(name, namespace, deployments)
            return _running(lab_pod(owned[0]), role, netns)
    found = [p for p in pods if p["metadata"]["name"] == name
             and p["metadata"].get("namespace") == namespace]
    if not found and "." in name:
        name, namespace = name.split(".", 1)
        found = [p for p in pods if p["metadata"]["name"] == name
                 and p["metadata"].get("namespace") == namespace]
    if not found:
        elsewhere = sorted({str(p["metadata"].get("namespace")) for p in pods
                            if p["metadata"]["name"] == name})
        raise RemoraError(f"{role} pod {name!r} not found in namespace {namespace!r}"
                          + (f" (it is in {', '.join(elsewhere)})" if elsewhere else
                             ": expected a pod name as `remora get pods` lists it, or "
                             "deploy/NAME"),
                          f"did you mean -n {elsewhere[0]}?" if elsewhere else
                          f"list them with `remora get pods -n {namespace}` (or -A)")
    return _running(lab_pod(found[0]), role, netns)


def split_to(to: str) -> tuple[str, int | None]:
    if is_ip(to.strip("[]")):
        return to.strip("[]"), None
    host, sep, port = to.rpartition(":")
    if not sep:
        return to, None
    if ":" in host and not host.startswith("["):
        # `fd00:10:20::79:18080` is ambiguous (an IPv6 address ends in hex groups): like
        # kubectl and every URL (RFC 3986), an IPv6 address takes its port in brackets
        raise UsageError(f"--to {to}: an IPv6 address with a port needs brackets",
                         f"write --to [{host}]:{port}" if is_ip(host) else
                         "write --to [IPV6]:PORT, e.g. --to [fd00:96::1]:18080")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--to {to}: the port {port!r} is not a port number",
                         "use --to SERVICE[:PORT] or POD[:PORT], e.g. simple-server-svc:18080")
    return host.strip("[]"), int(port)


def _service_port(svc: dict[str, Any], port: int | None) -> dict[str, Any]:
    ports = svc.get("spec", {}).get("ports") or []
    name = f"{svc['metadata']['namespace']}/{svc['metadata']['name']}"
    if not ports:
        raise RemoraError(f"service {name} has no ports", "add spec.ports to the service")
    if port is None:
        return dict(ports[0])
    for p in ports:
        if int(p["port"]) == port:
            return dict(p)
    have = ", ".join(str(p["port"]) for p in ports)
    raise RemoraError(f"service {name} has no port {port} (its ports: {have})",
                      f"use --to {svc['metadata']['name']}.{svc['metadata']['namespace']}:"
                      f"{ports[0]['port']}")


def _service_dest(svc: dict[str, Any], port: int | None, pods: list[dict[str, Any]],
                  host: str | None = None, family: int | None = None) -> Destination:
    """HOST: the ClusterIP the user named; FAMILY: the ClusterIP of that family (a
    dual-stack service has one of each, ``spec.clusterIPs``); else the primary one."""
    meta = svc["metadata"]
    sp = _service_port(svc, port)
    ips = cluster_ips(svc)
    ip = host or (ips[0] if ips else "")
    if family is not None and host is None:
        of_family = [a for a in ips if family_of_ip(a) == family]
        if not of_family:
            raise RemoraError(f"service {meta['namespace']}/{meta['name']} has no IPv{family} "
                              f"ClusterIP (its ClusterIPs: {', '.join(ips) or 'none'})",
                              "drop --family, or give the service ipFamilyPolicy "
                              "PreferDualStack in a dual-stack lab")
        ip = of_family[0]
    if not is_ip(ip):
        raise RemoraError(f"service {meta['namespace']}/{meta['name']} has no ClusterIP "
                          f"({ip or 'none'})", "explain works on ClusterIP services")
    eps = [e for e in selection.service_endpoints_from_dicts(svc, pods)
           if e.service_port == int(sp["port"])]
    by_name = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
    candidates = [lab_pod(by_name[(meta["namespace"], e.pod)]) for e in eps
                  if (meta["namespace"], e.pod) in by_name]
    if not candidates:
        raise RemoraError(f"service {meta['namespace']}/{meta['name']} has no ready endpoint "
                          f"for port {sp['port']}: no Ready pod matches its selector",
                          f"see `remora describe svc {meta['name']} -n {meta['namespace']}` "
                          "and `remora get pods`")
    port_no = int(sp["port"])
    return Destination("service", meta["name"], meta["namespace"], ip, port_no,
                       f"{meta['name']}.{meta['namespace']}:{port_no}", candidates,
                       _port_protocol(sp), ips)


def _port_protocol(sp: dict[str, Any]) -> str:
    """Istio's protocol of a Service port as the API returns it (kube.ConvertProtocol)."""
    return convert_protocol(int(sp["port"]), str(sp.get("name") or ""),
                            str(sp.get("protocol") or "TCP"), sp.get("appProtocol") or None)


def _selecting_ports(pod: dict[str, Any], services: list[dict[str, Any]],
                     ) -> list[tuple[dict[str, Any], int]]:
    """(Service port, the pod's port it targets) for every Service selecting POD."""
    labels = pod["metadata"].get("labels") or {}
    found = []
    for svc in services:
        if svc["metadata"].get("namespace") != pod["metadata"].get("namespace"):
            continue
        if not selection.label_selector(svc.get("spec", {}).get("selector")).matches(labels):
            continue
        for sp in svc.get("spec", {}).get("ports") or []:
            port = selection.target_port(selection.port_spec_from_dict(sp),
                                         selection.candidate_from_dict(pod).container_ports)
            if port is not None:
                found.append((dict(sp), int(port)))
    return found


def _pod_port(pod: dict[str, Any], services: list[dict[str, Any]]) -> int | None:
    """A pod given without a port: the target port of a service selecting it, or its
    first containerPort."""
    for _, port in _selecting_ports(pod, services):
        return port
    for c in pod.get("spec", {}).get("containers") or []:
        if c["name"] != SIDECAR:
            for p in c.get("ports") or []:
                return int(p["containerPort"])
    return None


def resolve_destination(to: str, namespace: str, services: list[dict[str, Any]],
                        pods: list[dict[str, Any]], netns: bool = True,
                        family: int | None = None) -> Destination:
    """FAMILY (4 or 6): reach a named service or pod over that family (its ClusterIP or
    pod IP of that family); an address in TO decides the family by itself."""
    host, port = split_to(to)
    live = [p for p in pods if _alive(p)]
    if is_ip(host):
        host = str(ipaddress.ip_address(host))  # as the API prints it: FD00:96:0::5 -> fd00:96::5
        if family is not None and family_of_ip(host) != family:
            raise UsageError(f"--to {to} is an IPv{family_of_ip(host)} address and --family "
                             f"asks for IPv{family}", "drop --family: the address decides it")
        svc = [s for s in services if host in cluster_ips(s)]
        if svc:
            return _service_dest(svc[0], port, live, host=host)
        by_ip = [p for p in live if host in lab_pod(p).ips]
        if not by_ip:
            raise RemoraError(f"--to {to}: no service ClusterIP or pod IP {host} in the lab",
                              "see `remora get svc,pods -A -o wide`")
        return _pod_dest(by_ip[0], port, services, to, netns, host=host)
    name = host
    for suffix in CLUSTER_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    ns = namespace
    if "." in name:
        name, ns = name.split(".", 1)
    svc = [s for s in services if s["metadata"]["name"] == name
           and s["metadata"].get("namespace") == ns]
    if svc:
        return _service_dest(svc[0], port, live, family=family)
    pod = [p for p in live if p["metadata"]["name"] == name
           and p["metadata"].get("namespace") == ns]
    if pod:
        return _pod_dest(pod[0], port, services, to, netns, family=family)
    raise RemoraError(f"--to {to}: no service or pod named {name!r} in namespace {ns!r}: "
                      "expected SERVICE[.NS][:PORT] or POD[.NS][:PORT]",
                      f"list them with `remora get svc,pods -n {ns}`")


def _pod_dest(pod: dict[str, Any], port: int | None, services: list[dict[str, Any]],
              to: str, netns: bool = True, host: str | None = None,
              family: int | None = None) -> Destination:
    server = _running(lab_pod(pod), "server", netns)
    if host is None and family is not None:
        if not any(family_of_ip(ip) == family for ip in server.ips):
            raise RemoraError(f"pod {server.ref} has no IPv{family} address (its addresses: "
                              f"{', '.join(server.ips)})", "drop --family")
        host = server.ip_of(family)
    server.ip = host or server.ip
    port = port or _pod_port(pod, services)
    if port is None:
        raise UsageError(f"--to {to}: pod {server.ref} declares no port and no service "
                         "selects it", f"give the port: --to {server.name}.{server.namespace}:PORT")
    authority = f"[{server.ip}]:{port}" if ":" in server.ip else f"{server.ip}:{port}"
    # the sidecar serves the pod's port with the protocol of the Service port targeting it
    # (Istio's inbound listener is built from the service targets)
    protocol = next((_port_protocol(sp) for sp, target in _selecting_ports(pod, services)
                     if target == port), "")
    return Destination("pod", server.name, server.namespace, server.ip, port, authority,
                       [server], protocol)
