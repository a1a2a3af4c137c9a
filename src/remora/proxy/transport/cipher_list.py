"""``tls_params.cipher_suites`` read as Envoy's BoringSSL reads it, for OpenSSL (``ssl``).

Envoy joins the repeated field with ``:`` (ContextConfigImpl: ``RepeatedPtrUtil::join(
cipher_suites, ":")``; empty: the context's default list) and hands the string to
BoringSSL's SSL_CTX_set_strict_cipher_list. That syntax is OpenSSL's cipher-string syntax
but for three things this module deals with:

- **Equal-preference groups**, ``[A|B]``: BoringSSL lets the client's order choose among
  a group's members (Envoy's own default server list is written with two of them).
  OpenSSL has no such groups, so a group is flattened into its members, in the order
  written, and ``equal_preference_groups`` tells cipher_order.py which ciphers of the
  list form one: a server context reorders each group by the client's preference for
  each connection (BoringSSL's ssl_choose_cipher under server preference). Where that
  cannot be installed the first member written wins. BoringSSL refuses an operator
  (``-``, ``+``, ``!``, ``@``) inside a group, before one, or anywhere after the first
  group, an unclosed group and ``|`` outside one (observed on Envoy 1.40): so does
  ``parse``.
- **Strictness**: every name must be a cipher or an alias BoringSSL knows (OpenSSL's
  SSL_CTX_set_cipher_list skips unknown names silently). BoringSSL knows fewer of both
  than OpenSSL: BORINGSSL_CIPHERS and BORINGSSL_ALIASES are the names of OpenSSL 3.0's
  full list that Envoy 1.40 accepts (``envoy --mode validate``, each tried alone), plus
  DES-CBC3-SHA, which this OpenSSL build does not offer. The list ``ssl`` gets is then
  narrowed to BoringSSL's ciphers, so an alias (``ALL``, ``HIGH``) does not bring in
  OpenSSL-only suites (DHE, CCM, ARIA, CAMELLIA) the Envoy peer would never negotiate.
  An alias's order among its ciphers is OpenSSL's, which can differ from BoringSSL's.
- **TLS 1.3 names** (``TLS_AES_128_GCM_SHA256``) are known names that select nothing:
  TLS 1.3 suites are not configurable in either proxy. Alone they leave no cipher, which
  both refuse.

IANA standard names (``TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256``), which BoringSSL also
reads, are turned into OpenSSL's (libssl's own SSL_CIPHER_standard_name table,
cipher_order.standard_names): OpenSSL 3.0's cipher strings do not read them. Where that
table cannot be had they are refused, naming the OpenSSL form to use.

A refused list gets Envoy's message (ContextImpl: "Failed to initialize cipher suites
<list>. The following ciphers were rejected when tried individually: <names>"): the list
is split at ``:+![|]``, a leading ``-`` dropped, and each piece tried alone.
"""

from __future__ import annotations

import re
import ssl

# Envoy's ServerContextConfigImpl::DEFAULT_CIPHER_SUITES (non-FIPS), as written there
ENVOY_SERVER_DEFAULT = ("[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]:"
                        "[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]:"
                        "ECDHE-ECDSA-AES256-GCM-SHA384:"
                        "ECDHE-RSA-AES256-GCM-SHA384:")

BORINGSSL_CIPHERS = frozenset((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-PSK-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA256", "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA",
    "ECDHE-PSK-AES128-CBC-SHA", "ECDHE-PSK-AES256-CBC-SHA",
    "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA", "AES256-SHA",
    "PSK-AES128-CBC-SHA", "PSK-AES256-CBC-SHA", "DES-CBC3-SHA",
))
TLS13_CIPHERS = frozenset(("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                           "TLS_CHACHA20_POLY1305_SHA256"))
BORINGSSL_ALIASES = frozenset((
    "ALL", "DEFAULT", "HIGH", "FIPS", "kRSA", "RSA", "aRSA", "kEECDH", "kECDHE", "ECDH",
    "EECDH", "ECDHE", "aECDSA", "ECDSA", "kPSK", "aPSK", "PSK", "TLSv1.2", "TLSv1",
    "SSLv3", "AES128", "AES256", "AES", "AESGCM", "CHACHA20", "SHA1", "SHA", "3DES",
))
_WORD = re.compile(r"[A-Za-z0-9._=-]+")
_IANA = re.compile(r"TLS_[A-Z0-9_]+_WITH_[A-Z0-9_]+")


_standard: dict[str, str] | None = None


def _openssl_name(word: str) -> str:
    """WORD, or the OpenSSL name of the BoringSSL cipher whose IANA name it is."""
    global _standard
    if not word.startswith("TLS_"):
        return word
    if _standard is None:
        from remora.proxy.transport import cipher_order

        _standard = {std: name for std, name in cipher_order.standard_names().items()
                     if name in BORINGSSL_CIPHERS}
    return _standard.get(word, word)


class CipherListError(ValueError):
    """A cipher list BoringSSL refuses; the text is Envoy's message."""


def _rule(text: str, i: int) -> tuple[list[str], int]:
    """The ``+``-joined words of one rule starting at TEXT[I], and where it ends; raises
    ValueError for an empty word or one BoringSSL does not know."""
    words: list[str] = []
    while True:
        m = _WORD.match(text, i)
        if m is None:
            raise ValueError("empty rule")
        words.append(_openssl_name(m.group()))
        i = m.end()
        if i < len(text) and text[i] == "+":
            i += 1
            continue
        break
    multi = len(words) > 1
    for w in words:
        # an exact cipher name only on its own (BoringSSL: not in multipart rules)
        if w not in BORINGSSL_ALIASES and (multi or (w not in BORINGSSL_CIPHERS
                                                     and w not in TLS13_CIPHERS)):
            raise ValueError(f"unknown {w}")
    return words, i


def parse(text: str) -> list[str]:
    """TEXT (a joined cipher_suites) as BoringSSL's strict parser reads it, as OpenSSL
    cipher-string items in order (groups flattened, TLS 1.3 names dropped); raises
    ValueError where BoringSSL refuses the syntax or a name."""
    return [item for item, _ in _parse(text)]


def _parse(text: str) -> list[tuple[str, int | None]]:
    """parse's items, each with the number of the [A|B] group it came from (None: none)."""
    items: list[tuple[str, int | None]] = []
    i, n = 0, len(text)
    has_group = False
    groups = 0
    while i < n:
        ch = text[i]
        if ch == ":":
            i += 1
            continue
        if ch == "[":
            has_group = True
            groups += 1
            i += 1
            while True:
                words, i = _rule(text, i)
                items.append(("+".join(words), groups))
                if i < n and text[i] == "|":
                    i += 1
                    continue
                if i < n and text[i] == "]":
                    i += 1
                    break
                raise ValueError("unclosed group")
            continue
        op = ""
        if ch in "-+!@":
            if has_group:  # SSL_R_MIXED_SPECIAL_OPERATOR_WITH_GROUPS
                raise ValueError("operator after a group")
            op, i = ch, i + 1
            if op == "@":
                m = _WORD.match(text, i)
                if m is None or m.group() != "STRENGTH":
                    raise ValueError("unknown special")
                items.append(("@STRENGTH", None))
                i = m.end()
                continue
        words, i = _rule(text, i)
        if i < n and text[i] != ":":
            raise ValueError(f"unexpected {text[i]!r}")
        items.append((op + "+".join(words), None))
    return [(item, g) for item, g in items if item.lstrip("-+!") not in TLS13_CIPHERS]


def _openssl(items: list[str]) -> str:
    """The OpenSSL list for ITEMS, narrowed to BoringSSL's ciphers; ValueError if none is
    left (BoringSSL: NO_CIPHER_MATCH)."""
    if not any(not item.startswith(("-", "!", "@")) for item in items):
        raise ValueError("no cipher")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.set_ciphers(":".join(items))
    except ssl.SSLError:
        raise ValueError("no cipher") from None
    names = [c["name"] for c in ctx.get_ciphers() if c["name"] in BORINGSSL_CIPHERS]
    if not names:
        raise ValueError("no cipher")
    return ":".join(names)


def _accepted(text: str) -> str | None:
    try:
        return _openssl(parse(text))
    except ValueError:
        return None


def openssl_ciphers(suites: list[str]) -> str | None:
    """The OpenSSL cipher string ``ssl.SSLContext.set_ciphers`` gets for a cipher_suites
    list (None: empty, the context's default); raises CipherListError with Envoy's
    message where Envoy refuses the list."""
    joined = ":".join(suites)
    if not joined:
        return None
    result = _accepted(joined)
    if result is not None:
        return result
    bad = []
    for piece in re.split(r"[:+!\[|\]]", joined):
        if piece:
            piece = piece[1:] if piece.startswith("-") else piece
            if _accepted(piece) is None:
                bad.append(piece)
    raise CipherListError(f"Failed to initialize cipher suites {joined}. The following "
                          f"ciphers were rejected when tried individually: {', '.join(bad)}")


def equal_preference_groups(suites: list[str]) -> list[list[str]]:
    """The ciphers of each [A|B] group of an accepted cipher_suites list (aliases
    expanded, narrowed to BoringSSL's ciphers, a cipher in the first group naming it),
    groups of one left out; [] for an empty list: Envoy's default server list then."""
    joined = ":".join(suites) or ENVOY_SERVER_DEFAULT
    try:
        items = _parse(joined)
    except ValueError:
        return []
    by_group: dict[int, list[str]] = {}
    taken: set[str] = set()
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for item, group in items:
        if group is None:
            continue
        try:
            probe.set_ciphers(item)
        except ssl.SSLError:
            continue
        for c in probe.get_ciphers():
            name = c["name"]
            if name in BORINGSSL_CIPHERS and name not in taken:
                taken.add(name)
                by_group.setdefault(group, []).append(name)
    return [names for _, names in sorted(by_group.items()) if len(names) > 1]


def fix_hint(suites: list[str]) -> str:
    """What to do about a refused list (the fix line of the ConfigError)."""
    iana = [name for s in suites for name in _IANA.findall(s)]
    if iana:
        return (f"remora reads OpenSSL cipher names, not IANA ones ({iana[0]}): e.g. "
                "ECDHE-ECDSA-AES128-GCM-SHA256 for TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")
    return ("use BoringSSL's cipher names and aliases, e.g. "
            "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]:"
            "ECDHE-ECDSA-AES256-GCM-SHA384 (an [A|B] group takes no -, +, ! or @ "
            "operators, nor any after it)")
