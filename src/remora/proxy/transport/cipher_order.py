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

The same callback gives TLS 1.2 BoringSSL's equal-preference groups (``[A|B]`` in
tls_params.cipher_suites and in Envoy's default server list; cipher_list.py): under
server preference BoringSSL's ssl_choose_cipher takes, from the first group holding a
cipher the client offers, the one the client lists first. OpenSSL has no groups, so for a
context with groups the callback reads the client's cipher list
(SSL_client_hello_get0_ciphers) and gives the connection its own list
(SSL_set_cipher_list) with each group's ciphers in the client's order; the server's order
then picks as BoringSSL does (observed on Envoy 1.40: a client listing CHACHA20-POLY1305
before AES128-GCM gets CHACHA20-POLY1305 from the default list,
test_cipher_suites_envoy_parity.py).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import ssl
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("remora.proxy")
L = TypeVar("L")

_SUPPORTED_VERSIONS = 43  # TLS extension type (RFC 8446 4.2.1)
_TLS13 = b"\x03\x04"
_SUCCESS = 1  # SSL_CLIENT_HELLO_SUCCESS

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                             ctypes.c_void_p)


@functools.cache
def _ssl_links() -> ctypes.CDLL:
    """The libssl the ``_ssl`` extension links (the one whose SSL_CTX/SSL the ssl module's
    objects hold), opened once."""
    import _ssl

    return ctypes.CDLL(_ssl.__file__)


def libssl_function(name: str, restype: Any, *argtypes: Any) -> Any:
    """libssl's NAME declared with its C result and argument types, a function object of
    the caller's own; OSError or AttributeError where it cannot be had."""
    function = _ssl_links()[name]
    function.restype = restype
    function.argtypes = list(argtypes)
    return function


class _LibSsl:
    """The few libssl functions used, bound once; None when they cannot be."""

    def __init__(self) -> None:
        f, ptr, u64 = libssl_function, ctypes.c_void_p, ctypes.c_uint64
        out_bytes = ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte))
        self.ctx_get_options = f("SSL_CTX_get_options", u64, ptr)
        self.set_client_hello_cb = f("SSL_CTX_set_client_hello_cb", None, ptr, _CALLBACK, ptr)
        self.get0_ext = f("SSL_client_hello_get0_ext", ctypes.c_int, ptr, ctypes.c_uint,
                          out_bytes, ctypes.POINTER(ctypes.c_size_t))
        self.clear_options = f("SSL_clear_options", u64, ptr, u64)
        self.get_ssl_ctx = f("SSL_get_SSL_CTX", ptr, ptr)
        self.get0_ciphers = f("SSL_client_hello_get0_ciphers", ctypes.c_size_t, ptr, out_bytes)
        self.set_cipher_list = f("SSL_set_cipher_list", ctypes.c_int, ptr, ctypes.c_char_p)


@dataclass(frozen=True)
class _Rule:
    """What the callback does for the connections of one context."""

    tls13: bool  # the client's order when it offers TLS 1.3
    names: tuple[str, ...] = ()  # the context's TLS 1.2 ciphers, in its order
    group_of: tuple[int | None, ...] = ()  # each one's equal-preference group
    ids: tuple[int, ...] = ()  # each one's IANA number


_rules: dict[int, _Rule] = {}  # SSL_CTX address -> its rule (while the context lives)


def load_once(factory: Callable[[], L], what: str) -> Callable[[], L | None]:
    """A function giving FACTORY's libssl bindings, made on its first call and kept; None
    from then on where libssl cannot be reached that way (said once, at debug level, as
    WHAT unavailable). Each set of bindings here and in handshake.py is one of these."""

    @functools.cache
    def bindings() -> L | None:
        try:
            return factory()
        except (OSError, AttributeError) as exc:
            log.debug("%s unavailable: %s", what, exc)
            return None

    return bindings


_libssl = load_once(_LibSsl, "libssl client-hello callback")
# called with (SSL pointer, the bound functions) for every ClientHello a server context
# with the callback reads, before its rule: handshake.py notes the client's groups
hello_hook: Callable[[int, _LibSsl], None] | None = None


def offers_tls13(supported_versions: bytes) -> bool:
    """Whether a ClientHello's supported_versions extension body (a one-byte length, then
    two-byte versions) lists TLS 1.3."""
    versions = supported_versions[1:1 + supported_versions[:1][0]] \
        if supported_versions else b""
    return any(versions[i:i + 2] == _TLS13 for i in range(0, len(versions) - 1, 2))


def group_order(rule: _Rule, offered: bytes) -> list[str]:
    """RULE's cipher list with each equal-preference group in the order of OFFERED (the
    ClientHello's cipher_suites, two bytes each); ciphers it does not offer keep their
    place after those it does."""
    rank: dict[int, int] = {}
    for i in range(0, len(offered) - 1, 2):
        rank.setdefault(int.from_bytes(offered[i:i + 2], "big"), i)
    out: list[str] = []
    names, groups, ids = rule.names, rule.group_of, rule.ids
    i, n = 0, len(names)
    while i < n:
        group = groups[i]
        j = i + 1
        if group is not None:
            while j < n and groups[j] == group:
                j += 1
        run = sorted(range(i, j), key=lambda k: rank.get(ids[k], len(offered) + k))
        out.extend(names[k] for k in run)
        i = j
    return out


def _on_client_hello(ssl_ptr: int | None, _alert: Any, _arg: int | None) -> int:
    lib = _libssl()  # made already: the callback is installed only through it
    if lib is None or not ssl_ptr:
        return _SUCCESS
    try:
        if hello_hook is not None:
            hello_hook(ssl_ptr, lib)
        rule = _rules.get(lib.get_ssl_ctx(ssl_ptr) or 0)
        out = ctypes.POINTER(ctypes.c_ubyte)()
        size = ctypes.c_size_t()
        if (rule is None or rule.tls13) and lib.get0_ext(
                ssl_ptr, _SUPPORTED_VERSIONS, ctypes.byref(out), ctypes.byref(size)):
            body = ctypes.string_at(out, size.value)
            if offers_tls13(body):
                lib.clear_options(ssl_ptr, ssl.OP_CIPHER_SERVER_PREFERENCE)
                # TLS 1.3 it is (the context allows it): its suites are not the list's,
                # so the TLS 1.2 groups need no order (every sidecar-to-sidecar handshake)
                return _SUCCESS
        if rule is not None and rule.names:
            count = lib.get0_ciphers(ssl_ptr, ctypes.byref(out))
            order = group_order(rule, ctypes.string_at(out, count) if count else b"")
            if tuple(order) != rule.names:
                lib.set_cipher_list(ssl_ptr, ":".join(order).encode())
    except Exception:  # a callback must not raise into OpenSSL; the server's order stays
        log.debug("client-hello callback failed", exc_info=True)
    return _SUCCESS


_callback = _CALLBACK(_on_client_hello)  # kept alive: OpenSSL holds the pointer


def _ctx_pointer(ctx: ssl.SSLContext, lib: _LibSsl) -> int | None:
    """CTX's SSL_CTX address (CPython's PySSLContext starts with it), once
    SSL_CTX_get_options through it returns CTX's own options; None otherwise."""
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr or lib.ctx_get_options(ptr) != ctx.options:
        log.debug("SSLContext layout not recognised")
        return None
    return int(ptr)


def standard_names() -> dict[str, str]:
    """IANA (RFC) cipher suite name -> OpenSSL name, for every cipher this libssl has
    (SSL_CIPHER_standard_name); {} when libssl cannot be reached that way."""
    lib = _libssl()
    if lib is None:
        return {}
    try:
        f, vp = libssl_function, ctypes.c_void_p
        get_ciphers = f("SSL_CTX_get_ciphers", vp, vp)
        sk_num = f("OPENSSL_sk_num", ctypes.c_int, vp)
        sk_value = f("OPENSSL_sk_value", vp, vp, ctypes.c_int)
        std_name = f("SSL_CIPHER_standard_name", ctypes.c_char_p, vp)
        get_name = f("SSL_CIPHER_get_name", ctypes.c_char_p, vp)
    except (OSError, AttributeError) as exc:
        log.debug("libssl cipher names unavailable: %s", exc)
        return {}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    ptr = _ctx_pointer(ctx, lib)
    stack = get_ciphers(ptr) if ptr is not None else None
    if not stack:
        return {}
    names: dict[str, str] = {}
    for i in range(sk_num(stack)):
        cipher = sk_value(stack, i)
        std, name = std_name(cipher), get_name(cipher)
        if std and name:
            names[std.decode()] = name.decode()
    return names


def client_order_for_tls13(ctx: ssl.SSLContext) -> bool:
    """Give the server context CTX BoringSSL's TLS 1.3 rule (above); whether it was
    installed."""
    return install(ctx, ())


def install(ctx: ssl.SSLContext, groups: Sequence[Sequence[str]]) -> bool:
    """Give the server context CTX (its ciphers set) BoringSSL's rules: the client's order
    for TLS 1.3, and GROUPS (cipher names) as equal-preference groups for TLS 1.2;
    whether the callback was installed."""
    tls13 = ctx.maximum_version in (ssl.TLSVersion.MAXIMUM_SUPPORTED, ssl.TLSVersion.TLSv1_3)
    group_of = {name: i for i, group in enumerate(groups) for name in group}
    listed = [c for c in ctx.get_ciphers() if c.get("protocol") != "TLSv1.3"]
    grouped = sum(c["name"] in group_of for c in listed) > 1
    # installed even where the server's order is the whole rule (no TLS 1.3, no group):
    # hello_hook reads every ClientHello
    lib = _libssl()
    if lib is None:
        return False
    ptr = _ctx_pointer(ctx, lib)
    if ptr is None:  # the server's cipher order stays
        return False
    rule = _Rule(tls13)
    if grouped:
        rule = _Rule(tls13, tuple(c["name"] for c in listed),
                     tuple(group_of.get(c["name"]) for c in listed),
                     tuple(int(c["id"]) & 0xFFFF for c in listed))
    _rules[ptr] = rule
    weakref.finalize(ctx, _rules.pop, ptr, None)  # before OpenSSL frees the SSL_CTX
    lib.set_client_hello_cb(ptr, _callback, None)
    return True


_SSL_CTRL_SET_GROUPS_LIST = 92  # ssl.h: SSL_CTX_set1_groups_list is SSL_CTX_ctrl with it
_ctx_ctrl = load_once(lambda: libssl_function("SSL_CTX_ctrl", ctypes.c_long, ctypes.c_void_p,
                                              ctypes.c_int, ctypes.c_long, ctypes.c_char_p),
                      "libssl SSL_CTX_ctrl")


def set_groups(ctx: ssl.SSLContext, groups: str) -> bool:
    """Give CTX the key exchange groups GROUPS (an OpenSSL groups list, "X25519:P-256"),
    as Envoy gives BoringSSL its ecdh_curves (SSL_CTX_set1_curves_list); whether it was
    set (``ssl``'s set_ecdh_curve takes one curve only)."""
    lib = _libssl()
    ptr = _ctx_pointer(ctx, lib) if lib is not None else None
    ctrl = _ctx_ctrl()
    if ptr is None or ctrl is None:
        return False
    return bool(ctrl(ptr, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode()) == 1)
