"""Go's net/http wire format, as the demo server reproduces it."""

from remora.apps import gohttp

DATE = "Mon, 23 Nov 2026 23:16:39 GMT"


def test_ok_response_has_gos_header_order_and_length() -> None:
    body = b'{"code": 0, "status": "fail", "user": {"id": "test_common"}}'
    assert len(body) == 60
    assert gohttp.response(200, body, date=DATE) == (
        b"HTTP/1.1 200 OK\r\nDate: " + DATE.encode() + b"\r\nContent-Length: 60\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body
    )


def test_head_and_close_variants() -> None:
    out = gohttp.response(200, b"xyz", date=DATE, connection="close", head=True)
    assert out.endswith(b"Content-Length: 3\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        b"Connection: close\r\n\r\n")


def test_not_found_is_http_error_output() -> None:
    out = gohttp.not_found(DATE)
    head, body = out.split(b"\r\n\r\n", 1)
    assert body == b"404 page not found\n"
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 404 Not Found",
        b"Content-Type: text/plain; charset=utf-8",
        b"X-Content-Type-Options: nosniff",
        b"Date: " + DATE.encode(),
        b"Content-Length: 19",
    ]


def test_bad_request_matches_gos_fixed_text() -> None:
    assert gohttp.bad_request() == (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Connection: close\r\n\r\n400 Bad Request"
    )
    assert gohttp.bad_request("missing required Host header").endswith(
        b"\r\n\r\n400 Bad Request: missing required Host header")


def test_clean_path_like_servemux() -> None:
    assert gohttp.clean_path("/common/sauth") == "/common/sauth"
    assert gohttp.clean_path("/common//sauth") == "/common/sauth"
    assert gohttp.clean_path("/a/./b/../c/") == "/a/c/"
    assert gohttp.clean_path("") == "/"
    assert gohttp.clean_path("/..") == "/"


def test_remote_addr_brackets_ipv6() -> None:
    assert gohttp.format_remote("127.0.0.6", 44213) == "127.0.0.6:44213"
    assert gohttp.format_remote("::1", 80) == "[::1]:80"
