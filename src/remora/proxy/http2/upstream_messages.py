"""HTTP/1.1 <-> HTTP/2 translation for the upstream side, free of I/O.

A request decoded from an HTTP/1.1 client goes upstream as HTTP/2 the way Envoy's codecs
translate it: ``host`` becomes ``:authority``, the request line gives ``:method``,
``:scheme`` and ``:path``, and the connection-specific headers RFC 9113 8.2.2 forbids are
dropped (``te`` survives only as ``trailers``). An HTTP/2 response comes back as a status
and a header list without pseudo headers, ready for the HTTP/1.1 encoder.
"""

from __future__ import annotations

from remora.proxy.http2.header_names import TO_BYTES, TO_STR, learn_bytes, learn_str

# RFC 9113 8.2.2: connection-specific header fields are malformed in HTTP/2
CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection",
                                 "transfer-encoding", "upgrade", "host"})

# Envoy's response code details / reset reasons for an upstream HTTP/2 stream reset
# (source/common/http/utility.cc resetReasonToString; router.cc
# upstream_reset_before_response_started{...}), keyed by the RST_STREAM error code.
REFUSED_STREAM = 7
REMOTE_REFUSED = ("remote refused stream reset", "remote_refused_stream_reset")
REMOTE_RESET = ("remote reset", "remote_reset")


def request_headers(method: str, scheme: str, path: str,
                    headers: list[tuple[str, str]],
                    extra: tuple[str, str] | None,
                    absolute: bool = False) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header block (as the codec takes it: bytes, latin-1 as the HTTP/1.1
    side reads headers) for a request whose HTTP/1.1 form is HEADERS (the forwarded
    list, ``host`` first) plus EXTRA. ABSOLUTE: the HTTP/1.1 request target was in
    absolute form."""
    # pseudo headers in the order Envoy's HTTP/1 codec creates them and its HTTP/2 codec
    # sends them (observed on Envoy 1.40: :authority :path :method :scheme, and for an
    # absolute-form target, whose URL the codec parses first, :authority :scheme :path
    # :method); :authority is the (last) host header's value, filled in below
    out = [(b":authority", b"")]
    if absolute:
        out.append((b":scheme", scheme.encode("latin-1")))
    if method != "CONNECT":
        out.append((b":path", path.encode("latin-1")))
    out.append((b":method", method.encode("latin-1")))
    if not absolute:
        out.append((b":scheme", scheme.encode("latin-1")))
    to_bytes = TO_BYTES  # (header_names.encode_fields, inline)
    for n, v in headers:
        if n in CONNECTION_SPECIFIC:
            if n == "host":
                out[0] = (b":authority", v.encode("latin-1"))
            continue
        if n == "te" and v.strip().lower() != "trailers":
            continue
        out.append((to_bytes.get(n) or learn_bytes(n), v.encode("latin-1")))
    if extra is not None:
        n, v = extra
        out.append((to_bytes.get(n) or learn_bytes(n), v.encode("latin-1")))
    return out


def response_head(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[int, list[tuple[str, str]]]:
    """(status, headers without pseudo headers, as str) of an HTTP/2 response header
    block as the codec hands it over."""
    status = 0
    out: list[tuple[str, str]] = []
    to_str = TO_STR  # (header_names.decode_fields, inline)
    for n, v in headers:
        if n[0] == 58:  # ":", a pseudo header
            if n == b":status":
                status = int(v)
        else:
            out.append((to_str.get(n) or learn_str(n), v.decode("latin-1")))
    return status, out


def trailer_fields(headers: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    """A trailer block as the codec hands it over, as str, without pseudo headers."""
    to_str = TO_STR
    return [(to_str.get(n) or learn_str(n), v.decode("latin-1"))
            for n, v in headers if n[0] != 58]  # (58: ":")


def reset_reason(error_code: int) -> tuple[str, str]:
    """(body reason, details) of a RST_STREAM from the upstream."""
    return REMOTE_REFUSED if error_code == REFUSED_STREAM else REMOTE_RESET
