"""Istio's protocol selection for a Service port: appProtocol, the port name, sniffing.

The values and rules are Istio's own (istio/istio 86c9f01fd735):

- ``pkg/config/protocol/instance.go``: the protocol instances, ``Parse`` (case-insensitive,
  exact names only) and the classes ``IsHTTP`` (HTTP, HTTP2, HTTP_PROXY, GRPC, GRPC-Web),
  ``IsHTTP2`` (HTTP2, GRPC, GRPC-Web), ``IsTCP`` (TCP, HTTPS, TLS, Mongo, Redis, MySQL);
  anything else is ``UnsupportedProtocol``, which the sidecar sniffs (protocol detection).
- ``pkg/config/kube/conversion.go`` ``ConvertProtocol``: UDP by the port's ``protocol``;
  else ``appProtocol`` when set, *replacing* the name (Kubernetes' ``kubernetes.io/h2c``
  -> HTTP2, ``kubernetes.io/ws`` -> HTTP, ``kubernetes.io/wss`` -> HTTPS, exact case);
  a ``grpc-web`` prefix (case-insensitive, before the general rule since it holds a
  hyphen); else the part before the first ``-`` goes through ``Parse``; an unknown result
  on a well-known port (25 SMTP, 53 DNS, 3306 MySQL, 27017 MongoDB) is TCP, since
  sniffing would break server-first protocols.

https://istio.io/latest/docs/ops/configuration/traffic-management/protocol-selection/
"""

from __future__ import annotations

from remora.resources.objects import ServicePort

GRPC = "GRPC"
GRPC_WEB = "GRPC-Web"
HTTP = "HTTP"
HTTP_PROXY = "HTTP_PROXY"
HTTP2 = "HTTP2"
HTTPS = "HTTPS"
TCP = "TCP"
TLS = "TLS"
UDP = "UDP"
MONGO = "Mongo"
REDIS = "Redis"
MYSQL = "MySQL"
UNSUPPORTED = "UnsupportedProtocol"  # not declared: sniffed with http_inspector

_PARSE = {"tcp": TCP, "udp": UDP, "grpc": GRPC, "grpc-web": GRPC_WEB, "http": HTTP,
          "http_proxy": HTTP_PROXY, "http2": HTTP2, "https": HTTPS, "tls": TLS,
          "mongo": MONGO, "redis": REDIS, "mysql": MYSQL}
# Kubernetes' standard appProtocol names (k8s.io/api/core/v1 ServicePort.appProtocol).
_K8S_APP_PROTOCOLS = {"kubernetes.io/h2c": HTTP2, "kubernetes.io/ws": HTTP,
                      "kubernetes.io/wss": HTTPS}
WELL_KNOWN_PORTS = frozenset({25, 53, 3306, 27017})


def parse(name: str) -> str:
    """protocol.Parse: a case-insensitive exact name, else UnsupportedProtocol."""
    return _PARSE.get(name.lower(), UNSUPPORTED)


def convert_protocol(port: int, name: str, protocol: str = "TCP",
                     app_protocol: str | None = None) -> str:
    """kube.ConvertProtocol: the Istio protocol of a Kubernetes service port."""
    if protocol == "UDP":
        return UDP
    if app_protocol:  # Kubernetes validation refuses an empty appProtocol: "" is unset
        name = app_protocol
        if name in _K8S_APP_PROTOCOLS:
            return _K8S_APP_PROTOCOLS[name]
    if name[:len(GRPC_WEB)].lower() == GRPC_WEB.lower():
        return GRPC_WEB
    found = parse(name.split("-", 1)[0])
    if found == UNSUPPORTED and port in WELL_KNOWN_PORTS:
        return TCP
    return found


def port_protocol(port: ServicePort) -> str:
    """The protocol Istio gives a Service port (appProtocol, name, well-known port)."""
    return convert_protocol(port.port, port.name, port.protocol, port.appProtocol or None)


def is_http(protocol: str) -> bool:
    return protocol in (HTTP, HTTP2, HTTP_PROXY, GRPC, GRPC_WEB)


def is_http2(protocol: str) -> bool:
    """Ports whose upstream is HTTP/2 (cluster_builder.go setUpstreamProtocol) and whose
    inbound HCM gets http2_protocol_options (listener_inbound.go)."""
    return protocol in (HTTP2, GRPC, GRPC_WEB)


def is_tcp(protocol: str) -> bool:
    return protocol in (TCP, HTTPS, TLS, MONGO, REDIS, MYSQL)


def is_sniffed(protocol: str) -> bool:
    """IsUnsupported: no declared protocol, so the sidecar detects it (HTTP or TCP)."""
    return protocol == UNSUPPORTED
