"""What Envoy's ``Ssl::ConnectionInfo`` tells the access log about one downstream TLS
connection (source/common/tls/connection_info_impl_base.cc): the ``DOWNSTREAM_*`` TLS
command operators of source/common/formatter/stream_info_formatter.cc.

One ``TlsConnectionInfo`` is made per TLS connection, when its handshake completes
(tls.py), and the connection's StreamInfo references it (``downstream_tls``; each request's
StreamInfo copies the reference). Nothing is read or computed then: each value is worked
out the first time a format asks for it and kept for the connection's other requests, as
Envoy's ConnectionInfoImplBase caches its values per connection. A connection whose
format has no TLS operator pays for the object alone.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable

from remora.proxy.transport.cert_details import (
    TlsPeer,
    dns_sans,
    issuer_rfc2253,
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


# The text each operator prints, by its name without DOWNSTREAM_ ("" prints as "-"): Envoy
# joins several SANs with ",", prints names in RFC 2253 form and digests and the serial in
# lower-case hex, and has an empty value for what a connection lacks (no peer certificate).
_PEER: dict[str, Callable[[bytes], str]] = {
    "PEER_URI_SAN": lambda der: ",".join(uri_sans(der)),
    "PEER_DNS_SAN": lambda der: ",".join(dns_sans(der)),
    "PEER_SUBJECT": subject_rfc2253,
    "PEER_ISSUER": issuer_rfc2253,
    "PEER_FINGERPRINT_256": sha256_hex,
    "PEER_FINGERPRINT_1": sha1_hex,
    "PEER_SERIAL": serial_hex,
    "PEER_CERT": url_encoded_pem,  # urlEncodedPemEncodedPeerCertificate
}
_LOCAL: dict[str, Callable[[bytes], str]] = {
    "LOCAL_URI_SAN": lambda der: ",".join(uri_sans(der)),
    "LOCAL_DNS_SAN": lambda der: ",".join(dns_sans(der)),
    "LOCAL_SUBJECT": subject_rfc2253,
}
_SESSION: dict[str, Callable[[ssl.SSLObject], str]] = {
    "TLS_VERSION": lambda s: s.version() or "",  # SSL_get_version: "TLSv1.3", "TLSv1.2"
    "TLS_CIPHER": _cipher,
    "TLS_SESSION_ID": _session_id,
}
_UNREAD = object()
FIELDS: frozenset[str] = frozenset({*_PEER, *_LOCAL, *_SESSION})


class TlsConnectionInfo:
    """One downstream TLS connection: its ``ssl`` object (read for the version, cipher and
    session), the peer's certificate when it presented one, and the DER of the local
    certificate the handshake used (None when it could not be read)."""

    __slots__ = ("_cache", "_sslobj", "_validity", "local_der", "peer")

    def __init__(self, sslobj: ssl.SSLObject | None, peer: TlsPeer | None,
                 local_der: bytes | None) -> None:
        self._sslobj = sslobj
        self.peer = peer
        self.local_der = local_der
        self._cache: dict[str, str] | None = None
        self._validity: tuple[float, float] | object | None = _UNREAD

    def text(self, name: str) -> str:
        """The value of the operator DOWNSTREAM_<NAME> (a key of FIELDS); "" for none."""
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
            if name in _LOCAL:
                return _LOCAL[name](self.local_der) if self.local_der is not None else ""
            return _SESSION[name](self._sslobj) if self._sslobj is not None else ""
        except (ValueError, IndexError, UnicodeDecodeError):
            # BoringSSL parsed the certificate, the DER walker could not: nothing printed
            return ""

    def peer_validity(self) -> tuple[float, float] | None:
        """notBefore and notAfter of the peer's certificate (DOWNSTREAM_PEER_CERT_V_START
        and _V_END), None without one."""
        known = self._validity
        if known is _UNREAD:
            known = None
            if self.peer is not None:
                with contextlib.suppress(ValueError, IndexError, UnicodeDecodeError):
                    known = validity(self.peer.der)
            self._validity = known
        return known  # type: ignore[return-value]
