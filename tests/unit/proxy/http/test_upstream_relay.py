"""The upstream side of the HTTP/1 core over loopback: requests that arrive whole go up in
one piece and framed as their head says, and the pooled connection is reused only after a
clean cycle (codec_state.py: both sides DONE)."""

from __future__ import annotations

from tests.unit.proxy.http.fakes import Client, proxy
from tests.unit.proxy.http.test_hcm_basic import run, setup


def test_empty_chunked_body_that_arrived_whole_is_terminated_upstream() -> None:
    async def body() -> None:
        hcm, (app,), _, _ = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            # head and the empty chunked body in one read: the router writes the head
            # and must still end the forwarded chunked body, or the app waits for ever
            c.send(b"POST /a HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
                   b"0\r\n\r\n")
            r = await c.response(timeout=3)
            assert r.status == 200 and r.json()["body"] == ""
            c.send(b"POST /b HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello")
            r = await c.response(timeout=3)
            assert r.status == 200 and r.json()["body"] == "hello"
            c.close()
        assert [s.path for s in app.seen] == ["/a", "/b"]
        assert app.connections == 1  # both cycles ended cleanly: one pooled connection
    run(body)


def test_connection_close_response_is_not_pooled() -> None:
    async def body() -> None:
        hcm, (app,), _, _ = await setup()
        async with proxy(hcm) as addr:
            c = await Client.connect(addr)
            r = await c.get("/close")  # framed by the close: MUST_CLOSE, never reused
            assert r.body == b"until close"
            c.close()
            c = await Client.connect(addr)
            r = await c.get("/after")
            assert r.status == 200
            c.close()
        assert app.connections == 2
    run(body)
