"""generate(snapshot, pod, ip, config_dir) -> the sidecar's Envoy v3 config, as files.

The config is what istiod would push over ADS, delivered instead as files Envoy itself
watches (docs/architecture.md): a bootstrap whose ``dynamic_resources`` point LDS and CDS at
``lds.json`` and ``cds.json`` (``path_config_source``), and EDS clusters that each point
at ``eds/<cluster>.json``. Each file is a DiscoveryResponse. Endpoint changes only
rewrite EDS files, so a replaced or scaled pod reaches every sidecar without a restart.
https://www.envoyproxy.io/docs/envoy/latest/configuration/overview/xds_api#filesystem-subscriptions

The bootstrap itself carries Istio's static 15021 (readiness) and 15090 (stats) listeners
(controlplane/health.py). ``static_bootstrap()`` folds the xDS resources into it too
(EDS clusters become STATIC with their endpoints inline): one file for
``envoy --mode validate``, which does not open dynamic resources, and for a user who
wants a single config.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass, field

from remora.controlplane import envoy_common as e
from remora.controlplane.authn import workload_authn
from remora.controlplane.envoy_common import JSON
from remora.controlplane.health import static_clusters, static_listeners
from remora.controlplane.inbound import inbound_clusters, passthrough_clusters, virtual_inbound
from remora.controlplane.injection import interception_mode, workload_name
from remora.controlplane.ipfamily import IpFamilies
from remora.controlplane.model import Snapshot, inbound_ports
from remora.controlplane.mtls import MeshSecurity
from remora.controlplane.outbound import (
    eds_file_name,
    outbound_clusters,
    outbound_endpoints,
    outbound_listeners,
    virtual_outbound,
)
from remora.controlplane.rbac import applicable, http_rbac_filters, network_rbac_filters
from remora.resources.objects import Pod

LISTENER_TYPE = e.TYPE + "envoy.config.listener.v3.Listener"
CLUSTER_TYPE = e.TYPE + "envoy.config.cluster.v3.Cluster"
CLA_TYPE = e.TYPE + "envoy.config.endpoint.v3.ClusterLoadAssignment"
ADMIN_PORT = 15000
log = logging.getLogger("remora.controlplane")


@dataclass
class SidecarConfig:
    """One sidecar's config: resources, plus the files that carry them."""

    config_dir: str
    bootstrap: JSON
    listeners: list[JSON]
    clusters: list[JSON]
    endpoints: dict[str, JSON]  # cluster name -> ClusterLoadAssignment
    files: dict[str, JSON] = field(default_factory=dict)  # path relative to config_dir

    @property
    def bootstrap_path(self) -> str:
        return f"{self.config_dir}/bootstrap.json"


def unique_names(resources: list[JSON], what: str, pod: str) -> list[JSON]:
    """RESOURCES with the first of each name only. Envoy (and remora proxy) reject a whole
    LDS/CDS update that holds two resources of one name ("duplicate cluster name"), so one
    duplicate would freeze every sidecar's config. istiod keeps the first of each name too
    (pilot/pkg/networking/core/cluster.go normalizeClusters: "for any clusters that share
    the same name the first cluster is kept and the others are discarded"; listener
    conflicts likewise keep the first). Logged, naming it."""
    seen: set[str] = set()
    out = []
    for r in resources:
        name = str(r.get("name"))
        if name in seen:
            log.warning("sidecar of %s: second %s named %r left out", pod, what, name)
            continue
        seen.add(name)
        out.append(r)
    return out


def _version(resources: object) -> str:
    data = json.dumps(resources, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def discovery_response(type_url: str, resources: list[JSON]) -> JSON:
    return {"version_info": _version(resources),
            "resources": [{"@type": type_url, **r} for r in resources]}


def _node(pod: Pod, ip: str) -> JSON:
    ns = pod.metadata.namespace
    app = pod.metadata.labels.get("app") or workload_name(pod)
    # pilot-agent's node id: TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local
    return {"id": f"sidecar~{ip}~{pod.metadata.name}.{ns}~{ns}.svc.cluster.local",
            "cluster": f"{app}.{ns}"}


def bootstrap(pod: Pod, ip: str, config_dir: str) -> JSON:
    def source(name: str) -> JSON:
        return {"path_config_source": {"path": f"{config_dir}/{name}"},
                "resource_api_version": "V3"}

    return {
        "node": _node(pod, ip),
        "admin": {"address": e.socket_address("127.0.0.1", ADMIN_PORT)},
        "static_resources": {"listeners": static_listeners(), "clusters": static_clusters()},
        "dynamic_resources": {"lds_config": source("lds.json"), "cds_config": source("cds.json")},
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": e.TYPE + "envoy.extensions.resource_monitors.downstream_connections"
                                  ".v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": 2147483647,
            },
        }]},
    }


def mesh_security(snapshot: Snapshot, pod: Pod, config_dir: str, certs_dir: str
                  ) -> MeshSecurity:
    """mTLS settings and RBAC filters for POD from the snapshot's policies."""
    policies = applicable(snapshot.authorization_policies, pod)
    return MeshSecurity(config_dir=config_dir, certs_dir=certs_dir.rstrip("/") or "/",
                        authn=workload_authn(snapshot.peer_authentications, pod),
                        http_rbac=http_rbac_filters(policies),
                        network_rbac=network_rbac_filters(policies))


def generate(snapshot: Snapshot, pod: Pod, ip: str, config_dir: str,
             certs_dir: str | None = None, ips: tuple[str, ...] = ()) -> SidecarConfig:
    """The Envoy config istiod would give the sidecar of ``pod`` (running at ``ip``).

    ``config_dir`` is where the files will live (absolute; the bootstrap names it).
    ``certs_dir`` (where the CA writes the pod's cert-chain.pem, key.pem, root-cert.pem)
    turns on auto mTLS, PeerAuthentication and AuthorizationPolicy; without it the
    config is plain text, as a mesh without a CA.
    ``ips`` are the pod's addresses (status.podIPs; default: the snapshot's workload
    for the pod, else ``ip``): an IPv6 or a dual-stack pod gets Istio's IPv6 or
    dual-stack listeners and binds (controlplane/ipfamily.py).
    """
    config_dir = config_dir.rstrip("/") or "/"
    if not ips:
        found = snapshot.workload(pod)
        ips = found.addresses if found is not None and ip in found.addresses else (ip,)
    fam = IpFamilies.of(ips)
    tproxy = interception_mode(pod) == "TPROXY"
    ports = inbound_ports(snapshot, pod)
    sec = mesh_security(snapshot, pod, config_dir, certs_dir) if certs_dir else None
    who = f"{pod.metadata.namespace}/{pod.metadata.name}"
    listeners = unique_names([e.ordered_listener(x) for x in (
        virtual_outbound(tproxy, fam), virtual_inbound(ports, tproxy, sec, fam),
        *outbound_listeners(snapshot, pod.metadata.namespace, fam))], "listener", who)
    clusters = unique_names([e.proto_order(c, e.CLUSTER_FIELDS) for c in (
        *passthrough_clusters(), *inbound_clusters(ports, fam),
        *outbound_clusters(snapshot, config_dir, sec))], "cluster", who)
    eds = outbound_endpoints(snapshot)
    boot = bootstrap(pod, ip, config_dir)
    files: dict[str, JSON] = {
        "bootstrap.json": boot,
        "lds.json": discovery_response(LISTENER_TYPE, listeners),
        "cds.json": discovery_response(CLUSTER_TYPE, clusters),
    }
    for name, cla in eds.items():
        files[eds_file_name(name)] = discovery_response(CLA_TYPE, [cla])
    if sec is not None:
        files.update(sec.sds_files())
    return SidecarConfig(config_dir=config_dir, bootstrap=boot, listeners=listeners,
                         clusters=clusters, endpoints=eds, files=files)


def static_bootstrap(config: SidecarConfig) -> JSON:
    """The same config as one static bootstrap (EDS clusters inlined as STATIC)."""
    clusters = []
    for c in config.clusters:
        c = copy.deepcopy(c)
        if c.get("type") == "EDS":
            c["type"] = "STATIC"
            del c["eds_cluster_config"]
            c["load_assignment"] = copy.deepcopy(config.endpoints[c["name"]])
        clusters.append(c)
    boot = {k: copy.deepcopy(v) for k, v in config.bootstrap.items()
            if k != "dynamic_resources"}
    static = boot.setdefault("static_resources", {})
    static["listeners"] = static.get("listeners", []) + copy.deepcopy(config.listeners)
    static["clusters"] = static.get("clusters", []) + clusters
    return boot
