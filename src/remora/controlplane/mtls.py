"""Auto mTLS as istiod configures it: TLS contexts, SDS files, meshed destinations.

- Certificates reach Envoy through SDS, as pilot-agent serves them, but from files: the
  secrets ``default`` (workload certificate + key) and ``ROOTCA`` (trust anchor) are
  DiscoveryResponse files ``sds/default.json`` and ``sds/ROOTCA.json`` next to the other
  xDS files, naming the PEM files the CA writes (controlplane/ca.py). The files are
  rewritten (version = certificate serial) on rotation, so Envoy and remora reload.
- Client side (cluster_builder.go buildAutoMtlsSettings / applyUpstreamTLSSettings): to a
  destination whose endpoints all run a sidecar, an UpstreamTlsContext with SNI
  ``outbound_.PORT_._.FQDN``, ALPN ``istio-http/1.1, istio, http/1.1`` for HTTP
  (what the istio.alpn filter sets), ``istio-h2, istio, h2`` for HTTP/2, ``istio-http/1.1,
  istio`` for a sniffed port (CLIENT_SNIFFED_ALPNS) or ``istio-peer-exchange, istio`` for
  TCP, and the
  endpoints' SPIFFE identities as the accepted SANs; otherwise plain text. (Istio marks
  endpoints with ``tlsMode: istio`` and uses transport_socket_matches so one cluster can
  mix both; remora decides per cluster: TLS only when every endpoint is meshed.)
- Server side (listener_inbound.go, mtls.go): DownstreamTlsContext requiring a client
  certificate from the trust domain, ALPN h2/http/1.1 on HTTP chains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from remora.controlplane.authn import WorkloadAuthn
from remora.controlplane.ca import CERT_CHAIN, KEY, ROOT_CERT, TRUST_DOMAIN, spiffe_id
from remora.controlplane.envoy_common import JSON, TYPE
from remora.resources.objects import Pod

TLS = "envoy.transport_sockets.tls"
SECRET_TYPE = TYPE + "envoy.extensions.transport_sockets.tls.v3.Secret"
# pilot/pkg/networking/util: ALPNs of mTLS between sidecars.
MTLS_HTTP_ALPNS = ["istio-http/1.0", "istio-http/1.1", "istio-h2"]
MTLS_TCP_ALPNS = ["istio-peer-exchange", "istio"]
CLIENT_HTTP_ALPNS = ["istio-http/1.1", "istio", "http/1.1"]
# An HTTP/2 cluster (grpc, http2): what istio.alpn sets for an HTTP/2 upstream, "istio-h2",
# then cluster_tls.go's ALPNInMeshH2 ("istio", "h2"): the server's chain matches istio-h2
# (listener.go mtlsHTTPALPNs) and its DownstreamTlsContext negotiates h2.
CLIENT_H2_ALPNS = ["istio-h2", "istio", "h2"]
SERVER_HTTP_ALPNS = ["h2", "http/1.1"]
# A sniffed port's cluster follows the downstream (use_downstream_protocol_config): Istio's
# istio.alpn filter offers istio-http/1.1,istio,http/1.1 for an HTTP/1.1 request and
# istio-h2,istio,h2 for an HTTP/2 one, so the server negotiates the codec the client's pool
# speaks. Upstream Envoy has no per-request ALPN, and one list cannot name both codecs;
# offering no plain one (http/1.1, h2) means the server negotiates none, and its HCM
# (codec AUTO) picks HTTP/2 or HTTP/1.1 by the h2 preface, as Envoy does without ALPN.
# The chain still matches on istio-http/1.1 (the server's HTTP chain).
CLIENT_SNIFFED_ALPNS = ["istio-http/1.1", "istio"]
TLS_PARAMS = {"tls_minimum_protocol_version": "TLSv1_2",
              "tls_maximum_protocol_version": "TLSv1_3"}
# pilot/pkg/security/authn/utils.go SupportedCiphers: what BuildInboundTLS sets as the
# inbound (server) context's tls_params.cipher_suites when the mesh config names none (the
# TLS 1.2 suites; TLS 1.3's are not configurable in Envoy). The outbound context keeps
# Envoy's client defaults, as defaultUpstreamCommonTLSContext does.
SERVER_CIPHER_SUITES = [
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384", "AES128-GCM-SHA256",
]


@dataclass(frozen=True)
class MeshSecurity:
    """What one sidecar's config needs for mTLS and authorization."""

    config_dir: str  # holds sds/*.json
    certs_dir: str  # holds cert-chain.pem, key.pem, root-cert.pem
    authn: WorkloadAuthn
    http_rbac: list[JSON] = field(default_factory=list)
    network_rbac: list[JSON] = field(default_factory=list)

    def sds(self, name: str) -> JSON:
        # watched_directory: Envoy re-reads the secret and the PEM files it names when a
        # file is renamed into certs_dir, which is how the CA replaces them.
        return {"name": name, "sds_config": {
            "path_config_source": {"path": f"{self.config_dir}/sds/{name}.json",
                                   "watched_directory": {"path": self.certs_dir}},
            "resource_api_version": "V3"}}

    def _common(self, alpn: list[str], sans: JSON, ciphers: list[str] | None = None) -> JSON:
        params: JSON = dict(TLS_PARAMS)
        if ciphers:
            params["cipher_suites"] = list(ciphers)
        common: JSON = {"tls_params": params}
        if alpn:
            common["alpn_protocols"] = list(alpn)
        common["tls_certificate_sds_secret_configs"] = [self.sds("default")]
        common["combined_validation_context"] = {
            "default_validation_context": sans,
            "validation_context_sds_secret_config": self.sds("ROOTCA")}
        return common

    def downstream(self, http: bool) -> JSON:
        """The transport_socket of an inbound chain that terminates mTLS."""
        trust = {"match_typed_subject_alt_names": [{
            "san_type": "URI", "matcher": {"prefix": f"spiffe://{TRUST_DOMAIN}/"}}]}
        return {"name": TLS, "typed_config": {
            "@type": TYPE + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": self._common(SERVER_HTTP_ALPNS if http else [], trust,
                                               SERVER_CIPHER_SUITES),
            "require_client_certificate": True}}

    def upstream(self, sni: str, http: bool, identities: list[str], h2: bool = False,
                 sniffed: bool = False) -> JSON:
        """The transport_socket of an outbound cluster to a meshed destination (SNIFFED: a
        port whose protocol is detected, its cluster following the downstream's)."""
        sans = {"match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"exact": i}} for i in identities]}
        alpn = (CLIENT_H2_ALPNS if h2 else CLIENT_SNIFFED_ALPNS if sniffed
                else CLIENT_HTTP_ALPNS if http else MTLS_TCP_ALPNS)
        return {"name": TLS, "typed_config": {
            "@type": TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": self._common(alpn, sans),
            "sni": sni}}

    def sds_files(self, version: str = "1") -> dict[str, JSON]:
        """sds/default.json and sds/ROOTCA.json, relative to config_dir."""
        d = self.certs_dir
        default = {"@type": SECRET_TYPE, "name": "default", "tls_certificate": {
            "certificate_chain": {"filename": f"{d}/{CERT_CHAIN}"},
            "private_key": {"filename": f"{d}/{KEY}"}}}
        root = {"@type": SECRET_TYPE, "name": "ROOTCA", "validation_context": {
            "trusted_ca": {"filename": f"{d}/{ROOT_CERT}"}}}
        return {"sds/default.json": {"version_info": version, "resources": [default]},
                "sds/ROOTCA.json": {"version_info": version, "resources": [root]}}


def sni(port: int, fqdn: str) -> str:
    """pilot/pkg/model/service.go BuildDNSSrvSubsetKey: outbound_.PORT_._.FQDN."""
    return f"outbound_.{port}_._.{fqdn}"


def has_sidecar(pod: Pod) -> bool:
    return any(c.name == "istio-proxy" for c in pod.spec.containers)


def workload_identity(pod: Pod) -> str:
    return spiffe_id(pod.metadata.namespace, pod.spec.serviceAccountName or "default")
