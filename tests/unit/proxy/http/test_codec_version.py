"""Only HTTP/1.1 requests are decoded (Envoy's accept_http_10 defaults to false: 426
low_version for the rest), however the request is kept alive: the request decoder asks
llhttp for the version's text only when keep-alive and the Connection header leave it
open, so every version llhttp takes is tried here with each Connection form."""

from __future__ import annotations

import pytest

from remora.proxy.http.codec import CodecError, RequestDecoder

CONNECTIONS = ["", "connection: keep-alive\r\n", "connection: close\r\n",
               "connection: x-a, keep-alive\r\n", "connection: upgrade\r\nupgrade: h2c\r\n"]


def _decode(version: str, connection: str) -> RequestDecoder:
    dec = RequestDecoder(60 * 1024, 100, 1 << 20)
    dec.feed(f"GET / {version}\r\nhost: a\r\n{connection}\r\n".encode())
    return dec


@pytest.mark.parametrize("connection", CONNECTIONS)
@pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/2.0"])
def test_other_versions_are_426(version: str, connection: str) -> None:
    with pytest.raises(CodecError) as e:
        _decode(version, connection)
    assert (e.value.status, e.value.details) == (426, "low_version")


@pytest.mark.parametrize("connection", CONNECTIONS)
def test_http11_is_decoded(connection: str) -> None:
    dec = _decode("HTTP/1.1", connection)
    (req,) = dec.ready
    assert req.method == "GET" and req.url == "/"
    assert req.keep_alive == ("close" not in connection)
