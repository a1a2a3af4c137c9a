"""What one TLS handshake needs from its connection inside OpenSSL: the socket to send a
failing handshake's alert on, the SAN check to run while the peer's certificate is
verified, as BoringSSL runs Envoy's (DefaultCertValidator, from its verify callback), and
a client's session to resume (uvloop's SSLProtocol creates the SSLObject without one).

uvloop's SSLProtocol drives the handshake on its own memory BIOs and, when the handshake
fails, closes the transport without flushing the alert OpenSSL wrote to the outgoing BIO,
so the peer saw a bare close where Envoy's peer reads the alert. And ``ssl`` has no verify
callback, so the SAN matchers ran after the handshake had completed: a refused
certificate cost the peer a completed handshake and a close instead of Envoy's
certificate_unknown alert.

The TLS transport (tls.py) sets ``HANDSHAKE`` to a ``Handshake`` for the connection
before it starts the handshake; uvloop runs the connection's callbacks (and so OpenSSL's
calls into the SSLObject and the verify callback) in a copy of the task's context, so
each handshake reads its own. The verify callback is OpenSSL's (SSL_CTX_set_verify,
through ctypes on the libssl ``_ssl`` links, as cipher_order.py installs the client-hello
callback): at depth 0, once OpenSSL's own checks passed, the leaf's DER goes to the
handshake's check; a refusal fails the verification with an X509 error ssl_x509err2alert
has no entry for, so OpenSSL sends certificate_unknown, the alert BoringSSL sends for
Envoy's failed SAN match. Where the callback cannot be installed, tls.py checks the SANs
after the handshake, as before. Every verifying context has it: where OpenSSL refuses a
certificate, the callback keeps the depth for the failure reason Envoy logs ("certificate
verification error at depth 1: ...", which ``ssl``'s exception does not tell).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import logging
import os
import ssl
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from remora.proxy.transport import cipher_order

log = logging.getLogger("remora.proxy")


@dataclass(slots=True)
class Handshake:
    """One connection's handshake: its socket's fd, the SAN check of the peer's leaf
    certificate (DER -> None when it passes, else the failure reason), and what the check
    concluded (``checked``: it ran in the handshake; ``failure``: its reason)."""

    fd: int
    check: Callable[[bytes], str | None] | None = None
    checked: bool = False
    failure: str | None = None
    # a client's session to resume (the context's last one: tls.TlsTransport.session)
    session: ssl.SSLSession | None = None
    # the connection serves a filter that half-closes (tcp_proxy): a close_notify is
    # passed on as an end of stream, and the connection can send its own (tls.py)
    half_close: bool = False
    # a byte of the peer's reached the handshake: a peer gone before its first byte is
    # no TLS error for Envoy (no ssl.* counter, no transport failure reason)
    received: bool = False
    # where OpenSSL's chain verification failed (the verify callback): Envoy's failure
    # reason names it ("certificate verification error at depth 1: ...")
    error_depth: int = 0
    # what a failed handshake got to, for the access log's TLS operators (Envoy's
    # ConnectionInfo reads the SSL object whatever became of its handshake): the version
    # and cipher chosen ("" where none was), the peer certificate OpenSSL refused and the
    # chain it came with (leaf first), read by failed() and the verify callback
    version: str = ""
    cipher: str = ""
    peer_der: bytes | None = None
    peer_chain: tuple[bytes, ...] = ()
    # the ClientHello's supported_groups (TLS group ids; None: no ClientHello read yet,
    # () none sent) and the curve group of the local certificate's EC key (0: none), for
    # the failure reason BoringSSL gives a TLS 1.2 client (failure_reason)
    client_groups: tuple[int, ...] | None = None
    local_group: int = 0


HANDSHAKE: contextvars.ContextVar[Handshake | None] = contextvars.ContextVar(
    "remora_tls_handshake", default=None)
# set by tcp_proxy around its upstream connect: the upstream TLS connection it opens
# half-closes (Handshake.half_close), as Envoy's tcp_proxy enables half-close on both
HALF_CLOSE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "remora_tls_half_close", default=False)


def alerting(handshake: Callable[[], None], incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
             hs: Handshake, inner: Any = None) -> Callable[[], None]:
    """An SSLObject's do_handshake that sends the alert a failed handshake leaves in the
    outgoing BIO before raising (handshake_failure for no shared cipher,
    certificate_required, decrypt_error, certificate_unknown for a refused SAN...), as
    BoringSSL's is sent in Envoy. Written straight to the socket: the earlier flights
    went out as uvloop wrote them (a fresh connection's send buffer takes them at once),
    and uvloop closes the socket right after. INNER (the SSLObject's ``_ssl._SSLSocket``,
    which holds no strong reference back to the SSLObject): what the handshake got to is
    read from it then (failed)."""
    fd = hs.fd

    def do_handshake() -> None:
        if incoming.pending:
            hs.received = True
        try:
            handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            alert = outgoing.read()
            # a client without a usable version fails before its ClientHello: BoringSSL
            # sends nothing then, where OpenSSL writes an alert (the server would read an
            # unexpected message instead of Envoy's bare close)
            if alert and exc.reason != "NO_PROTOCOLS_AVAILABLE":
                with contextlib.suppress(OSError):
                    os.write(fd, alert)
            if inner is not None:
                failed(inner, hs)
            raise
    return do_handshake


# -- the verify callback ------------------------------------------------------------------
_VERIFY = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_X509_V_ERR_PERMITTED_VIOLATION = 47  # x509_vfy.h


class _Lib:
    def __init__(self) -> None:
        f, ptr, i = cipher_order.libssl_function, ctypes.c_void_p, ctypes.c_int
        self.get_verify_mode = f("SSL_CTX_get_verify_mode", i, ptr)
        self.set_verify = f("SSL_CTX_set_verify", None, ptr, i, _VERIFY)
        self.depth = f("X509_STORE_CTX_get_error_depth", i, ptr)
        self.current_cert = f("X509_STORE_CTX_get_current_cert", ptr, ptr)
        self.set_error = f("X509_STORE_CTX_set_error", None, ptr, i)
        self.i2d = f("i2d_X509", i, ptr, ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte)))
        self.target = f("X509_STORE_CTX_get0_cert", ptr, ptr)
        self.untrusted = f("X509_STORE_CTX_get0_untrusted", ptr, ptr)
        self.sk_num = f("OPENSSL_sk_num", i, ptr)
        self.sk_value = f("OPENSSL_sk_value", ptr, ptr, i)


_libssl = cipher_order.load_once(_Lib, "libssl verify callback")


def _der(lib: _Lib, cert: int | None) -> bytes | None:
    if not cert:
        return None
    size = lib.i2d(cert, None)
    if size <= 0:
        return None
    buf = (ctypes.c_ubyte * size)()
    out = ctypes.cast(buf, ctypes.POINTER(ctypes.c_ubyte))
    if lib.i2d(cert, ctypes.byref(out)) != size:
        return None
    return bytes(buf)


def _leaf_der(lib: _Lib, store: int) -> bytes | None:
    return _der(lib, lib.current_cert(store))


def _refused(lib: _Lib, store: int, hs: Handshake) -> None:
    """Keep the certificate OpenSSL or the SAN check refused and the chain the peer sent
    with it (the verification's untrusted stack, leaf first): BoringSSL keeps them in the
    handshake's session, so Envoy 1.40 logs %DOWNSTREAM_PEER_FINGERPRINT_256%,
    _URI_SAN, _ISSUER, _CHAIN_SERIALS... of a refused client certificate (observed)."""
    if hs.peer_der is not None:
        return
    hs.peer_der = _der(lib, lib.target(store))
    chain = lib.untrusted(store)
    if chain:
        found = (_der(lib, lib.sk_value(chain, i)) for i in range(lib.sk_num(chain)))
        hs.peer_chain = tuple(der for der in found if der is not None)


def _on_verify(ok: int, store: int | None) -> int:
    # OpenSSL's verdict stands where it refused (its X509 error gives the alert and the
    # failure reason, whose depth is kept here) and above the leaf; at the leaf, the
    # handshake's SAN check
    if not store:
        return ok
    hs = HANDSHAKE.get()
    lib = _libssl()  # made already: the callback is installed only through it
    if not ok:
        if hs is not None and lib is not None:
            with contextlib.suppress(Exception):  # never into OpenSSL
                hs.error_depth = int(lib.depth(store))
                _refused(lib, store, hs)
        return ok
    if hs is None or hs.check is None or lib is None or lib.depth(store) != 0:
        return ok
    try:
        der = _leaf_der(lib, store)
        if der is None:
            return ok  # checked after the handshake instead (checked stays False)
        hs.failure = hs.check(der)
        hs.checked = True
    except Exception:  # never into OpenSSL: the check after the handshake decides
        log.debug("verify callback failed", exc_info=True)
        return ok
    if hs.failure is None:
        return 1
    with contextlib.suppress(Exception):
        _refused(lib, store, hs)
    # an X509 error OpenSSL has no alert for (ssl_x509err2alert), so it sends
    # certificate_unknown, as BoringSSL does for Envoy's failed SAN match (observed on
    # 1.40); without an error OpenSSL 3 reports X509_V_ERR_UNSPECIFIED, internal_error.
    # "permitted subtree violation": a name outside what the matchers permit
    lib.set_error(store, _X509_V_ERR_PERMITTED_VIOLATION)
    return 0


_callback = _VERIFY(_on_verify)  # kept alive: OpenSSL holds the pointer
_installed: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()


def verifies(ctx: ssl.SSLContext) -> bool:
    """Whether CTX has the verify callback (install_verify)."""
    return ctx in _installed


def install_verify(ctx: ssl.SSLContext) -> bool:
    """Give CTX (its verify_mode set) the verify callback; whether it was installed."""
    lib = _libssl()
    order = cipher_order._libssl()
    if lib is None or order is None:
        return False
    ptr = cipher_order._ctx_pointer(ctx, order)
    if ptr is None:
        return False
    lib.set_verify(ptr, lib.get_verify_mode(ptr), _callback)
    _installed.add(ctx)
    return True


# -- close_notify -------------------------------------------------------------------------
class _Shutdown:
    def __init__(self) -> None:
        f = cipher_order.libssl_function
        self.shutdown = f("SSL_shutdown", ctypes.c_int, ctypes.c_void_p)
        self.clear_errors = f("ERR_clear_error", None)


_shutdown = cipher_order.load_once(_Shutdown, "libssl SSL_shutdown")


def _ssl_pointer(obj: ssl.SSLObject) -> int | None:
    """The SSL address of OBJ's ``_ssl._SSLSocket`` (_inner_pointer); None otherwise."""
    inner = getattr(obj, "_sslobj", None)
    return _inner_pointer(inner) if inner is not None else None


def _inner_pointer(inner: Any) -> int | None:
    """The SSL address of the ``_ssl._SSLSocket`` INNER (CPython's PySSLSocket: the object
    header, the socket weakref, then the SSL pointer), once SSL_get_SSL_CTX through it
    gives its context's SSL_CTX; None otherwise."""
    order = cipher_order._libssl()
    context = getattr(inner, "context", None)
    if order is None or not isinstance(context, ssl.SSLContext):
        return None
    ctx_ptr = cipher_order._ctx_pointer(context, order)
    ptr = ctypes.c_void_p.from_address(
        id(inner) + object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)).value
    if not ptr or ctx_ptr is None or order.get_ssl_ctx(ptr) != ctx_ptr:
        log.debug("SSLObject layout not recognised")
        return None
    return int(ptr)


def send_close_notify(obj: ssl.SSLObject) -> None:
    """Write OBJ's close_notify to its outgoing BIO and leave the read side open: one
    SSL_shutdown, as BoringSSL's in Envoy's SslSocket::shutdownSsl. ``SSLObject.unwrap``
    calls SSL_shutdown a second time when the first returns 0 (close_notify sent, the
    peer's not yet read), and that call reads from the incoming BIO for the peer's,
    where OpenSSL discards application data once it has sent its close_notify
    (ssl3_read_bytes); it is the fallback where libssl cannot be reached that way."""
    lib = _shutdown()
    ptr = _ssl_pointer(obj) if lib is not None else None
    if lib is None or ptr is None:
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
            obj.unwrap()
        return
    if lib.shutdown(ptr) < 0:  # nothing was sent (a fatal alert went out before)
        lib.clear_errors()  # not left for the next _ssl call to report


# -- what a failed handshake got to ---------------------------------------------------------
# SSL_version's wire versions as SSL_get_version names them
_VERSION_NAMES = {0x0304: "TLSv1.3", 0x0303: "TLSv1.2", 0x0302: "TLSv1.1", 0x0301: "TLSv1"}
# TLS group ids (RFC 8446 4.2.7) of the EC curves a certificate's key can be on, by the
# name EVP_PKEY_get_group_name gives
_CURVE_GROUPS = {"prime256v1": 23, "P-256": 23, "secp384r1": 24, "P-384": 24,
                 "secp521r1": 25, "P-521": 25}


class _Failed:
    def __init__(self) -> None:
        f, ptr, i = cipher_order.libssl_function, ctypes.c_void_p, ctypes.c_int
        self.version = f("SSL_version", i, ptr)
        self.current_cipher = f("SSL_get_current_cipher", ptr, ptr)
        self.pending_cipher = f("SSL_get_pending_cipher", ptr, ptr)
        self.cipher_name = f("SSL_CIPHER_get_name", ctypes.c_char_p, ptr)
        self.certificate = f("SSL_get_certificate", ptr, ptr)
        self.pubkey = f("X509_get0_pubkey", ptr, ptr)
        self.group_name = f("EVP_PKEY_get_group_name", i, ptr, ctypes.c_char_p,
                            ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t))


_failed_lib = cipher_order.load_once(_Failed, "libssl handshake state")


def failed(inner: Any, hs: Handshake) -> None:
    """Note in HS what the failed handshake of INNER (an ``_ssl._SSLSocket``) got to: the
    version (SSL_version; before a ClientHello was read, the client-hello callback never
    ran, OpenSSL reports the context's highest version where BoringSSL's SSL_get_version
    says TLSv1.2, as Envoy 1.40 logs for a plain-text client, observed), the cipher
    chosen (SSL_get_current_cipher, or the one chosen for the handshake,
    SSL_get_pending_cipher) and the curve of the local certificate's key. Nothing where
    libssl cannot be reached that way."""
    lib = _failed_lib()
    try:
        ptr = _inner_pointer(inner) if lib is not None else None
        if lib is None or ptr is None:
            return
        hs.version = "TLSv1.2" if hs.client_groups is None else \
            _VERSION_NAMES.get(lib.version(ptr), "TLSv1.2")
        cipher = lib.current_cipher(ptr) or lib.pending_cipher(ptr)
        name = lib.cipher_name(cipher) if cipher else None
        hs.cipher = name.decode() if name else ""
        cert = lib.certificate(ptr)
        key = lib.pubkey(cert) if cert else None
        if key:
            buf = ctypes.create_string_buffer(64)
            size = ctypes.c_size_t()
            if lib.group_name(key, buf, len(buf), ctypes.byref(size)) == 1:
                hs.local_group = _CURVE_GROUPS.get(buf.value.decode(), 0)
    except Exception:  # only the access log's values are missing
        log.debug("failed handshake state not read", exc_info=True)


_SUPPORTED_GROUPS = 10  # TLS extension type (RFC 8446 4.2.7)


def _on_client_hello(ssl_ptr: int, lib: Any) -> None:
    """cipher_order's client-hello callback, for each server handshake: the client's
    supported_groups (failure_reason tells WRONG_CURVE from NO_SHARED_CIPHER by them)."""
    hs = HANDSHAKE.get()
    if hs is None:
        return
    out = ctypes.POINTER(ctypes.c_ubyte)()
    size = ctypes.c_size_t()
    groups: tuple[int, ...] = ()
    if lib.get0_ext(ssl_ptr, _SUPPORTED_GROUPS, ctypes.byref(out), ctypes.byref(size)):
        body = ctypes.string_at(out, size.value)[2:]
        groups = tuple(int.from_bytes(body[i:i + 2], "big") for i in range(0, len(body) - 1, 2))
    hs.client_groups = groups


cipher_order.hello_hook = _on_client_hello
