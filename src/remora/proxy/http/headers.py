"""Request header mutation done by the connection manager, free of I/O.

Envoy reference: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers
(x-forwarded-for, x-envoy-external-address, x-envoy-internal, x-forwarded-proto,
x-request-id) and ConnectionManagerUtility::mutateRequestHeaders. Checked against Envoy 1.40:
since internal_address_config is empty by default no address counts as internal, so
x-envoy-internal is always removed; with use_remote_address the request is an edge request
(x-request-id regenerated unless preserve_external_request_id, x-envoy-external-address
set); a loopback peer is appended to XFF as the node's own address.
Istio's sidecars run with use_remote_address false: XFF passes through untouched.
"""

from __future__ import annotations

import binascii
import ipaddress
import os
import re
from collections.abc import Callable, Mapping

# hop-by-hop headers never forwarded (RFC 9110 7.6.1); transfer-encoding is re-framed
# (te is kept as "trailers" when it lists trailers, and an expect other than 100-continue
# goes on, as Envoy does; see stream.py)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                        "upgrade", "te", "expect", "host"})

# x-envoy-* control headers a client outside the mesh must not set: removed from every
# request that is not internal (ConnectionManagerUtility::cleanInternalHeaders); the first
# set only from edge requests (use_remote_address). Checked against Envoy 1.40.
_EDGE_ONLY_CLEANED = frozenset({
    "x-envoy-decorator-operation", "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
})
_EXTERNAL_CLEANED = frozenset({
    "x-envoy-retriable-status-codes", "x-envoy-retriable-header-names", "x-envoy-retry-on",
    "x-envoy-retry-grpc-on", "x-envoy-max-retries", "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response", "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace", "x-envoy-ip-tags", "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout", "x-envoy-internal",
})

# taken out of every request by the router filter once it has read it (Router::Filter::
# decodeHeaders removes x-envoy-upstream-stream-duration-ms whatever its value; checked
# against Envoy 1.40): not forwarded, still seen by route matching
_ROUTER_CONSUMED = frozenset({"x-envoy-upstream-stream-duration-ms"})

_UUID_BATCH = 256
_random_hex: list[str] = []
# --concurrency forks workers: a child must not reuse the parent's unused batch
os.register_at_fork(after_in_child=_random_hex.clear)
# RFC 4122 version 4 (0100xxxx in byte 6) and variant (10xxxxxx in byte 8), as byte maps
_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT_10 = bytes((b & 0x3F) | 0x80 for b in range(256))
# the batch's text: one line per UUID, its 32 hex digits written at these offsets
_UUID_LINES = b"00000000-0000-0000-0000-000000000000\n" * _UUID_BATCH
_HEX_OFFSETS = [i for i in range(36) if i not in (8, 13, 18, 23)]


def uuid4() -> str:
    """A random (version 4) UUID as text, like str(uuid.uuid4()) at a fraction of the
    cost (one per request). The random bytes come from the kernel's CSPRNG 256 UUIDs at a
    time, one getrandom(2) per batch, as Envoy's RandomGeneratorImpl::uuid() draws from a
    per-thread buffer of BoringSSL's RAND_bytes; the batch is formatted at once too: the
    version and variant bits set by byte maps, the hex digits placed into the batch's
    text one digit position (every UUID's) at a time, instead of a string per UUID built
    from slices."""
    if not _random_hex:
        raw = bytearray(os.urandom(16 * _UUID_BATCH))
        raw[6::16] = raw[6::16].translate(_VERSION_4)
        raw[8::16] = raw[8::16].translate(_VARIANT_10)
        digits = binascii.hexlify(raw)
        text = bytearray(_UUID_LINES)
        for i, offset in enumerate(_HEX_OFFSETS):
            text[offset::37] = digits[i::32]
        batch = text.decode("ascii").split("\n")
        batch.pop()  # after the last line end
        _random_hex.extend(batch)
    return _random_hex.pop()


def xff_client(xff: str, trusted_hops: int) -> str | None:
    """The client address Envoy trusts in an XFF list: skip TRUSTED_HOPS entries from the
    right and take the next one (getLastAddressFromXFF). None if absent or not an IP."""
    parts = [p.strip() for p in xff.split(",")]
    if len(parts) <= trusted_hops:
        return None
    candidate = parts[len(parts) - 1 - trusted_hops]
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return None
    return candidate


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


_NOMINATION_REFUSED = frozenset({"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"})


def connection_header_rejected(value: str, te: str | None, upgrade: bool) -> bool:
    """Envoy's Utility::sanitizeConnectionHeader refuses the request (its HTTP/1 codec
    answers 400 http1.connection_header_rejected) when Connection lists 10 or more
    non-empty tokens, nominates x-forwarded-for/-host/-proto (removing them could mask
    where a request came from) or a pseudo-header (a token starting with ``:``), or
    nominates a TE of 256 bytes or more. Not checked on an upgrade, which Envoy's codec
    tells (Utility::isUpgrade) by an Upgrade header (UPGRADE) and a Connection token that
    is exactly ``upgrade`` (``: Upgrade`` is not one: refused). Checked against Envoy 1.40
    (the differential desync fuzz, issue 10)."""
    tokens = [t for t in value.split(",") if t]
    names = [t.strip(" \t").lower() for t in tokens]
    if upgrade and "upgrade" in names:
        return False
    if len(tokens) >= 10:
        return True
    for name in names:
        if name in _NOMINATION_REFUSED or name.startswith(":"):
            return True
        if name == "te" and te is not None and len(te) >= 256:
            return True
    return False


def connection_nominated(value: str | None) -> frozenset[str]:
    """Header names listed in Connection (RFC 9110 7.6.1) are hop-by-hop too."""
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(",")) - {"close", "keep-alive",
                                                                     "upgrade", ""}


class RequestPolicy:
    """ConnectionManagerUtility::mutateRequestHeaders compiled from the connection manager's
    config once, when the listener loads: what a request loses whatever it carries
    (``removed``; with the hop-by-hop headers, ``dropped``) is fixed by the config, so a
    request only pays for the decisions that depend on its own headers (``mutate``)."""

    __slots__ = ("dropped", "generate_request_id", "preserve_external_request_id", "removed",
                 "skip_xff_append", "use_remote_address", "xff_num_trusted_hops")

    def __init__(self, *, use_remote_address: bool, xff_num_trusted_hops: int,
                 skip_xff_append: bool, generate_request_id: bool,
                 preserve_external_request_id: bool, sanitize_xfcc: bool) -> None:
        self.use_remote_address = use_remote_address
        self.xff_num_trusted_hops = xff_num_trusted_hops
        self.skip_xff_append = skip_xff_append
        self.generate_request_id = generate_request_id
        self.preserve_external_request_id = preserve_external_request_id
        # no address is internal (Envoy 1.40's default internal_address_config is empty)
        removed = set(_EXTERNAL_CLEANED)
        if use_remote_address:
            removed |= _EDGE_ONLY_CLEANED
        if sanitize_xfcc:
            removed.add("x-forwarded-client-cert")
        self.removed = frozenset(removed)
        self.dropped = HOP_BY_HOP | self.removed | _ROUTER_CONSUMED

    def mutate(self, hmap: dict[str, str], remote_ip: str, scheme: str,
               node_ip: Callable[[], str | None]) -> tuple[str | None, list[tuple[str, str]]]:
        """(final remote IP or None when the connection's peer stays, headers to set).
        ``set`` entries replace a header in place or are appended in Envoy's order
        (x-forwarded-for, x-forwarded-proto, x-envoy-external-address, x-request-id)."""
        sets: list[tuple[str, str]] = []
        final_remote_ip: str | None = None
        xff = hmap.get("x-forwarded-for")
        regenerate_id = False
        if self.use_remote_address:
            if self.xff_num_trusted_hops > 0 and xff is not None:
                final_remote_ip = xff_client(xff, self.xff_num_trusted_hops - 1)
            if not self.skip_xff_append:
                node = node_ip() if is_loopback(remote_ip) else None
                appended = node or remote_ip
                sets.append(("x-forwarded-for", f"{xff},{appended}" if xff else appended))
            sets.append(("x-forwarded-proto", scheme))
            sets.append(("x-envoy-external-address", final_remote_ip or remote_ip))
            regenerate_id = not self.preserve_external_request_id and "x-request-id" in hmap
        else:
            if xff is not None:
                final_remote_ip = xff_client(xff, self.xff_num_trusted_hops)
            if "x-forwarded-proto" not in hmap:
                sets.append(("x-forwarded-proto", scheme))
        # ConnectionManagerUtility::mutateRequestHeaders: only with generate_request_id is
        # x-request-id touched at all (set when absent; replaced on an edge request unless
        # preserve_external_request_id); without it a client's id goes through as it came
        # (observed on Envoy 1.40 with use_remote_address)
        if self.generate_request_id and (regenerate_id or "x-request-id" not in hmap):
            sets.append(("x-request-id", _random_hex.pop() if _random_hex else uuid4()))
        return final_remote_ip, sets


# -- path normalization -----------------------------------------------------------------
_UNRESERVED_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPED_SLASH = re.compile(r"%2[Ff]|%5[Cc]")


# characters Envoy's path canonicalizer (Chromium's) percent-encodes in the path (not the
# query); checked against Envoy 1.40: ' [ ] ; ! stay as they are
_PATH_ESCAPES = str.maketrans({c: f"%{ord(c):02X}" for c in '^{}"<>`|'})


# what normalize_path changes: an escape, a character it escapes, a backslash, a dot segment
_NEEDS_NORMALIZING = re.compile(r'[%\\^{}"<>`|]|/\.')
# whether a request target may need normalize_path, merge-free (or the escaped-slashes
# action: an escape is a "%"), searched in the whole target: what finds nothing in the
# target finds nothing in its path either
path_needs_work = _NEEDS_NORMALIZING.search


def _pct(match: re.Match[str]) -> str:
    byte = int(match.group(1), 16)
    # other escapes stay as sent, case included (Envoy 1.40 forwards "%7c" unchanged)
    return chr(byte) if byte in _UNRESERVED else match.group(0)


def normalize_path(path: str, merge_slashes: bool = False) -> str | None:
    """normalize_path (RFC 3986 section 6: decode unreserved %-escapes, keep the rest,
    escape what Envoy's canonicalizer escapes, remove dot segments) on the part before the
    query; backslashes become slashes as in Envoy's canonicalizer. None when the path is
    not origin-form (Envoy: 400)."""
    raw, sep, query = path.partition("?")
    if not raw.startswith("/"):
        return None
    if _NEEDS_NORMALIZING.search(raw) is None and not (merge_slashes and "//" in raw):
        return path  # the usual path: nothing to decode, escape or remove
    if "%" in raw:
        raw = _UNRESERVED_PCT.sub(_pct, raw)
    raw = raw.translate(_PATH_ESCAPES)
    raw = raw.replace("\\", "/")
    if "/." in raw:
        out: list[str] = []
        segs = raw.split("/")
        for seg in segs[1:]:
            if seg == "..":
                if out:
                    out.pop()
            elif seg != ".":
                out.append(seg)
        if segs[-1] in (".", ".."):
            out.append("")
        raw = "/" + "/".join(out)
    if merge_slashes and "//" in raw:
        raw = re.sub(r"/{2,}", "/", raw)
    return raw + sep + query


# An absolute-form target's authority as Envoy's URL parser accepts it: a host name of
# letters, digits, "." and "-" or a bracketed IPv6 address, and a port of digits if a ":"
# follows (checked against Envoy 1.40: "~.example", "b_c", "b%41", "b:" are refused)
_ABSOLUTE_AUTHORITY = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")


def split_absolute(url: str) -> tuple[str, str] | None:
    """(authority, path) of an absolute-form request target (``http://b:80/x``); the path
    is what follows the authority ("/", "?" or "#" ends it; "/" when empty), userinfo is
    dropped as Envoy does. None when Envoy would refuse it (400): a scheme other than
    http/https, an empty or malformed authority."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end].rpartition("@")[2]
    if not _ABSOLUTE_AUTHORITY.fullmatch(authority):
        return None
    return authority, rest[end:] or "/"


def escaped_slashes(path: str) -> bool:
    raw = path.split("?", 1)[0]
    return _ESCAPED_SLASH.search(raw) is not None


def unescape_slashes(path: str) -> str:
    raw, sep, query = path.partition("?")
    return _ESCAPED_SLASH.sub(lambda m: "/" if m.group(0)[1] == "2" else "\\", raw) + sep + query


def request_scheme(req_url: str, hdrs: Mapping[str, str], connection_scheme: str) -> str:
    """An HTTP/1.1 request's scheme as Envoy's :scheme holds it: an absolute-form
    target's, else x-forwarded-proto (as the connection manager left it) when it names
    http or https, else the connection's (Envoy's HTTP/1 codec takes the URL's;
    ConnectionManagerUtility::mutateRequestHeaders sets the rest by
    getScheme(x-forwarded-proto, ssl), lower-cased; checked against Envoy 1.40). The
    stream keeps it as the request's :scheme (stream.py)."""
    scheme, sep, _ = req_url.partition("://")
    if sep and not req_url.startswith("/"):
        return scheme.lower()
    xfp = hdrs.get("x-forwarded-proto", "").lower()
    return xfp if xfp in ("http", "https") else connection_scheme


def request_uri(scheme: str, hdrs: Mapping[str, str]) -> str | None:
    """The request's URL as Envoy's Http::Utility::newUri builds it without a redirect
    config (what a 201 or 3xx direct_response puts in location): SCHEME://host/path, the
    host's port dropped only where x-forwarded-proto names another scheme whose default
    port it is (processRequestHost). None without a :path (a CONNECT)."""
    path = hdrs.get(":path")
    if path is None:
        return None
    host = hdrs.get(":authority", "")
    end = host.rfind("]:") + 1 if host.startswith("[") else host.rfind(":")
    if end > 0:
        port = host[end:]
        xfp = hdrs.get("x-forwarded-proto", "")
        if scheme != xfp and ((xfp.lower() == "https" and port == ":443")
                              or (xfp.lower() == "http" and port == ":80")):
            host = host[:end]
    return f"{scheme}://{host}{path}"
