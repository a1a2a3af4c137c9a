"""The seed's two pods with the control plane's mTLS config, for the marked mTLS tests.

``mesh()`` builds client (10.20.0.78, demo-from) and server (10.20.0.77, demo-to) network
namespaces, issues both workloads' certificates from one CA, generates each sidecar's
config with ``generate(..., certs_dir=...)`` (policies from YAML), applies the reference
capture rules and starts the chosen sidecars (remora or Envoy, each side independently)
and the seed's server app. Everything lives in the caller's ``Lab`` (removed on exit).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path

from remora import netns
from remora.controlplane.ca import CertificateAuthority
from remora.controlplane.files import write_config
from remora.controlplane.generate import generate
from remora.controlplane.model import Snapshot
from remora.resources.loader import load_manifests
from remora.resources.objects import ServicePort
from remora.resources.security import AuthorizationPolicy, PeerAuthentication
from tests import proxyharness as ph
from tests.lab import CLIENT_IP, SERVER_IP, Lab, Namespace
from tests.unit.controlplane.seed import CLUSTER_IP, seed

SNI = "outbound_.18080_._.simple-server-svc.demo-to.svc.cluster.local"
URL = f"http://{CLUSTER_IP}:18080/common/sauth"
OUTBOUND = "outbound|18080||simple-server-svc.demo-to.svc.cluster.local"


@dataclass
class Mesh:
    lab: Lab
    client: Namespace
    server: Namespace
    ca: CertificateAuthority
    work: Path
    server_sidecar: ph.Sidecar
    client_sidecar: ph.Sidecar | None
    app: ph.App

    @property
    def server_certs(self) -> Path:
        return self.work / "server-certs"

    @property
    def client_certs(self) -> Path:
        return self.work / "client-certs"


def with_policies(snap: Snapshot, text: str) -> Snapshot:
    objs = load_manifests(text).objects if text.strip() else []
    return replace(snap, peer_authentications=tuple(
        o for o in objs if isinstance(o, PeerAuthentication)),
        authorization_policies=tuple(o for o in objs if isinstance(o, AuthorizationPolicy)))


def peer_authentication(mode: str) -> str:
    return ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            f"metadata: {{name: default, namespace: istio-system}}\n"
            f"spec: {{mtls: {{mode: {mode}}}}}\n---\n")


def mesh(lab: Lab, work: Path, server_kind: str, client_kind: str | None,
         mode: str = "redirect", policies: str = "", server_identity: str | None = None,
         server_expired: bool = False, tcp_port: int | None = None) -> Mesh:
    """SERVER_IDENTITY / SERVER_EXPIRED give the server a wrong-identity or an expired
    certificate from the start (so the very first handshake meets it). TCP_PORT adds a
    ``tcp-`` named port to the server's service (a TCP chain set, network RBAC)."""
    client, server = lab.pair()
    snap, server_pod, client_pod = seed(tproxy=mode == "tproxy")
    snap = with_policies(snap, policies)
    if tcp_port is not None:
        svc = snap.services[0]
        extra = ServicePort(port=tcp_port, targetPort=tcp_port, name="tcp-echo")
        snap = replace(snap, services=(replace(svc, ports=(*svc.ports, extra)),))
    authority = CertificateAuthority(work / "ca")
    configs = {}
    for name, pod, ip in (("server", server_pod, SERVER_IP), ("client", client_pod, CLIENT_IP)):
        certs = work / f"{name}-certs"
        authority.ensure_workload(certs, pod.metadata.namespace,
                                  pod.spec.serviceAccountName)
        if name == "server" and (server_identity or server_expired):
            now = dt.datetime.now(dt.UTC) - dt.timedelta(days=3) if server_expired else None
            authority.write_workload(certs, authority.issue(
                pod.metadata.namespace, now=now, identity=server_identity))
        cfg = generate(snap, pod, ip, str(work / name), certs_dir=str(certs))
        write_config(cfg)
        configs[name] = Path(cfg.bootstrap_path)
    app = ph.start_app(lab, server, work / "logs")
    ph.apply_capture(lab, server, mode)
    server_sidecar = ph.start_sidecar(lab, server, server_kind, configs["server"],
                                      work / "logs")
    client_sidecar = None
    if client_kind is not None:
        ph.apply_capture(lab, client, "redirect")
        # the ClusterIP needs a route before nat OUTPUT redirects it to the sidecar
        lab.run(client, ["ip", "route", "add", f"{CLUSTER_IP}/32", "via", SERVER_IP])
        client_sidecar = ph.start_sidecar(lab, client, client_kind, configs["client"],
                                          work / "logs")
    return Mesh(lab, client, server, authority, work, server_sidecar, client_sidecar, app)


def get_from(ns: Namespace, source_ip: str | None, ip: str, port: int, path: str = "/",
             host: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET from a socket in NS bound to SOURCE_IP; (0, b"") when the connection is
    refused, reset or closed without a response."""
    sock = netns.socket_in(ns.path)
    sock.settimeout(timeout)
    try:
        if source_ip:
            sock.bind((source_ip, 0))
        sock.connect((ip, port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host or ip}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        raw = ph.recv_all(sock)
    except OSError:  # refused, reset, timed out
        return 0, b""
    finally:
        sock.close()
    if not raw:
        return 0, b""
    return ph.parse_response(raw)
