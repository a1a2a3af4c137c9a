"""What Envoy's ``Ssl::ConnectionInfo`` tells the access log about one TLS connection
(source/common/tls/connection_info_impl_base.cc): the ``DOWNSTREAM_*`` TLS command
operators of source/common/formatter/stream_info_formatter.cc on a downstream connection,
its ``UPSTREAM_*`` ones on an upstream connection (the StreamInfo's upstream TLS
connection, set when a request or tcp_proxy session is given that connection).

One ``TlsConnectionInfo`` is made per TLS connection, when its handshake completes
(tls.py), and the connection's StreamInfo references it (``downstream_tls``; each request's
StreamInfo copies the reference; ``upstream_tls`` for the upstream connection a request
went out on). Nothing is read or computed then: each value is worked
out the first time a format asks for it and kept for the connection's other requests, as
Envoy's ConnectionInfoImplBase caches its values per connection. A connection whose
format has no TLS operator pays for the object alone.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable

from remora.proxy.transport.cert_details import (
    EMAIL,
    IP,
    OTHER_NAME,
    TlsPeer,
    dns_sans,
    issuer_rfc2253,
    sans_of,
    serial_hex,
    sha1_hex,
    sha256_hex,
    subject_rfc2253,
    uri_sans,
    url_encoded_pem,
    validity,
)


def _session_id(sslobj: ssl.SSLObject) -> str:
    # Envoy: Hex::encode(SSL_SESSION_get_id(SSL_get_session(ssl))), lower case. A TLS 1.3
    # session has no ID in BoringSSL (TLS 1.3 resumes by PSK; the ClientHello's
    # legacy_session_id is only echoed): Envoy 1.40 prints "-" for every TLS 1.3
    # connection (observed), where OpenSSL would give 32 random bytes
    if sslobj.version() == "TLSv1.3":
        return ""
    session = sslobj.session
    return session.id.hex() if session is not None else ""


def _cipher(sslobj: ssl.SSLObject) -> str:
    # SSL_CIPHER_get_name of the current cipher: "TLS_AES_128_GCM_SHA256" in TLS 1.3,
    # the OpenSSL-style name ("ECDHE-ECDSA-AES128-GCM-SHA256") in TLS 1.2, as ``ssl``
    # reports it too
    cipher = sslobj.cipher()
    return cipher[0] if cipher else ""


def _joined(kind: int) -> Callable[[bytes], str]:
    return lambda der: ",".join(sans_of(der, kind))


def _each(of: Callable[[bytes], str]) -> Callable[[tuple[bytes, ...]], str]:
    # the *_CHAIN_* operators: one value per certificate the peer sent (leaf first,
    # SSL_get_peer_full_cert_chain), joined with ","
    return lambda chain: ",".join(of(der) for der in chain)


# The text each operator prints, by its name without DOWNSTREAM_ ("" prints as "-"): Envoy
# joins several SANs with ",", prints names in RFC 2253 form and digests and the serial in
# lower-case hex, and has an empty value for what a connection lacks (no peer certificate).
# SANs are written as Utility::generalNameAsString writes them (cert_details.all_sans).
_PEER: dict[str, Callable[[bytes], str]] = {
    "PEER_URI_SAN": lambda der: ",".join(uri_sans(der)),
    "PEER_DNS_SAN": lambda der: ",".join(dns_sans(der)),
    "PEER_IP_SAN": _joined(IP),
    "PEER_EMAIL_SAN": _joined(EMAIL),
    "PEER_OTHERNAME_SAN": _joined(OTHER_NAME),
    "PEER_SUBJECT": subject_rfc2253,
    "PEER_ISSUER": issuer_rfc2253,
    "PEER_FINGERPRINT_256": sha256_hex,
    "PEER_FINGERPRINT_1": sha1_hex,
    "PEER_SERIAL": serial_hex,
    "PEER_CERT": url_encoded_pem,  # urlEncodedPemEncodedPeerCertificate
}
_CHAIN: dict[str, Callable[[tuple[bytes, ...]], str]] = {
    "PEER_CHAIN_FINGERPRINTS_256": _each(sha256_hex),
    "PEER_CHAIN_FINGERPRINTS_1": _each(sha1_hex),
    "PEER_CHAIN_SERIALS": _each(serial_hex),
}
_LOCAL: dict[str, Callable[[bytes], str]] = {
    "LOCAL_URI_SAN": lambda der: ",".join(uri_sans(der)),
    "LOCAL_DNS_SAN": lambda der: ",".join(dns_sans(der)),
    "LOCAL_IP_SAN": _joined(IP),
    "LOCAL_EMAIL_SAN": _joined(EMAIL),
    "LOCAL_OTHERNAME_SAN": _joined(OTHER_NAME),
    "LOCAL_SUBJECT": subject_rfc2253,
}
_SESSION: dict[str, Callable[[ssl.SSLObject], str]] = {
    "TLS_VERSION": lambda s: s.version() or "",  # SSL_get_version: "TLSv1.3", "TLSv1.2"
    "TLS_CIPHER": _cipher,
    "TLS_SESSION_ID": _session_id,
}
_UNREAD = object()
# DOWNSTREAM_<name>: every one (source/common/formatter/stream_info_formatter.cc)
FIELDS: frozenset[str] = frozenset({*_PEER, *_CHAIN, *_LOCAL, *_SESSION})
# UPSTREAM_<name>: the ones Envoy 1.40 registers for the upstream connection; it refuses
# the others ("Not supported field in StreamInfo: UPSTREAM_PEER_EMAIL_SAN", observed by
# `envoy --mode validate`): no EMAIL/OTHERNAME SANs, no digests, serials or chains, no
# UPSTREAM_LOCAL_SUBJECT
UPSTREAM_FIELDS: frozenset[str] = frozenset({
    "PEER_URI_SAN", "PEER_DNS_SAN", "PEER_IP_SAN", "PEER_SUBJECT", "PEER_ISSUER", "PEER_CERT",
    "LOCAL_URI_SAN", "LOCAL_DNS_SAN", "LOCAL_IP_SAN", *_SESSION})


class TlsConnectionInfo:
    """One TLS connection (downstream or upstream): its ``ssl`` object (read for the
    version, cipher and session), the peer's certificate and chain when it presented one,
    and the DER of the local certificate the handshake used (None when it could not be
    read)."""

    __slots__ = ("_cache", "_sslobj", "_validity", "local_der", "peer")

    def __init__(self, sslobj: ssl.SSLObject | None, peer: TlsPeer | None,
                 local_der: bytes | None) -> None:
        self._sslobj = sslobj
        self.peer = peer
        self.local_der = local_der
        self._cache: dict[str, str] | None = None
        self._validity: tuple[float, float] | object | None = _UNREAD

    def text(self, name: str) -> str:
        """The value of the operator DOWNSTREAM_<NAME> (a key of FIELDS) or UPSTREAM_<NAME>
        (of UPSTREAM_FIELDS); "" for none."""
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        value = cache.get(name)
        if value is None:
            value = cache[name] = self._compute(name)
        return value

    def _compute(self, name: str) -> str:
        try:
            if name in _PEER:
                return _PEER[name](self.peer.der) if self.peer is not None else ""
            if name in _CHAIN:
                return _CHAIN[name](self.peer.chain) if self.peer is not None else ""
            if name in _LOCAL:
                return _LOCAL[name](self.local_der) if self.local_der is not None else ""
            return _SESSION[name](self._sslobj) if self._sslobj is not None else ""
        except (ValueError, IndexError, UnicodeDecodeError):
            # BoringSSL parsed the certificate, the DER walker could not: nothing printed
            return ""

    def peer_validity(self) -> tuple[float, float] | None:
        """notBefore and notAfter of the peer's certificate (DOWNSTREAM_/UPSTREAM_
        PEER_CERT_V_START and _V_END), None without one."""
        known = self._validity
        if known is _UNREAD:
            known = None
            if self.peer is not None:
                with contextlib.suppress(ValueError, IndexError, UnicodeDecodeError):
                    known = validity(self.peer.der)
            self._validity = known
        return known  # type: ignore[return-value]


class FailedHandshake(TlsConnectionInfo):
    """A downstream connection whose TLS handshake failed: Envoy's StreamInfo keeps the
    transport's failure reason for %DOWNSTREAM_TRANSPORT_FAILURE_REASON% (a filter that
    started before the handshake, tcp_proxy, still logs the connection), and its
    ConnectionInfo reads the SSL object whatever became of the handshake, so the TLS
    operators print what the handshake got to (observed on 1.40): the version (BoringSSL's
    SSL_get_version says TLSv1.2 before one is negotiated), the cipher once chosen, a
    refused peer certificate and its chain, the local certificate; never a session ID
    (tls._failed_connection)."""

    __slots__ = ("cipher", "failure_reason", "version")

    def __init__(self, failure_reason: str, version: str = "", cipher: str = "",
                 peer: TlsPeer | None = None, local_der: bytes | None = None) -> None:
        super().__init__(None, peer, local_der)
        self.failure_reason = failure_reason
        self.version = version
        self.cipher = cipher

    def _compute(self, name: str) -> str:
        if name == "TLS_VERSION":
            return self.version
        if name == "TLS_CIPHER":
            return self.cipher
        return super()._compute(name)
