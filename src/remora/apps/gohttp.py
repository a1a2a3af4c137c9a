"""What Go's net/http server puts on the wire, as pure functions.

The seed's demo server is a Go program (`http.HandleFunc("/common/sauth", ...)` +
`http.ListenAndServe(":18080", nil)`); remora's stand-in must answer byte for byte like it,
because the sidecar access log counts those bytes (BYTES_SENT 60) and tests compare the
response through Envoy and through `remora proxy`. The header order below is Go's:
handler headers sorted by name (Header.WriteSubset), then the server's extra headers in
the fixed order of `extraHeader.Write` — Date, Content-Length, Content-Type, Connection
(https://github.com/golang/go/blob/go1.21.0/src/net/http/server.go).
"""

from __future__ import annotations

import email.utils
import time

REASONS = {
    200: "OK",
    301: "Moved Permanently",
    400: "Bad Request",
    404: "Not Found",
    431: "Request Header Fields Too Large",
}

TEXT_PLAIN = "text/plain; charset=utf-8"

# Go's DefaultMaxHeaderBytes (1 MiB) plus the 4096 bytes of slack its reader allows.
MAX_HEADER_BYTES = (1 << 20) + 4096


def http_date(now: float | None = None) -> str:
    """RFC 7231 IMF-fixdate, as Go's `appendTime` writes it."""
    return email.utils.formatdate(time.time() if now is None else now, usegmt=True)


def response(
    status: int,
    body: bytes,
    *,
    date: str,
    content_type: str | None = TEXT_PLAIN,
    handler_headers: list[tuple[str, str]] | None = None,
    connection: str | None = None,
    head: bool = False,
) -> bytes:
    """One complete HTTP/1.1 response as Go's server writes it for a handler that wrote
    BODY in one piece (so Go knows the length and sends Content-Length)."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'status code ' + str(status))}"]
    lines.extend(f"{k}: {v}" for k, v in sorted(handler_headers or []))
    lines.append(f"Date: {date}")
    lines.append(f"Content-Length: {len(body)}")
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if connection is not None:
        lines.append(f"Connection: {connection}")
    head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head_bytes if head else head_bytes + body


def not_found(date: str, connection: str | None = None, head: bool = False) -> bytes:
    """`http.NotFound`: http.Error sets Content-Type and X-Content-Type-Options itself."""
    return response(
        404, b"404 page not found\n", date=date, content_type=None,
        handler_headers=[("Content-Type", TEXT_PLAIN), ("X-Content-Type-Options", "nosniff")],
        connection=connection, head=head,
    )


def redirect(location: str, date: str, connection: str | None = None,
             head: bool = False) -> bytes:
    """ServeMux's 301 to the cleaned path (`http.RedirectHandler`). Go writes an HTML
    body only for GET/HEAD; the body text is what `http.Redirect` produces."""
    body = f'<a href="{location}">Moved Permanently</a>.\n\n'.encode()
    return response(
        301, body, date=date, content_type=None,
        handler_headers=[("Content-Type", "text/html; charset=utf-8"), ("Location", location)],
        connection=connection, head=head,
    )


def bad_request(reason: str = "") -> bytes:
    """What Go writes before closing a connection whose request it could not parse:
    `HTTP/1.1 400 Bad Request` + fixed errorHeaders + the same text as body."""
    public = "400 Bad Request" + (f": {reason}" if reason else "")
    return (
        f"HTTP/1.1 {public}\r\nContent-Type: {TEXT_PLAIN}\r\nConnection: close\r\n\r\n{public}"
    ).encode("latin-1")


def header_too_large() -> bytes:
    public = "431 Request Header Fields Too Large"
    return (
        f"HTTP/1.1 {public}\r\nContent-Type: {TEXT_PLAIN}\r\nConnection: close\r\n\r\n{public}"
    ).encode("latin-1")


def clean_path(path: str) -> str:
    """Go's `cleanPath` for ServeMux: path.Clean, rooted, keeping one trailing slash."""
    if path == "":
        return "/"
    if not path.startswith("/"):
        path = "/" + path
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    cleaned = "/" + "/".join(parts)
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def format_remote(host: str, port: int) -> str:
    """Go's RemoteAddr: "ip:port", IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
