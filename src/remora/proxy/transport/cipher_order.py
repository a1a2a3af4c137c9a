"""Who picks the cipher suite, as BoringSSL does in Envoy: the server's list for TLS 1.2,
the client's order for TLS 1.3.

BoringSSL (ssl_choose_tls13_cipher) honours the client's order for TLS 1.3 ("TLS 1.3
removes legacy ciphers, so honor the client order"), and the server's configured order for
TLS 1.2. OpenSSL applies one rule, SSL_OP_CIPHER_SERVER_PREFERENCE, to both versions, and
``ssl`` offers nothing per version: with the server's order an Envoy sidecar (BoringSSL,
AES128-GCM first) got ``TLS_AES_256_GCM_SHA384`` from remora and
``TLS_AES_128_GCM_SHA256`` from Envoy (observed on Envoy 1.40: %DOWNSTREAM_TLS_CIPHER%).

So a server context keeps the server's order and gets OpenSSL's client-hello callback
(SSL_CTX_set_client_hello_cb, which runs before the cipher is chosen), through ctypes on
the libssl that ``_ssl`` uses: when the ClientHello offers TLS 1.3 (supported_versions
holds 0x0304) and the context allows it, that connection drops the server-order option.
The SSL_CTX pointer is read from the SSLContext object (CPython's PySSLContext starts
with it) and used only after SSL_CTX_get_options through it returns the context's own
options; anything unexpected leaves the context as it was (the server's order for both
versions, the behaviour before).
"""

from __future__ import annotations

import ctypes
import logging
import ssl
from typing import Any

log = logging.getLogger("remora.proxy")

_SUPPORTED_VERSIONS = 43  # TLS extension type (RFC 8446 4.2.1)
_TLS13 = b"\x03\x04"
_SUCCESS = 1  # SSL_CLIENT_HELLO_SUCCESS

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                             ctypes.c_void_p)


class _LibSsl:
    """The few libssl functions used, bound once; None when they cannot be."""

    def __init__(self) -> None:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        self.ctx_get_options = lib.SSL_CTX_get_options
        self.ctx_get_options.restype = ctypes.c_uint64
        self.ctx_get_options.argtypes = [ctypes.c_void_p]
        self.set_client_hello_cb = lib.SSL_CTX_set_client_hello_cb
        self.set_client_hello_cb.restype = None
        self.set_client_hello_cb.argtypes = [ctypes.c_void_p, _CALLBACK, ctypes.c_void_p]
        self.get0_ext = lib.SSL_client_hello_get0_ext
        self.get0_ext.restype = ctypes.c_int
        self.get0_ext.argtypes = [ctypes.c_void_p, ctypes.c_uint,
                                  ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte)),
                                  ctypes.POINTER(ctypes.c_size_t)]
        self.clear_options = lib.SSL_clear_options
        self.clear_options.restype = ctypes.c_uint64
        self.clear_options.argtypes = [ctypes.c_void_p, ctypes.c_uint64]


_lib: _LibSsl | None = None
_lib_failed = False


def _libssl() -> _LibSsl | None:
    global _lib, _lib_failed
    if _lib is None and not _lib_failed:
        try:
            _lib = _LibSsl()
        except (OSError, AttributeError) as exc:
            _lib_failed = True
            log.debug("libssl client-hello callback unavailable: %s", exc)
    return _lib


def offers_tls13(supported_versions: bytes) -> bool:
    """Whether a ClientHello's supported_versions extension body (a one-byte length, then
    two-byte versions) lists TLS 1.3."""
    versions = supported_versions[1:1 + supported_versions[:1][0]] \
        if supported_versions else b""
    return any(versions[i:i + 2] == _TLS13 for i in range(0, len(versions) - 1, 2))


def _on_client_hello(ssl_ptr: int | None, _alert: Any, _arg: int | None) -> int:
    lib = _lib
    if lib is None or not ssl_ptr:
        return _SUCCESS
    try:
        out = ctypes.POINTER(ctypes.c_ubyte)()
        size = ctypes.c_size_t()
        if lib.get0_ext(ssl_ptr, _SUPPORTED_VERSIONS, ctypes.byref(out), ctypes.byref(size)):
            body = ctypes.string_at(out, size.value)
            if offers_tls13(body):
                lib.clear_options(ssl_ptr, ssl.OP_CIPHER_SERVER_PREFERENCE)
    except Exception:  # a callback must not raise into OpenSSL; the server's order stays
        log.debug("client-hello callback failed", exc_info=True)
    return _SUCCESS


_callback = _CALLBACK(_on_client_hello)  # kept alive: OpenSSL holds the pointer


def client_order_for_tls13(ctx: ssl.SSLContext) -> bool:
    """Give the server context CTX BoringSSL's rule (above); whether it was installed."""
    if ctx.maximum_version not in (ssl.TLSVersion.MAXIMUM_SUPPORTED, ssl.TLSVersion.TLSv1_3):
        return False  # no TLS 1.3: the server's order is the whole rule
    lib = _libssl()
    if lib is None:
        return False
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr or lib.ctx_get_options(ptr) != ctx.options:
        log.debug("SSLContext layout not recognised: the server's cipher order stays")
        return False
    lib.set_client_hello_cb(ptr, _callback, None)
    return True
