"""``envoy.transport_sockets.tls``: Downstream/UpstreamTlsContext with Python's ``ssl``.

Envoy reference: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/tls.proto
The subset Istio's sidecars use:

- ``common_tls_context.tls_certificates`` (``certificate_chain`` / ``private_key`` as
  ``filename`` or ``inline_string``) or ``tls_certificate_sds_secret_configs`` whose
  ``sds_config`` is a ``path_config_source`` (a DiscoveryResponse file holding a Secret);
- ``validation_context`` (``trusted_ca``, ``match_typed_subject_alt_names``) or
  ``combined_validation_context`` (that, plus ``validation_context_sds_secret_config``);
- ``alpn_protocols``; ``tls_params`` min/max version, ``cipher_suites``, ``ecdh_curves``;
  ``require_client_certificate`` (downstream); ``sni`` (upstream).

Certificates are read again when a file they come from changes (checked per handshake,
by stat), so a rotated workload certificate is used by the next connection while open
ones keep theirs. A file that cannot be loaded leaves the previous context in use.
SAN matching happens in the handshake, from OpenSSL's verify callback (handshake.py), so
a refused certificate fails it with Envoy's alert and failure reason; where that callback
cannot be installed, and for a request's SAN list override, right after the handshake
(the connection is then closed with Envoy's failure reason text).
A tcp_proxy connection half-closes over TLS as Envoy's SslSocket (_HalfClose): the
peer's close_notify is an end of stream with the connection left open for writing, and
write_eof sends a close_notify after what was written and goes on reading; the TCP FIN
(after a close_notify or without one) is an end of stream too, the connection left open
for writing (_TcpUnderTls).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import socket
import ssl
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from remora.proxy.config.strict import ConfigError, Fields, type_url_of
from remora.proxy.rbac_engine import string_matcher
from remora.proxy.stream_info import StreamInfo
from remora.proxy.transport import cert_details, cipher_list, cipher_order, handshake
from remora.proxy.transport.cert_details import (
    TlsPeer,
    all_sans,
    pem_first_der,
    subject_rfc2253,
    uri_sans,
)
from remora.proxy.transport.connection_info import FailedHandshake, TlsConnectionInfo
from remora.proxy.upstream.auto_host import TlsOverride, dns_name_match

log = logging.getLogger("remora.proxy")

TLS_NAME = "envoy.transport_sockets.tls"
RAW_BUFFER = "envoy.transport_sockets.raw_buffer"
DOWNSTREAM = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RAW_BUFFER_TYPE = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
_VERSIONS = {"TLS_AUTO": None, "TLSv1_2": ssl.TLSVersion.TLSv1_2,
             "TLSv1_3": ssl.TLSVersion.TLSv1_3}
# BoringSSL's packed error codes, as Envoy prints them in transport failure reasons.
VERIFY_FAILED = "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED"


# Envoy's default TLS 1.0-1.2 cipher list for servers (ServerContextConfigImpl::
# DEFAULT_CIPHER_SUITES, source/common/tls/server_context_config_impl.cc), picked by the
# server's order as BoringSSL does, read as tls_params.cipher_suites is (cipher_list.py:
# its "[A|B]" equal-preference groups, where BoringSSL lets the client choose between
# AES128-GCM and CHACHA20-POLY1305, flattened, each reordered per connection by the
# client's preference: SERVER_GROUPS, cipher_order.py). Without
# it ``ssl``'s default list prefers AES256-GCM, so a TLS 1.2 connection Envoy holds with
# ECDHE-ECDSA-AES128-GCM-SHA256 was one with ECDHE-ECDSA-AES256-GCM-SHA384
# (%DOWNSTREAM_TLS_CIPHER%, observed on 1.40). TLS 1.3 suites are not configurable in
# either proxy; the client's order picks one there (cipher_order.py).
SERVER_CIPHERS = cipher_list.openssl_ciphers([cipher_list.ENVOY_SERVER_DEFAULT]) or ""
SERVER_GROUPS = tuple(tuple(g) for g in cipher_list.equal_preference_groups([]))
# Envoy's default ecdh_curves, server and client (ContextConfigImpl DEFAULT_CURVES,
# source/common/tls/*_context_config_impl.cc): OpenSSL's default list adds X448, P-384,
# P-521 and the FFDHE groups, so a client offering only those completed a handshake
# Envoy 1.40 refuses (NO_SHARED_GROUP in TLS 1.3, WRONG_CURVE in TLS 1.2, observed)
DEFAULT_CURVES = "X25519:P-256"


# at most this much plaintext per SSL read: a TLS record holds 16 KiB, and the buffer
# stays below glibc's default 128 KiB mmap threshold
READ_CAP = 64 * 1024


class _DirectSSLObject(ssl.SSLObject):
    """An ``ssl.SSLObject`` whose ``write`` and ``pending`` are the C methods of the
    ``_ssl`` object it wraps, bound on the instance, and ``read`` one call to its C
    method with the size capped (READ_CAP). uvloop's SSLProtocol binds these
    three once per connection (sslproto.pyx: ``_sslobj_read = _sslobj.read``) and calls
    them for every TLS record; through ``ssl.SSLObject``'s Python methods each call is a
    Python frame that only forwards its arguments (ssl.py: ``return
    self._sslobj.write(data)``), three per request on each side. The C methods take the
    same arguments (``read(len[, buffer])``, ``write(data)``, ``pending()``) and raise the
    same exceptions, so nothing else changes."""

    @classmethod
    def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any,
                **kwargs: Any) -> _DirectSSLObject:
        hs = handshake.HANDSHAKE.get()
        create: Callable[..., _DirectSSLObject] = super()._create  # type: ignore[misc]
        obj = None
        if hs is not None and hs.session is not None and not kwargs.get("server_side"):
            # resume the cluster's last session, as Envoy's ClientContextImpl::newSsl
            # sets one from its session cache; one of a context replaced since (a
            # rotated certificate) is refused, and the handshake is a full one
            with contextlib.suppress(ValueError):
                obj = create(incoming, outgoing, *args, **{**kwargs, "session": hs.session})
        if obj is None:
            obj = create(incoming, outgoing, *args, **kwargs)
        inner = obj._sslobj  # type: ignore[attr-defined]
        inner_read = inner.read
        if hs is not None:  # a failed handshake's alert is sent (handshake.py)
            # a server's: what a failed handshake got to, for the access log
            obj.__dict__["do_handshake"] = handshake.alerting(
                inner.do_handshake, incoming, outgoing, hs,
                inner if kwargs.get("server_side") else None)

        half = _HalfClose(obj, incoming) if hs is not None and hs.half_close else None

        def read(size: int = 1024, buffer: Any = None) -> Any:
            # uvloop asks for 256 KiB per read (SSL_READ_MAX_SIZE) and _ssl allocates
            # that much before shrinking the bytes to what one record held: above
            # glibc's mmap threshold, so an mmap, an mremap and a munmap per record and
            # two page faults (strace and /proc/<pid>/stat of the server sidecar, one of
            # each per request). uvloop reads again while bytes are pending, so a smaller
            # request per call delivers the same data.
            try:
                if buffer is not None:
                    got = inner_read(size, buffer)
                else:
                    got = inner_read(size if size < READ_CAP else READ_CAP)
            except ssl.SSLZeroReturnError:
                # the peer's close_notify after ours: _ssl returns the end of stream
                # only while the connection has not sent one (SSL_get_shutdown ==
                # SSL_RECEIVED_SHUTDOWN) and raises otherwise, which uvloop takes for
                # a fatal error, dropping what it read before in the same call
                got = b"" if buffer is None else 0
            if got or half is None:
                return got
            return half.peer_closed(got)

        obj.__dict__.update(read=read, write=inner.write, pending=inner.pending)
        if half is not None:
            inner_write = inner.write

            def write(data: Any) -> int:
                # the close_notify marker (write_eof) comes through the transport's
                # write backlog, so it follows every byte written before it
                if data.__class__ is _CloseNotify:
                    half.send()
                    return len(data)
                return int(inner_write(data))
            # SSLObject.unwrap is this (not the bound method: the SSLObject would hold a
            # reference to itself in its __dict__, a cycle only the gc frees)
            inner_unwrap = inner.shutdown

            def unwrap() -> Any:
                # closing after the TCP connection ended: our close_notify (if not
                # sent yet) and done, as Envoy's SslSocket::closeSocket (one
                # SSL_shutdown, then the socket's close); the SSLProtocol would wait
                # for the peer's close_notify that cannot come any more (its
                # ssl_shutdown_timeout, 30 s, then an abort that drops what is unsent)
                if half.tcp_eof:
                    half.send()
                    return None
                return inner_unwrap()
            obj.__dict__.update(write=write, unwrap=unwrap, remora_half_close=half)
        return obj


class _CloseNotify(bytes):
    """What write_eof writes through the TLS transport: the SSLObject's write sends a
    close_notify for it instead of its one byte."""


_CLOSE_NOTIFY = _CloseNotify(b"\0")


class _HalfClose:
    """TLS half-close for one connection of a half-closing filter (tcp_proxy), as Envoy's
    SslSocket does it: the peer's close_notify is an end of stream for the application
    while the connection stays open for writing (uvloop's and asyncio's SSLProtocol shut
    the connection down on it: "SSL doesn't support half-closes"), and write_eof sends
    the connection's close_notify once what was written before has been encrypted, and
    reading goes on (Envoy's SslSocket::doWrite(end_stream) -> shutdownSsl). TLS 1.2 and
    1.3 both let a side send data after it received a close_notify and read after it sent
    one; OpenSSL keeps writing after SSL_RECEIVED_SHUTDOWN and reading after
    SSL_SENT_SHUTDOWN."""

    __slots__ = ("eof", "incoming", "obj", "on_eof", "sent", "tcp_eof")

    def __init__(self, obj: ssl.SSLObject, incoming: ssl.MemoryBIO) -> None:
        # weak: the SSLObject holds this in its __dict__ (no cycle for the gc to find)
        self.obj = weakref.ref(obj)
        self.incoming = incoming  # the SSLObject's: what the TCP connection delivered
        self.sent = False  # our close_notify went into the outgoing BIO
        self.eof = False  # the peer's close_notify (or the TCP end) was read
        self.tcp_eof = False  # the TCP connection's end of stream came (_TcpUnderTls)
        self.on_eof: Callable[[], object] | None = None  # the application's eof_received

    def peer_closed(self, got: Any) -> Any:
        """A read found the peer's close_notify: GOT (the end of stream, for the
        SSLProtocol to shut the connection down) once ours was sent too; before, the
        application's eof_received, on the next loop iteration (after the SSLProtocol
        has passed on the data it read in this call), and the read finds nothing."""
        if self.sent:
            return got
        if not self.eof:
            self.eof = True
            if self.on_eof is not None:
                asyncio.get_running_loop().call_soon(self.on_eof)
        raise ssl.SSLWantReadError("close_notify received; the connection stays open")

    def send(self) -> None:
        obj = self.obj()
        if not self.sent and obj is not None:
            self.sent = True
            handshake.send_close_notify(obj)

    def tcp_ended(self, app: asyncio.Transport) -> None:
        """The TCP connection's end of stream (a FIN): after a close_notify, nothing more
        (the end of stream was passed on); without one, the end of stream once the
        application has read what the TLS layer still holds. The connection stays open
        for writing either way: Envoy's SslSocket::doRead takes the socket's EOF for
        end_stream as it takes SSL_ERROR_ZERO_RETURN, and a half-closing filter
        (tcp_proxy) still relays the answer, then its close_notify (observed on 1.40: a
        TLS client's FIN after its close_notify, and a FIN alone, get the answer). APP:
        the TLS transport."""
        self.tcp_eof = True  # unwrap no longer waits for the peer's close_notify
        # (not incoming.write_eof(): OpenSSL 3 takes a read that meets it for a fatal
        # unexpected EOF, sends an alert and refuses every write after it, the answer
        # included, where BoringSSL in Envoy goes on writing)
        self._end_after_pending(app)

    def _end_after_pending(self, app: asyncio.Transport, before: int = -1) -> None:
        if self.eof:
            return
        obj = self.obj()
        pending = self.incoming.pending + (obj.pending() if obj is not None else 0)
        if pending and pending != before:
            # the application paused its reading with records still in the BIO: they
            # come first (the SSLProtocol of either loop reads all it holds in one go
            # once resumed, scheduled before this), then the check again; what stays
            # is a record the FIN cut, which nothing will complete
            app.resume_reading()
            asyncio.get_running_loop().call_soon(self._end_after_pending, app, pending)
            return
        self.eof = True
        if self.on_eof is not None:
            self.on_eof()


class _TcpUnderTls(asyncio.BufferedProtocol):
    """The protocol of the TCP transport under a half-closing TLS connection
    (_tls_over_tcp). Before the TLS layer starts it keeps what the TCP transport
    delivers (the ClientHello tls_inspector only peeked is readable as soon as the
    transport exists) and hands it to the SSLProtocol ahead of anything read later
    (hand_over). Then it is the SSLProtocol (its bound methods, no call of its own per
    read) but for the TCP end of stream: uvloop's SSLProtocol takes it for "a critical
    situation similar to a broken connection" and closes both ways, asyncio's flushes
    and closes, so a client that shut its socket down after its close_notify (or
    instead of one) never got the answer Envoy sends it (_HalfClose.tcp_ended)."""

    def __init__(self) -> None:
        self.early = bytearray()
        self.chunk = bytearray(16 * 1024)
        self.lost: BaseException | None = None
        self.half: _HalfClose | None = None
        # the TLS transport: held here, which only the TCP transport holds until it is
        # closed (in _HalfClose it would close a reference cycle through the SSLObject)
        self.app: asyncio.Transport | None = None
        self.ssl_eof_received: Callable[[], bool | None] | None = None

    # -- before the TLS layer
    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.chunk)

    def buffer_updated(self, nbytes: int) -> None:
        self.early += self.chunk[:nbytes]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("connection closed before the handshake")

    def hand_over(self, transport: asyncio.BaseTransport) -> None:
        """Give TRANSPORT's SSLProtocol (start_tls made it the protocol, it has not
        started its handshake or reading yet) the bytes read before."""
        proto: Any = transport.get_protocol()  # uvloop's is no asyncio.BufferedProtocol
        data, self.early = bytes(self.early), bytearray()
        self.chunk = bytearray()  # not read into any more: the SSLProtocol reads now
        if proto is self or not hasattr(proto, "buffer_updated"):
            return
        while data:
            buf = proto.get_buffer(len(data))
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            proto.buffer_updated(n)
            data = data[n:]

    # -- under the TLS layer
    def attach(self, proto: asyncio.BaseProtocol, half: _HalfClose,
               app: asyncio.Transport) -> None:
        """Become PROTO (the SSLProtocol, whose transport is APP) for everything but the
        TCP end of stream."""
        for name in ("get_buffer", "buffer_updated", "connection_lost", "pause_writing",
                     "resume_writing"):
            setattr(self, name, getattr(proto, name))
        self.ssl_eof_received = getattr(proto, "eof_received", None)
        self.half = half
        self.app = app

    def eof_received(self) -> bool | None:
        half = self.half
        if half is None:  # before the TLS layer: read again once it is there
            return True
        app = self.app
        if app is None or app.is_closing() or self.ssl_eof_received is None:
            # the TLS connection is shutting down (waiting for the peer's
            # close_notify): the TCP end ends that wait, as before
            return self.ssl_eof_received() if self.ssl_eof_received is not None else None
        half.tcp_ended(app)
        return True  # the write side stays open (the loop stops reading)


def half_close(transport: asyncio.BaseTransport) -> bool:
    """Let TRANSPORT's application (its protocol) read the peer's close_notify as an end
    of stream while the connection stays open (one already read is passed on now);
    whether TRANSPORT is a TLS connection set up for half-close (Handshake.half_close).
    A plain transport half-closes without help."""
    half = _half_of(transport)
    if half is None:
        return False
    eof_received = getattr(transport.get_protocol(), "eof_received", None)
    if eof_received is None:  # not a streaming protocol: nothing to tell
        return False
    half.on_eof = eof_received
    if half.eof:
        asyncio.get_running_loop().call_soon(half.on_eof)
    return True


def write_eof(transport: asyncio.WriteTransport) -> bool:
    """Send TRANSPORT's close_notify after what was written before it, as Envoy's
    SslSocket sends one on the end of stream (shutdownSsl), and go on reading; whether
    it was written (a TLS connection set up for half-close, not closing). No TCP FIN
    follows: Envoy's SslSocket does not shut the socket down either."""
    if _half_of(transport) is None or transport.is_closing():
        return False
    transport.write(_CLOSE_NOTIFY)
    return True


def _half_of(transport: asyncio.BaseTransport) -> _HalfClose | None:
    obj = transport.get_extra_info("ssl_object")
    half = getattr(obj, "__dict__", {}).get("remora_half_close")
    return half if isinstance(half, _HalfClose) else None


class TlsError(Exception):
    """A handshake or verification failure; ``reason`` is Envoy's failure reason text and
    ``stat`` the ssl.* counter it increments."""

    def __init__(self, reason: str, stat: str = "connection_error",
                 connection: FailedHandshake | None = None, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stat = stat
        # the filter chain's transport_socket_connect_timeout ended the handshake
        self.timed_out = timed_out
        # a downstream handshake's: what the access log's TLS operators read of it
        self.connection = connection


def _failed_connection(hs: handshake.Handshake, local_der: bytes | None,
                       reason: str) -> FailedHandshake:
    """What Envoy's ConnectionInfo gives the access log of a downstream connection whose
    handshake failed (observed on 1.40): the version (TLSv1.2 where none was
    negotiated, a client gone before its ClientHello included), the cipher once one was
    chosen, the local certificate's operators, the refused peer certificate's and its
    chain's; no session ID."""
    peer = TlsPeer(hs.peer_der, hs.peer_chain or (hs.peer_der,), ()) \
        if hs.peer_der is not None else None
    return FailedHandshake(reason, hs.version or "TLSv1.2", hs.cipher, peer, local_der)


@dataclass(frozen=True)
class DataSource:
    filename: str | None = None
    inline: bytes | None = None

    def read(self) -> bytes:
        if self.filename is not None:
            with open(self.filename, "rb") as f:
                return f.read()
        return self.inline or b""


def _data_source(f: Fields | None, path: str) -> DataSource | None:
    if f is None:
        return None
    filename = f.string("filename")
    inline_string = f.string("inline_string")
    inline_bytes = f.string("inline_bytes")
    f.done()
    if filename:
        return DataSource(filename=filename)
    if inline_string is not None:
        return DataSource(inline=inline_string.encode())
    if inline_bytes is not None:
        return DataSource(inline=base64.b64decode(inline_bytes))
    raise ConfigError(path, "a DataSource needs filename, inline_string or inline_bytes")


@dataclass
class Material:
    """What one context is built from: certificate + key, trusted CA, SAN matchers."""

    chain: DataSource | None = None
    key: DataSource | None = None
    trusted_ca: DataSource | None = None
    sans: list[SanMatcher] = field(default_factory=list)


def _sds_path(f: Fields) -> tuple[str, str]:
    name = f.string("name", required=True)
    src = f.fields("sds_config", "ConfigSource")
    f.done()
    if src is None:
        raise ConfigError(f.at("sds_config"), "remora reads SDS from files only",
                          "give sds_config.path_config_source.path")
    pcs = src.fields("path_config_source")
    src.enum("resource_api_version", ("V3",), "V3")
    src.ignore("initial_fetch_timeout")
    path = src.string("path")
    src.done()
    if pcs is not None:
        path = pcs.string("path", required=True)
        pcs.ignore("watched_directory")
        pcs.done()
    if not path:
        raise ConfigError(src.path, "remora reads SDS from files only",
                          "give sds_config.path_config_source.path")
    return name, path


def _read_sds(name: str, path: str) -> Fields:
    """The Secret NAME from the SDS DiscoveryResponse file PATH."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise TlsError(f"SDS secret {name}: cannot read {path}: {exc}") from exc
    for i, res in enumerate(doc.get("resources", [])):
        if isinstance(res, dict) and res.get("name") == name:
            secret = Fields(res, f"{path}: resources[{i}]", "Secret")
            secret.ignore("@type", "name")
            return secret
    raise TlsError(f"SDS secret {name} not found in {path}")


def _sds_secret(config: Fields, kind: str, message: str, files: list[str]) -> Fields:
    """The KIND part (tls_certificate / validation_context) of the Secret an
    SdsSecretConfig points at; its file joins FILES, which are watched for rotation."""
    name, path = _sds_path(config)
    files.append(path)
    secret = _read_sds(name, path)
    part = secret.fields(kind, message)
    secret.done()
    if part is None:
        raise TlsError(f"SDS secret {name} in {path} has no {kind}")
    return part


# SubjectAltNameMatcher.san_type: the GeneralName tag it compares (cert_details)
_SAN_TAGS = {"DNS": cert_details.DNS, "URI": cert_details.URI, "EMAIL": cert_details.EMAIL,
             "IP_ADDRESS": cert_details.IP, "OTHER_NAME": cert_details.OTHER_NAME}


@dataclass(frozen=True)
class SanMatcher:
    """One match_typed_subject_alt_names entry (Envoy's StringSanMatcher): the SAN kind
    (a GeneralName tag), for OTHER_NAME the type-id OID it requires, and the test of the
    SAN's text as Utility::generalNameAsString writes it."""

    tag: int
    oid: str | None
    check: Callable[[str], bool]


_DOTTED_OID = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+")


def _san_matcher(item: Fields) -> SanMatcher:
    # san_type is required and must be defined (SubjectAltNameMatcher's PGV rule
    # enum.defined_only, not_in [0]); Envoy's refusal names the field
    san_type = item.enum("san_type", ("SAN_TYPE_UNSPECIFIED", *_SAN_TAGS), "SAN_TYPE_UNSPECIFIED")
    if san_type == "SAN_TYPE_UNSPECIFIED":
        raise ConfigError(item.at("san_type"), "value must not be in list [SAN_TYPE_UNSPECIFIED]",
                          f"give one of {', '.join(_SAN_TAGS)}")
    oid = item.string("oid") or None
    matcher = item.fields("matcher", "StringMatcher")
    item.done()
    if matcher is None:
        raise ConfigError(item.at("matcher"), "required field is missing")
    if san_type == "OTHER_NAME" and not _DOTTED_OID.fullmatch(oid or ""):
        # createStringSanMatcher: an otherName is compared by its type-id first, read with
        # OBJ_txt2obj(oid, 1) (dotted numbers only); Envoy's words (observed on 1.40)
        raise ConfigError(item.at("oid"), f"Failed to create SAN matcher for OTHER_NAME "
                                          f"with OID: {oid or ''}",
                          "give the otherName's type-id, e.g. 1.3.6.1.4.1.311.20.2.3")
    exact = matcher.obj.get("exact") if isinstance(matcher.obj, dict) else None
    check = string_matcher(matcher)
    if san_type == "DNS" and isinstance(exact, str):
        # DnsExactStringSanMatcher: an exact DNS matcher follows DNS matching, a "*."
        # wildcard in the certificate's SAN and case-insensitivity (Utility::dnsNameMatch)
        want = exact
        check = lambda san: dns_name_match(want, san)  # noqa: E731
    return SanMatcher(_SAN_TAGS[san_type], oid if san_type == "OTHER_NAME" else None, check)


def san_failure(der: bytes | None) -> str:
    """Envoy 1.40's failure reason for a certificate no SAN matcher accepted (observed):
    the peer's SANs in brackets, joined by ", " (DefaultCertValidator::verifyCertificate's
    fmt::join; observed with a certificate of four SANs), each as generalNameAsString
    writes it."""
    listed_sans: tuple[tuple[int, str], ...] = ()
    with contextlib.suppress(ValueError, IndexError, UnicodeDecodeError):
        listed_sans = cert_details.all_sans(der) if der else ()
    listed = ", ".join(v for _, v in listed_sans)
    return (f"{VERIFY_FAILED}:verify cert failed: SAN matcher, certificate SANs are "
            f"[{listed}]:TLS_error_end")


def _validation(f: Fields, m: Material) -> None:
    m.trusted_ca = _data_source(f.fields("trusted_ca", "DataSource"), f.at("trusted_ca")) \
        or m.trusted_ca
    for item in f.each("match_typed_subject_alt_names", "SubjectAltNameMatcher"):
        m.sans.append(_san_matcher(item))
    f.done()


def san_matches(der: bytes, matchers: list[SanMatcher]) -> bool:
    """Whether one of the certificate DER's SANs satisfies one of MATCHERS
    (DefaultCertValidator::matchSubjectAltName: any matcher, any SAN of its kind)."""
    sans = cert_details.all_sans(der)
    others: tuple[tuple[str, str], ...] | None = None
    for matcher in matchers:
        if matcher.tag == cert_details.OTHER_NAME:
            if others is None:
                others = cert_details.other_names(der)
            if any(oid == matcher.oid and matcher.check(text) for oid, text in others):
                return True
        elif any(tag == matcher.tag and matcher.check(text) for tag, text in sans):
            return True
    return False


@dataclass
class TlsTransport:
    """One parsed TLS context; ``context()`` gives a current ``ssl.SSLContext``."""

    server: bool
    raw: dict[str, Any]
    path: str
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    require_client_certificate: bool = False
    min_version: ssl.TLSVersion | None = None
    max_version: ssl.TLSVersion | None = None
    # tls_params.cipher_suites as an OpenSSL cipher string (None: the default list), and
    # its [A|B] equal-preference groups (a server context's; cipher_order.py)
    ciphers: str | None = None
    cipher_groups: tuple[tuple[str, ...], ...] = ()
    # tls_params.ecdh_curves joined with ":" (None: DEFAULT_CURVES)
    curves: str | None = None
    _files: tuple[str, ...] = ()
    _signature: tuple[Any, ...] | None = None
    _ctx: ssl.SSLContext | None = None
    sans: list[SanMatcher] = field(default_factory=list)
    # UpstreamTlsContext.max_session_keys (default 1; 0: no resumption) and the SSLObject
    # of the last handshake, whose session (TLS 1.3's arrives after the handshake, in a
    # NewSessionTicket) the next connection resumes
    max_session_keys: int = 1
    _resume_from: tuple[str, ssl.SSLObject] | None = None  # (its SNI, the SSLObject)
    # the URI SANs of the current context's certificate (Envoy's uriSanLocalCertificate,
    # x-forwarded-client-cert's By=), read when the context is (re)built
    local_uri_sans: tuple[str, ...] = ()
    # that certificate's DER (the access log's DOWNSTREAM_LOCAL_* operators)
    local_der: bytes | None = None

    # -- building ---------------------------------------------------------------------
    def _material(self) -> tuple[Material, list[str]]:
        """Re-read the common_tls_context (SDS files included); files to watch."""
        common = Fields(self.raw, self.path, "CommonTlsContext")
        m = Material()
        files: list[str] = []
        common.ignore("alpn_protocols", "tls_params")
        for c in common.each("tls_certificates", "TlsCertificate"):
            m.chain = _data_source(c.fields("certificate_chain"), c.at("certificate_chain"))
            m.key = _data_source(c.fields("private_key"), c.at("private_key"))
            c.done()
        for s in common.each("tls_certificate_sds_secret_configs", "SdsSecretConfig"):
            sc = _sds_secret(s, "tls_certificate", "TlsCertificate", files)
            m.chain = _data_source(sc.fields("certificate_chain"), sc.at("certificate_chain"))
            m.key = _data_source(sc.fields("private_key"), sc.at("private_key"))
            sc.done()
        vc = common.fields("validation_context", "CertificateValidationContext")
        if vc is not None:
            _validation(vc, m)
        cvc = common.fields("combined_validation_context", "CombinedCertificateValidationContext")
        if cvc is not None:
            default = cvc.fields("default_validation_context", "CertificateValidationContext")
            sds = cvc.fields("validation_context_sds_secret_config", "SdsSecretConfig")
            cvc.done()
            if default is not None:
                _validation(default, m)
            if sds is not None:
                _validation(_sds_secret(sds, "validation_context",
                                        "CertificateValidationContext", files), m)
        common.done()
        files += [d.filename for d in (m.chain, m.key, m.trusted_ca) if d and d.filename]
        return m, files

    def _build(self, m: Material) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if self.server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # identities are SPIFFE URIs, checked by SAN matchers
        ctx.sslobject_class = _DirectSSLObject
        if self.ciphers is not None or self.server:
            ctx.set_ciphers(self.ciphers or SERVER_CIPHERS)
        # TLS_AUTO: Envoy's defaults, TLS 1.2 to 1.2 for a client (ClientContextConfigImpl
        # DEFAULT_MAX_VERSION: an UpstreamTlsContext without tls_params speaks TLS 1.2,
        # observed on 1.40 against a TLS 1.3 server) and 1.2 to 1.3 for a server. A
        # client's minimum TLSv1_3 alone leaves no version, and every handshake fails
        # (NO_SUPPORTED_VERSIONS_ENABLED, observed on 1.40; failure_reason)
        ctx.minimum_version = self.min_version or ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = self.max_version or (
            ssl.TLSVersion.TLSv1_3 if self.server else ssl.TLSVersion.TLSv1_2)
        if m.chain is not None and m.key is not None:
            with tempfile.TemporaryDirectory(prefix="remora-tls-") as tmp:
                paths = []
                for name, ds in (("chain", m.chain), ("key", m.key)):
                    if ds.filename:
                        paths.append(ds.filename)
                    else:
                        p = os.path.join(tmp, name)
                        with open(p, "wb") as fh:
                            fh.write(ds.read())
                        paths.append(p)
                ctx.load_cert_chain(paths[0], paths[1])
        elif self.server:
            raise TlsError("a DownstreamTlsContext needs a certificate")
        if m.trusted_ca is not None:
            ctx.load_verify_locations(cadata=m.trusted_ca.read().decode())
            ctx.verify_mode = ssl.CERT_REQUIRED if (not self.server
                                                    or self.require_client_certificate) \
                else ssl.CERT_OPTIONAL
        else:
            ctx.verify_mode = ssl.CERT_NONE
            if self.server and self.require_client_certificate:
                raise TlsError("require_client_certificate needs a validation context")
        # the SAN matchers in the handshake, as Envoy's validator runs from BoringSSL's
        # verify callback (a refusal is then the handshake's, with its alert); without
        # matchers the callback only notes the depth of a refused certificate, for the
        # failure reason (once per certificate of a handshake, not per request)
        if ctx.verify_mode != ssl.CERT_NONE:
            handshake.install_verify(ctx)
        if not cipher_order.set_groups(ctx, self.curves or DEFAULT_CURVES) and self.curves:
            raise TlsError(f"Failed to initialize ECDH curves {self.curves}")
        if self.alpn:
            ctx.set_alpn_protocols(list(self.alpn))
        if self.server:  # TLS 1.3 by the client's order, TLS 1.2's groups by it too, as
            # BoringSSL (cipher_order.py); Envoy's default list has two groups
            cipher_order.install(ctx, self.cipher_groups if self.ciphers is not None
                                 else SERVER_GROUPS)
        return ctx

    def _stat_files(self) -> tuple[Any, ...]:
        sig: list[tuple[Any, ...]] = []
        for p in self._files:
            try:
                st = os.stat(p)
                sig.append((p, st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                sig.append((p, None))
        return tuple(sig)

    def context(self) -> ssl.SSLContext:
        """The current SSLContext, rebuilt when a certificate or SDS file changed."""
        if self._ctx is not None and self._stat_files() == self._signature:
            return self._ctx
        try:
            material, files = self._material()
            self._files = tuple(files)
            signature = self._stat_files()
            ctx = self._build(material)
        except (OSError, ssl.SSLError, ConfigError, TlsError, ValueError) as exc:
            if self._ctx is not None:  # keep serving with the last good certificates
                log.warning("TLS context %s not reloaded: %s", self.path, exc)
                return self._ctx
            reason = exc.reason if isinstance(exc, TlsError) else str(exc)
            raise TlsError(f"TLS context unavailable: {reason}") from exc
        self._ctx, self._signature, self.sans = ctx, signature, material.sans
        self.local_der = pem_first_der(material.chain.read()) if material.chain else None
        self.local_uri_sans = ()
        if self.local_der is not None:
            with contextlib.suppress(ValueError):
                self.local_uri_sans = uri_sans(self.local_der)
        return ctx

    # -- client sessions -----------------------------------------------------------------
    def session(self, sni: str) -> ssl.SSLSession | None:
        """The session a client handshake with server name SNI offers: the last
        handshake's, once it is resumable (a TLS 1.2 session ID or ticket; a TLS 1.3
        ticket), as BoringSSL's client session cache of max_session_keys (Envoy keeps the
        newest first). Only to the same server name: an OpenSSL server resuming a TLS 1.2
        session reports the session's server name, not the one sent (observed with
        auto_sni, test_auto_sni_h2_envoy_parity.py, where Envoy's next name gets a full
        handshake)."""
        last = self._resume_from
        if last is None or last[0] != sni or not self.max_session_keys:
            return None
        session = last[1].session
        if session is None or not (session.has_ticket or session.id):
            return None
        return session

    def handshake_done(self, sni: str, sslobj: ssl.SSLObject | None) -> None:
        """Keep SSLOBJ (a client connection's, to server name SNI) for its session."""
        if self.max_session_keys and sslobj is not None:
            self._resume_from = (sni, sslobj)

    # -- after the handshake ------------------------------------------------------------
    def san_check(self, ctx: ssl.SSLContext) -> Callable[[bytes], str | None] | None:
        """The SAN matchers of CTX, the current context, as a check of a peer's leaf DER
        (None when it passes, else Envoy's failure reason), run in the handshake by the
        verify callback (handshake.py); None without matchers or callback."""
        sans = self.sans
        if not sans or not handshake.verifies(ctx):
            return None

        def check(der: bytes) -> str | None:
            try:
                if san_matches(der, sans):
                    return None
            except (ValueError, IndexError, UnicodeDecodeError):
                pass
            return san_failure(der)
        return check

    def verify_peer(self, sslobj: ssl.SSLObject | ssl.SSLSocket | None,
                    sans_checked: bool = False) -> PeerInfo:
        """Peer identity facts; raises TlsError when a SAN matcher is configured and the
        peer's certificate (if any was verified) matches none (unless SANS_CHECKED: the
        verify callback passed it in the handshake)."""
        peer = PeerInfo()
        cert: dict[str, Any] = dict(sslobj.getpeercert() or {}) if sslobj is not None else {}
        values: list[tuple[str, str]] = [(str(k), str(v))
                                         for k, v in cert.get("subjectAltName", ())]
        if cert:
            peer.validated = True
            peer.uri_sans = tuple(v for k, v in values if k == "URI")
            peer.dns_sans = tuple(v for k, v in values if k == "DNS")
        if self.sans and cert:
            if sans_checked:
                return peer
            der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
            try:
                matched = der is not None and san_matches(der, self.sans)
            except (ValueError, IndexError, UnicodeDecodeError):
                matched = False
            if not matched:
                raise TlsError(san_failure(der), "fail_verify_san")
        elif self.sans and not self.server:
            raise TlsError(f"{VERIFY_FAILED}:TLS_error_end", "fail_verify_error")
        return peer


@dataclass
class PeerInfo:
    validated: bool = False
    uri_sans: tuple[str, ...] = ()
    dns_sans: tuple[str, ...] = ()
    # a downstream peer's certificate subject as Envoy's subjectPeerCertificate gives it
    # (RFC 2253, cert_details.py); "" without a peer certificate, as Envoy's
    subject: str = ""
    # a downstream peer that presented a certificate: its bytes, for the connection
    # manager's x-forwarded-client-cert (http/xfcc.py)
    tls: TlsPeer | None = None
    # a downstream TLS connection's facts for the access log (connection_info.py)
    connection: TlsConnectionInfo | None = None


_ENCODING_DER = 2  # _ssl.ENCODING_DER: _ssl.Certificate.public_bytes's DER (PEM is 1)


def _peer_chain(sslobj: Any) -> tuple[bytes, ...]:
    """The chain the peer sent, leaf first, as DER (BoringSSL's
    SSL_get_peer_full_cert_chain). ``ssl`` offers it publicly from Python 3.13
    (``get_unverified_chain``, DER bytes); before, the ``_ssl`` object has it (3.10+,
    ``_ssl.Certificate`` objects; on the server side CPython puts the leaf first itself)."""
    getter = getattr(sslobj, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(sslobj, "_sslobj", None), "get_unverified_chain", None)
    if getter is None:
        return ()
    return tuple(c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER)
                 for c in getter() or ())


# the server-side failures Envoy 1.40 logs with more than BoringSSL's name (observed) or
# counts under another ssl.* counter: reason -> (text, counter); the others are
# _BORINGSSL_REASONS' (a plain-text HTTP request's HTTP_REQUEST among them)
_SERVER_FAILURES = {
    # require_client_certificate and no certificate came
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": (
        "TLS_error:|268435648:SSL routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_"
        "CERTIFICATE:peer did not provide required client certificate:TLS_error_end",
        "fail_verify_no_cert"),
}


# the chain each client certificate (its DER) came with in this process's last full
# handshake, for the sessions it resumes: BoringSSL keeps the peer's chain in the session,
# so Envoy 1.40 prints %DOWNSTREAM_PEER_CHAIN_*% on a resumed connection as on the first
# (observed, TLS 1.2 and 1.3); OpenSSL puts only the leaf in a session ticket, and
# SSL_get_peer_cert_chain is empty after a resumption. At most CHAIN_MEMORY certificates,
# the oldest forgotten first.
CHAIN_MEMORY = 1024
_chains: dict[bytes, tuple[bytes, ...]] = {}


def _downstream_chain(sslobj: Any, der: bytes) -> tuple[bytes, ...]:
    """The chain a client sent with its certificate DER (leaf first): this handshake's,
    or on a resumed session the one of the full handshake the session came from."""
    chain = _peer_chain(sslobj)
    if chain:
        if _chains.get(der) != chain:
            _chains.pop(der, None)
            if len(_chains) >= CHAIN_MEMORY:
                del _chains[next(iter(_chains))]
            _chains[der] = chain
        return chain
    if sslobj.session_reused:
        return _chains.get(der, ())
    return ()


# BoringSSL's SSL_R_* numbers (include/openssl/ssl.h) of the handshake failures OpenSSL
# reports under the same name or (_OPENSSL_NAMES) another; Envoy prints ERR_PACK(ERR_LIB_SSL,
# number) = 268435456 + number
_BORINGSSL_REASONS = {"HTTP_REQUEST": 156, "NO_SHARED_CIPHER": 184, "WRONG_CURVE": 243,
                      "WRONG_VERSION_NUMBER": 247, "UNSUPPORTED_PROTOCOL": 240,
                      "NO_SHARED_GROUP": 266, "DECODE_ERROR": 137,
                      "NO_COMMON_SIGNATURE_ALGORITHMS": 253}
# a TLS 1.3 ClientHello whose groups the server has none of: OpenSSL's final_key_share
# says NO_SUITABLE_KEY_SHARE, BoringSSL NO_SHARED_GROUP (observed on Envoy 1.40)
_OPENSSL_NAMES = {"NO_SUITABLE_KEY_SHARE": "NO_SHARED_GROUP"}


def _boringssl(name: str) -> str:
    return (f"TLS_error:|{268435456 + _BORINGSSL_REASONS[name]}:SSL routines:"
            f"OPENSSL_internal:{name}:TLS_error_end")


def _server_reason(reason: str, hs: handshake.Handshake | None) -> str | None:
    """BoringSSL's failure reason for a server handshake OpenSSL failed with REASON; None
    where it has no entry here."""
    name = _OPENSSL_NAMES.get(reason, reason)
    if (name == "NO_SHARED_CIPHER" and hs is not None and hs.version != "TLSv1.3"
            and hs.local_group and hs.client_groups is not None
            and hs.local_group not in hs.client_groups):
        # TLS 1.2 with an ECDSA certificate: BoringSSL checks that its key's curve is one
        # the client listed (supported_groups; none listed: none) before it picks a
        # cipher, and fails WRONG_CURVE where OpenSSL drops the ECDSA suites and finds no
        # shared cipher (observed on Envoy 1.40: a client offering only X25519, or only
        # AES128-SHA, so no supported_groups at all, against a P-256 certificate)
        name = "WRONG_CURVE"
    return _boringssl(name) if name in _BORINGSSL_REASONS else None


def failure_reason(exc: BaseException, server: bool = False, depth: int = 0,
                   hs: handshake.Handshake | None = None) -> tuple[str, str]:
    """(Envoy-style failure reason, ssl.* counter) for a failed handshake (SERVER: on a
    listener's connection; DEPTH: where the chain's verification failed; HS: what the
    server's handshake got to)."""
    if isinstance(exc, TlsError):
        return exc.reason, exc.stat
    if server and isinstance(exc, ssl.SSLError) and not isinstance(
            exc, ssl.SSLCertVerificationError) and exc.reason:
        if exc.reason in _SERVER_FAILURES:
            return _SERVER_FAILURES[exc.reason]
        known = _server_reason(exc.reason, hs)
        if known is not None:
            return known, "connection_error"
    if isinstance(exc, ssl.SSLCertVerificationError):
        # Envoy 1.40's wording (observed); ssl does not tell the depth, the leaf is the
        # usual culprit
        msg = exc.verify_message or "certificate verify failed"
        # OpenSSL 3 writes "self-signed"; BoringSSL's X509_verify_cert_error_string, which
        # Envoy prints, "self signed" (observed on Envoy 1.40: "...at depth 0: self signed
        # certificate", "...at depth 1: self signed certificate in certificate chain")
        msg = msg.replace("self-signed", "self signed")
        return (f"{VERIFY_FAILED}:verify cert failed: X509_verify_cert: certificate "
                f"verification error at depth {depth}: {msg}:TLS_error_end",
                "fail_verify_error")
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).upper()
        if "CERTIFICATE_REQUIRED" in reason or "PEER DID NOT RETURN A CERTIFICATE" in reason:
            return ("TLS_error:|268435576:SSL routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_"
                    "CERTIFICATE:TLS_error_end", "no_certificate")
        if "NO_PROTOCOLS_AVAILABLE" in reason or "NO PROTOCOLS AVAILABLE" in reason:
            # a minimum version above the maximum: OpenSSL's name for BoringSSL's error
            return ("TLS_error:|268435736:SSL routines:OPENSSL_internal:NO_SUPPORTED_"
                    "VERSIONS_ENABLED:TLS_error_end", "connection_error")
        return f"TLS_error:|{exc.library or 'SSL routines'}:{reason}:TLS_error_end", \
            "connection_error"
    if isinstance(exc, TimeoutError):
        return "TLS_error:handshake timeout:TLS_error_end", "connection_error"
    return f"TLS_error:{exc}:TLS_error_end", "connection_error"


def parse_transport_socket(f: Fields | None, server: bool) -> TlsTransport | None:
    """A ``TransportSocket``: None for raw_buffer (or none), a TlsTransport for tls."""
    if f is None:
        return None
    name = f.string("name")
    typed = f.fields("typed_config")
    f.done()
    url = type_url_of(typed) if typed is not None else None
    if url == RAW_BUFFER_TYPE or (url is None and name == RAW_BUFFER):
        if typed is not None:
            typed.done()
        return None
    want = DOWNSTREAM if server else UPSTREAM
    if url != want or typed is None:
        where = "a filter chain" if server else "a cluster"
        raise ConfigError(f.path, f"unsupported transport socket {name!r} ({url}) on {where}",
                          f"remora reads raw_buffer and {TLS_NAME} with "
                          f"{want.rsplit('.', 1)[-1]} here")
    t = TlsTransport(server=server, raw={}, path=typed.at("common_tls_context"))
    if server:
        t.require_client_certificate = bool(typed.boolean("require_client_certificate", False))
        typed.ignore("disable_stateless_session_resumption", "disable_stateful_session_resumption")
    else:
        t.sni = typed.string("sni") or None
        keys = typed.integer("max_session_keys")
        t.max_session_keys = 1 if keys is None else int(keys)
    common = typed.fields("common_tls_context", "CommonTlsContext")
    typed.done()
    if common is None:
        raise ConfigError(typed.at("common_tls_context"), "required field is missing")
    t.raw = common.obj
    t.alpn = tuple(common.raw("alpn_protocols", []) or ())
    params = common.fields("tls_params", "TlsParameters")
    if params is not None:
        t.min_version = _VERSIONS[params.enum("tls_minimum_protocol_version", tuple(_VERSIONS),
                                              "TLS_AUTO")]
        t.max_version = _VERSIONS[params.enum("tls_maximum_protocol_version", tuple(_VERSIONS),
                                              "TLS_AUTO")]
        curves = params.raw("ecdh_curves", [])
        if curves:
            if not isinstance(curves, list) or not all(isinstance(x, str) for x in curves):
                raise ConfigError(params.at("ecdh_curves"), "ecdh_curves must be a list of "
                                  "curve names", "write e.g. [X25519, P-256]")
            t.curves = ":".join(curves)
            # a name neither library knows is refused with the config, as Envoy does
            if not cipher_order.set_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), t.curves):
                raise ConfigError(params.at("ecdh_curves"),
                                  f"Failed to initialize ECDH curves {t.curves}",
                                  "name curves as BoringSSL does: X25519, P-256, P-384, P-521")
        suites = params.raw("cipher_suites", [])
        if suites:
            if not isinstance(suites, list) or not all(isinstance(x, str) for x in suites):
                raise ConfigError(params.at("cipher_suites"), "cipher_suites must be a list "
                                  "of cipher names", "write e.g. [ECDHE-ECDSA-AES128-GCM-SHA256]")
            # joined with ":" and read with BoringSSL's rules, as Envoy (cipher_list.py);
            # refused where Envoy refuses the config, with its message
            try:
                t.ciphers = cipher_list.openssl_ciphers(suites)
            except cipher_list.CipherListError as e:
                raise ConfigError(params.at("cipher_suites"), str(e),
                                  cipher_list.fix_hint(suites)) from None
            if server and t.ciphers is not None:
                t.cipher_groups = tuple(
                    tuple(g) for g in cipher_list.equal_preference_groups(suites))
        params.done()
    # Check every field now (ConfigError names it); a file not written yet (SDS) is
    # read again by the first handshake.
    with contextlib.suppress(TlsError):
        t._material()
    return t


# an upstream handshake's limit (Envoy's cluster connect_timeout, whose timer ends with
# the TLS handshake, covers it there)
HANDSHAKE_TIMEOUT = 10.0
# a downstream handshake's without the filter chain's transport_socket_connect_timeout:
# none (observed on Envoy 1.40: a client that sends nothing, or part of a ClientHello, is
# kept past 14 s), which the loops spell as a limit no connection reaches
NO_TIMEOUT = 1e9
# the loops' words when ssl_handshake_timeout ends a handshake (sslproto)
_TIMED_OUT = "SSL handshake is taking longer than"


async def _tls_over_tcp(
    sock: socket.socket, ctx: ssl.SSLContext, protocol: asyncio.BaseProtocol, *,
    server_side: bool, server_hostname: str | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> asyncio.Transport:
    """A half-closing TLS connection on SOCK for PROTOCOL: a TCP transport whose protocol
    is a _TcpUnderTls, TLS started over it (loop.start_tls, the SSLProtocol the loop's
    own), then the _TcpUnderTls put back under the SSLProtocol, so a FIN reaches
    _HalfClose instead of closing the connection. What the connection's other TLS
    transports do in one step (connect_accepted_socket / create_connection with ssl=);
    only tcp_proxy's connections (Handshake.half_close) come here, the HTTP path keeps
    that one step and the loop's direct TCP-to-SSLProtocol reads."""
    loop = asyncio.get_running_loop()
    under = _TcpUnderTls()
    if server_side:
        raw, _ = await loop.connect_accepted_socket(lambda: under, sock=sock)
    else:
        raw, _ = await loop.create_connection(lambda: under, sock=sock)
    raw.pause_reading()
    if under.lost is not None:
        raw.abort()
        raise ConnectionResetError(str(under.lost))
    # start_tls makes its SSLProtocol the transport's protocol before it awaits, and
    # schedules the protocol's connection_made (the handshake) and the transport's
    # resume_reading; hand_over, scheduled before them, gives it what was read so far
    loop.call_soon(under.hand_over, raw)
    try:
        tr = await loop.start_tls(raw, protocol, ctx, server_side=server_side,
                                  server_hostname=server_hostname,
                                  ssl_handshake_timeout=timeout)
    except BaseException:
        raw.abort()
        raise
    if tr is None:  # the transport closed meanwhile (asyncio returns None then)
        raw.abort()
        raise ConnectionResetError("connection closed in the handshake")
    half = _half_of(tr)
    if half is not None:
        under.attach(raw.get_protocol(), half, tr)
        raw.set_protocol(under)
    # start_tls leaves it to the caller (call_connection_made=False)
    protocol.connection_made(tr)
    return tr


async def accept_downstream(
    conn: socket.socket, transport: TlsTransport, limit: int, half_close: bool = False,
    timeout: float | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, PeerInfo, str | None]:
    """Server-side handshake on an accepted socket (tls_inspector only peeked, so the
    ClientHello is still there). Returns the streams, the peer and the negotiated ALPN.
    HALF_CLOSE: for a chain with tcp_proxy (_HalfClose), set before the handshake, so a
    close_notify that comes before the filter starts is kept for it. TIMEOUT: the filter
    chain's transport_socket_connect_timeout (None: the handshake may take any time).
    Raises TlsError with Envoy's failure reason (``timed_out`` when TIMEOUT ended it)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    protocol = asyncio.StreamReaderProtocol(reader)
    # the handshake's alert and SAN check inside OpenSSL (handshake.py)
    hs = handshake.Handshake(conn.fileno(), half_close=half_close)
    token = handshake.HANDSHAKE.set(hs)
    try:
        ctx = transport.context()
        hs.check = transport.san_check(ctx)
        # of the certificate this handshake uses
        local_uri_sans, local_der = transport.local_uri_sans, transport.local_der
        limit_s = timeout or NO_TIMEOUT
        if half_close:
            tr = await _tls_over_tcp(conn, ctx, protocol, server_side=True, timeout=limit_s)
        else:
            tr, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock=conn, ssl=ctx, ssl_handshake_timeout=limit_s)
    except (OSError, TlsError, TimeoutError) as exc:
        if timeout and isinstance(exc, (ConnectionAbortedError, TimeoutError)) \
                and str(exc).startswith(_TIMED_OUT):
            # Envoy's transport socket timeout: no ssl.* counter and no failure reason,
            # the listener's downstream_cx_transport_socket_connect_timeout and the
            # termination details (observed on 1.40)
            raise TlsError("", "", _failed_connection(hs, transport.local_der, ""),
                           timed_out=True) from exc
        if hs.failure is not None:
            reason, stat = hs.failure, "fail_verify_san"
        elif not isinstance(exc, TlsError) and (
                not hs.received or not isinstance(exc, ssl.SSLError)
                or isinstance(exc, ssl.SSLEOFError)):
            # closed before sending a byte, or in the middle of the handshake (its TCP
            # end, not a TLS error): Envoy counts no ssl.* error and has no failure
            # reason for it, BoringSSL's error queue being empty (observed on 1.40: a
            # plain-text client that connects and closes, or waits and closes; one
            # that sends part of a ClientHello and closes)
            reason, stat = "", ""
        else:
            reason, stat = failure_reason(exc, server=True, depth=hs.error_depth, hs=hs)
        # no local name for the error: it would hold this frame through its traceback
        # and the frame it, a cycle keeping the connection's socket and transport until
        # the collector ran (a later connection given the same fd failed with EEXIST)
        raise TlsError(reason, stat,
                       _failed_connection(hs, transport.local_der, reason)) from exc
    finally:
        handshake.HANDSHAKE.reset(token)
    writer = asyncio.StreamWriter(tr, protocol, reader, loop)
    sslobj = tr.get_extra_info("ssl_object")
    try:
        peer = transport.verify_peer(sslobj, hs.checked)
    except TlsError:
        tr.abort()
        raise
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if der:
        peer.tls = TlsPeer(der, _downstream_chain(sslobj, der), local_uri_sans)
        try:  # once per connection: RBAC's principal_name falls back to it
            peer.subject = subject_rfc2253(der)
        except (ValueError, IndexError):  # BoringSSL parsed it; our DER walker could not
            log.debug("peer certificate subject not read")
    peer.connection = TlsConnectionInfo(sslobj, peer.tls, local_der)
    alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
    return reader, writer, peer, alpn


def apply_peer(facts: Any, peer: PeerInfo, info: StreamInfo | None = None) -> None:
    """Record the TLS connection and its peer certificate in ConnectionFacts (RBAC reads
    them) and in the connection's StreamInfo INFO (the access log's TLS operators)."""
    if info is not None:
        info.downstream_tls = peer.connection
    facts.tls_established = True
    facts.peer_uri_sans = peer.uri_sans
    facts.peer_dns_sans = peer.dns_sans
    facts.peer_subject = peer.subject
    facts.tls_peer = peer.tls


def verify_san_list(sslobj: ssl.SSLObject | ssl.SSLSocket | None,
                    expected: tuple[str, ...]) -> None:
    """A request's SAN list override (auto_san_validation, upstream/auto_host.py): one of
    the peer certificate's SANs must match one of EXPECTED -- a DNS SAN by Envoy's
    dnsNameMatch (case-insensitive, ``*.`` wildcards), any other kind exactly
    (DefaultCertValidator::verifySubjectAltName). Envoy checks it even without a
    trusted_ca (the override makes it SSL_VERIFY_PEER), so the SANs are read from the
    certificate's bytes, which ``ssl`` gives unverified too. Raises TlsError with Envoy
    1.40's reason (observed)."""
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    sans: tuple[tuple[int, str], ...] = ()
    if der:
        with contextlib.suppress(ValueError, IndexError):
            sans = all_sans(der)
    for tag, value in sans:
        for want in expected:
            if dns_name_match(want, value) if tag == _DNS_TAG else want == value:
                return
    if not der:
        raise TlsError(f"{VERIFY_FAILED}:verify cert failed: empty cert chain:TLS_error_end",
                       "fail_verify_error")
    raise TlsError(f"{VERIFY_FAILED}:verify cert failed: verify SAN list, expected SANs: "
                   f"[{', '.join(expected)}], certificate SANs: "
                   f"[{', '.join(v for _, v in sans)}]:TLS_error_end", "fail_verify_san")


_DNS_TAG = 0x82


async def connect_upstream(
    sock: socket.socket, transport: TlsTransport,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    override: TlsOverride | None = None,
) -> tuple[asyncio.Transport, PeerInfo, str | None]:
    """Client-side handshake on a connected socket: SNI, ALPN, then the SAN checks (a
    request's OVERRIDE: its auto_sni server name and auto_san_validation SAN list first,
    as Envoy's ClientContextImpl::newSsl and DefaultCertValidator apply them).
    Raises TlsError with Envoy's failure reason (the socket is closed)."""
    loop = asyncio.get_running_loop()
    sni = transport.sni or ""
    if override is not None and override.sni:
        sni = override.sni
    # the handshake's alert and SAN check inside OpenSSL (handshake.py); a request's SAN
    # list override is checked after the handshake, before the configured matchers
    hs = handshake.Handshake(sock.fileno(), half_close=handshake.HALF_CLOSE.get())
    token = handshake.HANDSHAKE.set(hs)
    try:
        ctx = transport.context()
        if override is None or not override.sans:
            hs.check = transport.san_check(ctx)
        hs.session = transport.session(sni)
        local_der = transport.local_der  # of the certificate this handshake uses
        if hs.half_close:
            tr = await _tls_over_tcp(sock, ctx, protocol_factory(), server_side=False,
                                     server_hostname=sni)
        else:
            tr, _ = await loop.create_connection(
                protocol_factory, sock=sock, ssl=ctx, server_hostname=sni,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
    except (OSError, TlsError, TimeoutError) as exc:
        sock.close()
        if hs.failure is not None:
            raise TlsError(hs.failure, "fail_verify_san") from exc
        if isinstance(exc, (ConnectionError, ssl.SSLEOFError)):
            # the server closed (or reset) the connection in the handshake, without an
            # alert: BoringSSL's error queue is empty, and Envoy has no failure reason
            # (observed on 1.40: tcp_proxy logs UF,URX and "-")
            raise TlsError("", "") from exc
        reason, stat = failure_reason(exc, depth=hs.error_depth)
        raise TlsError(reason, stat) from exc
    finally:
        handshake.HANDSHAKE.reset(token)
    sslobj = tr.get_extra_info("ssl_object")
    try:
        if override is not None and override.sans:
            verify_san_list(sslobj, override.sans)
        peer = transport.verify_peer(sslobj, hs.checked)
    except TlsError:
        tr.abort()
        raise
    transport.handshake_done(sni, sslobj)
    # the access log's UPSTREAM_* TLS operators: the server's certificate and the chain
    # it sent, and the local (client) certificate of the context the handshake used
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    peer.connection = TlsConnectionInfo(
        sslobj, TlsPeer(der, _peer_chain(sslobj), ()) if der else None, local_der)
    alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
    return tr, peer, alpn
