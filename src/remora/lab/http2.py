"""HTTP/2 in a lab whose sidecar is `remora proxy`, which does not speak it yet.

A Service port whose Istio protocol is HTTP/2 (named ``grpc``, ``http2``, ``grpc-web``,
or appProtocol ``kubernetes.io/h2c``; controlplane/protocol.py) makes every sidecar's
config carry HTTP/2 fields: the outbound cluster to it is an explicit HTTP/2 cluster in
every meshed pod, and the serving pods' inbound HCM and cluster are HTTP/2 too. `remora
proxy` refuses those fields by path (proxy/config/strict.py); on a file-based CDS/LDS
update it would reject the whole update and keep serving its previous config, a silent
half-failure in every pod of the lab.

So the lab decides before anything changes (docs/lab.md): in a remora-proxy lab,

- ``apply`` / ``up -f`` / ``patch`` and the Kubernetes API's admission refuse a batch
  holding such a Service, nothing applied, with the fix (a real Envoy as the sidecar:
  ``--sidecar envoy``);
- should a pod's generated sidecar config still need HTTP/2 (a store written before this
  check), MeshSetup.prepare holds it Pending with that same one-line reason as its status
  message (``remora get/describe pod``, ``--wait``): its sidecar never starts on a config
  it would reject.

A lab with ``--sidecar envoy`` runs all of it: Envoy implements HTTP/2.
"""

from __future__ import annotations

import json
from typing import Any

from remora.controlplane.generate import SidecarConfig
from remora.controlplane.protocol import is_http2, port_protocol
from remora.errors import RemoraError
from remora.resources.loader import parse_object
from remora.resources.objects import Service

NOT_YET = "remora proxy does not implement HTTP/2 yet"
FIX = ("run the lab with a real Envoy as the sidecar: `sudo remora down`, then "
       "`sudo remora up --sidecar envoy` (or `remora demo --grpc --sidecar envoy`); or, if "
       "the app speaks HTTP/1.1, name the port `http`")


def http2_ports(objects: list[dict[str, Any]]) -> list[str]:
    """``Service/NS/NAME port PORT (grpc): GRPC`` for every HTTP/2 port in OBJECTS."""
    found = []
    for obj in objects:
        if obj.get("kind") != "Service":
            continue
        meta = obj.get("metadata") or {}
        typed, _ = parse_object(obj, f"Service/{meta.get('name')}")
        if not isinstance(typed, Service):
            continue
        for sp in typed.ports:
            proto = port_protocol(sp)
            if is_http2(proto):
                label = sp.appProtocol or sp.name
                found.append(f"Service/{typed.metadata.namespace}/{typed.metadata.name} "
                             f"port {sp.port} ({label}) is {proto}")
    return found


def refuse_for_remora(objects: list[dict[str, Any]], sidecar: str) -> None:
    """Refuse a batch with an HTTP/2 Service port when the lab's sidecar is remora."""
    if sidecar != "remora":
        return
    ports = http2_ports(objects)
    if ports:
        more = f" (and {len(ports) - 1} more)" if len(ports) > 1 else ""
        raise RemoraError(f"{ports[0]}{more}: every sidecar would speak HTTP/2 to it, and "
                          f"{NOT_YET}; nothing was applied", FIX)


def config_http2_field(config: SidecarConfig) -> str | None:
    """Where a generated sidecar config needs HTTP/2 (a cluster or listener name), or None."""
    for cluster in config.clusters:
        if "http2_protocol_options" in json.dumps(
                cluster.get("typed_extension_protocol_options", {}).get(
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {}).get(
                    "explicit_http_config", {})):
            return f"cluster {cluster['name']}"
    for listener in config.listeners:
        for chain in listener.get("filter_chains", []):
            for f in chain.get("filters", []):
                typed = f.get("typed_config", {})
                if "http2_protocol_options" in typed or typed.get("codec_type") == "HTTP2":
                    return f"listener {listener['name']} chain {chain.get('name', '')}".strip()
    return None


def refuse_pod(config: SidecarConfig, pod: str, sidecar: str) -> None:
    """MeshSetup.prepare's check: a remora sidecar is not started on an HTTP/2 config."""
    if sidecar != "remora":
        return
    where = config_http2_field(config)
    if where is not None:
        raise RemoraError(f"{pod}: its sidecar config needs HTTP/2 ({where}), and {NOT_YET}",
                          FIX)
