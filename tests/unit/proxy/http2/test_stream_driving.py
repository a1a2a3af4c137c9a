"""How an HTTP/2 stream's coroutine is driven (proxy/http2/stream.py): from the read
callback that completed its request block and, while it waits for its upstream response,
resumed by the router in the upstream's read callback, with no task of its own; resumed
by the done callback of any other future it waits for (here: a fault's delay); handed over
to a task only when what follows needs one (a new upstream connection); cancelled where
it waits (client reset, route timeout, the connection's end) with the same response,
flags and details as a task's cancellation; its access-log line written once the
response left, whether the response waits for the client's window or not.

Real loopback sockets: the connection manager with its HTTP/2 codec in front of the test
App (HTTP/1.1), the ``h2`` library as the client. Which tasks the proxy creates is
recorded by the loop's task factory (asyncio's own hook), by the coroutine each runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from h2.errors import ErrorCodes

from tests.unit.proxy.http.fakes import FAULT_TYPE, app_route, proxy
from tests.unit.proxy.http2.h2client import H2Client, H2Response
from tests.unit.proxy.http2.test_downstream_h2 import logged, setup


def run(fn: Callable[[list[str]], Awaitable[None]]) -> None:
    """Run FN with the list of the qualified names of the coroutines every task created
    meanwhile runs (appended as they are created)."""
    async def main() -> None:
        created: list[str] = []
        loop = asyncio.get_running_loop()

        def factory(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                    **kw: Any) -> asyncio.Task[Any]:
            created.append(getattr(coro, "__qualname__", repr(coro)))
            return asyncio.Task(coro, loop=loop, **kw)

        loop.set_task_factory(factory)  # type: ignore[arg-type]
        await asyncio.wait_for(fn(created), 30)
    asyncio.run(main())


def stream_tasks(created: list[str]) -> list[str]:
    """The tasks proxy/http2's downstream connection created for streams."""
    return [q for q in created if q.startswith("Http2Connection.")
            and q != "Http2Connection.run"]


def routes(timeout: str = "15s") -> list[dict[str, Any]]:
    return [{"name": "d", "match": {"prefix": "/"},
             "route": {"cluster": "app", "timeout": timeout}}]


def test_a_stream_is_resumed_from_the_upstream_read_without_a_task() -> None:
    # two overlapping first streams make two upstream connections (each handed to a
    # task to connect); then two overlapping streams find one pooled each
    async def warmed(created: list[str]) -> None:
        hcm, app, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            a = c.start("GET", "/slow/100")
            b = c.start("GET", "/slow/100")
            for sid in (a, b):
                await asyncio.wait_for(c.responses[sid].done.wait(), 5)
                assert c.responses[sid].status == 200
            assert stream_tasks(created) == ["Http2Connection.serve_handed"] * 2
            del created[:]
            slow = c.start("GET", "/slow/200")
            fast = await c.request("GET", "/fast")
            assert fast.status == 200 and json.loads(fast.body)["path"] == "/fast"
            r = c.responses[slow]
            await asyncio.wait_for(r.done.wait(), 5)
            assert r.status == 200 and r.ended and json.loads(r.body)["path"] == "/slow/200"
            assert stream_tasks(created) == []  # neither stream had a task
            assert app.connections == 2
            await c.close()
        infos = await logged(ctx, 4)
        assert sorted((i.request_headers[":path"], i.response_code, i.flags_string(),
                       i.response_code_details) for i in infos) == [
            ("/fast", 200, "-", "via_upstream"), ("/slow/100", 200, "-", "via_upstream"),
            ("/slow/100", 200, "-", "via_upstream"), ("/slow/200", 200, "-", "via_upstream")]
        await app.stop()
    run(warmed)


async def _pooled(c: H2Client) -> None:
    """One upstream connection in the pool (made by a first request)."""
    assert (await c.request("GET", "/warm")).status == 200


def test_a_reset_while_waiting_for_the_response_cancels_the_driven_stream() -> None:
    async def body(created: list[str]) -> None:
        hcm, app, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            await _pooled(c)
            del created[:]
            doomed = c.start("GET", "/slow/3000")
            await asyncio.sleep(0.2)
            c.conn.reset_stream(doomed, ErrorCodes.CANCEL)
            c.flush()
            infos = await logged(ctx, 2)
            cut = infos[-1]
            assert cut.request_headers[":path"] == "/slow/3000"
            # Envoy 1.40: code 0, DR, http2.remote_reset (as with the stream's task)
            assert (cut.response_code, cut.flags_string(), cut.response_code_details) == (
                0, "DR", "http2.remote_reset")
            assert stream_tasks(created) == []
            # the connection serves on; the abandoned upstream connection is not reused
            r = await c.request("GET", "/after")
            assert r.status == 200
            await c.close()
        await app.stop()
    run(body)


def test_a_route_timeout_while_waiting_for_the_response_answers_504() -> None:
    async def body(created: list[str]) -> None:
        hcm, app, ctx = await setup(routes=routes("0.3s"), domains=["app.test"])
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            await _pooled(c)
            del created[:]
            t = await c.request("GET", "/slow/2000")
            assert (t.status, t.body, t.ended) == (504, b"upstream request timeout", True)
            assert stream_tasks(created) == []
            await c.close()
        infos = await logged(ctx, 2)
        assert [(i.response_code, i.flags_string(), i.response_code_details)
                for i in infos] == [(200, "-", "via_upstream"),
                                    (504, "UT", "response_timeout")]
        await app.stop()
    run(body)


def test_the_connections_end_while_waiting_for_the_response_ends_the_stream() -> None:
    async def body(created: list[str]) -> None:
        hcm, app, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            await _pooled(c)
            del created[:]
            c.start("GET", "/slow/3000")
            await asyncio.sleep(0.2)
            c.writer.close()  # the client goes away
            infos = await logged(ctx, 2)
            cut = infos[-1]
            assert cut.request_headers[":path"] == "/slow/3000"
            assert (cut.response_code, cut.flags_string(), cut.response_code_details) == (
                0, "DC", "downstream_remote_disconnect")
            assert stream_tasks(created) == []
        await app.stop()
    run(body)


def test_a_new_upstream_connection_hands_the_stream_to_a_task_which_can_be_cancelled() -> None:
    async def body(created: list[str]) -> None:
        hcm, app, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            # no upstream connection yet: connecting needs a task (asyncio.timeout); the
            # stream stays in it while it waits for its response
            doomed = c.start("GET", "/slow/3000")
            await asyncio.sleep(0.2)
            assert stream_tasks(created) == ["Http2Connection.serve_handed"]
            assert app.seen and app.seen[-1].path == "/slow/3000"
            c.conn.reset_stream(doomed, ErrorCodes.CANCEL)
            c.flush()
            infos = await logged(ctx, 1)
            assert [(i.response_code, i.flags_string(), i.response_code_details)
                    for i in infos] == [(0, "DR", "http2.remote_reset")]
            r = await c.request("GET", "/after")
            assert r.status == 200 and json.loads(r.body)["path"] == "/after"
            await c.close()
        await app.stop()
    run(body)


def test_headers_and_reset_in_one_read_are_logged_as_a_reset_request() -> None:
    async def body(created: list[str]) -> None:
        hcm, app, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            sid = c.conn.get_next_available_stream_id()
            c.responses[sid] = H2Response()
            c.conn.send_headers(sid, [(":method", "GET"), (":path", "/gone"),
                                      (":authority", "app.test"), (":scheme", "http")],
                                end_stream=True)
            c.conn.reset_stream(sid, ErrorCodes.CANCEL)
            c.flush()  # one write: HEADERS and RST_STREAM
            infos = await logged(ctx, 1)
            assert [(i.request_headers[":path"], i.response_code, i.flags_string(),
                     i.response_code_details) for i in infos] == [
                ("/gone", 0, "DR", "http2.remote_reset")]
            assert (await c.request("GET", "/after")).status == 200
            await c.close()
        await app.stop()
    run(body)


def test_the_log_line_waits_until_the_response_left() -> None:
    """A response the client's window holds: the stream's coroutine ended, the stream is
    logged only once the last byte left (duration and bytes are the stream's)."""
    async def body(created: list[str]) -> None:
        hcm, app, ctx = await setup()
        payload = b"x" * 200_000
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr, window=65535, auto_ack=False)
            await _pooled(c)
            del created[:]
            sid = c.start("POST", "/big", body=payload)
            r = c.responses[sid]
            await asyncio.sleep(0.4)
            # (the windows of 65535 bytes, less what the warm-up's response took of the
            # connection's)
            assert 60_000 < len(r.body) <= 65535 and not r.ended
            assert len(ctx.logger.infos) == 1  # the warm-up only
            c.conn.increment_flow_control_window(10_000_000, stream_id=sid)
            c.conn.increment_flow_control_window(10_000_000)
            c.flush()
            await asyncio.wait_for(r.done.wait(), 5)
            assert r.ended and json.loads(r.body)["body"] == payload.decode()
            infos = await logged(ctx, 2)
            assert (infos[-1].response_code, infos[-1].flags_string(),
                    infos[-1].bytes_sent) == (200, "-", len(r.body))
            assert stream_tasks(created) == []
            await c.close()
        await app.stop()
    run(body)


def test_a_reset_while_the_response_waits_for_the_window_ends_the_stream() -> None:
    async def body(created: list[str]) -> None:
        hcm, app, ctx = await setup()
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr, window=65535, auto_ack=False)
            await _pooled(c)
            del created[:]
            sid = c.start("POST", "/big", body=b"y" * 200_000)
            await asyncio.sleep(0.4)
            assert len(ctx.logger.infos) == 1
            c.conn.reset_stream(sid, ErrorCodes.CANCEL)
            c.flush()
            infos = await logged(ctx, 2)
            assert (infos[-1].response_code, infos[-1].flags_string()) == (200, "-")
            assert stream_tasks(created) == []
            c.conn.increment_flow_control_window(10_000_000)  # for the next response
            c.flush()
            assert (await c.request("GET", "/after")).status == 200
            await c.close()
        await app.stop()
    run(body)


def _delay_routes() -> list[dict[str, Any]]:
    return [app_route("delay", "/delay", {"envoy.filters.http.fault": {
                "@type": FAULT_TYPE, "delay": {"fixed_delay": "0.3s",
                                          "percentage": {"numerator": 100}}}}),
            app_route("default", "/")]


def test_a_wait_for_another_future_resumes_the_stream_from_its_callback() -> None:
    """A fault's delay (a future the router's response wait is not): the stream goes on
    from that future's done callback, still without a task."""
    async def body(created: list[str]) -> None:
        hcm, app, ctx = await setup(routes=_delay_routes())
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            await _pooled(c)
            del created[:]
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            r = await c.request("GET", "/delay")
            assert r.status == 200 and json.loads(r.body)["path"] == "/delay"
            assert loop.time() - t0 >= 0.29
            assert stream_tasks(created) == []
            await c.close()
        infos = await logged(ctx, 2)
        assert [(i.response_code, i.flags_string(), i.response_code_details)
                for i in infos] == [(200, "-", "via_upstream"), (200, "DI", "via_upstream")]
        await app.stop()
    run(body)


def test_a_reset_while_waiting_for_another_future_cancels_the_stream() -> None:
    async def body(created: list[str]) -> None:
        hcm, app, ctx = await setup(routes=_delay_routes())
        async with proxy(hcm) as addr:
            c = await H2Client.connect(addr)
            await _pooled(c)
            del created[:]
            sid = c.start("GET", "/delay")
            await asyncio.sleep(0.1)
            c.conn.reset_stream(sid, ErrorCodes.CANCEL)
            c.flush()
            infos = await logged(ctx, 2)
            assert [(i.response_code, i.flags_string(), i.response_code_details)
                    for i in infos][-1] == (0, "DI,DR", "http2.remote_reset")
            assert stream_tasks(created) == []
            await asyncio.sleep(0.4)  # the delay's end finds nothing to resume
            assert [s.path for s in app.seen] == ["/warm"]
            assert (await c.request("GET", "/after")).status == 200
            await c.close()
        await app.stop()
    run(body)
