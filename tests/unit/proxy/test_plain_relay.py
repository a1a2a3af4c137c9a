"""tcp_proxy's plain-socket relay on its own, over loopback TCP pairs (no root needed), under
both the default asyncio loop and uvloop (the sidecar's): bytes exact both ways with
half-close, bytes the StreamReaders buffered before the switch, backpressure with one
bounded buffer per direction, buffers held only while bytes wait, a reset."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
from collections.abc import Awaitable, Callable

import pytest

from remora.proxy.network_filters import plain_relay
from remora.proxy.network_filters.plain_relay import PlainRelay, plain_socket_fd

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _pair() -> tuple[Streams, Streams]:
    """Two ends of one loopback TCP connection, as asyncio streams."""
    accepted: asyncio.Future[Streams] = asyncio.get_running_loop().create_future()

    async def on_accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.set_result((r, w))
    server = await asyncio.start_server(on_accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await asyncio.open_connection("127.0.0.1", port)
    peer = await accepted
    server.close()
    return client, peer


def _run(main: Callable[[], Awaitable[None]], loop_kind: str) -> None:
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(main())  # type: ignore[attr-defined]
    else:
        asyncio.run(main())


async def _relayed() -> tuple[Streams, Streams, PlainRelay, asyncio.Task[None]]:
    """client <-> [downstream | relay | upstream] <-> app"""
    (client, down) = await _pair()
    (up, app) = await _pair()
    fd_down = plain_socket_fd(down[1])
    fd_up = plain_socket_fd(up[1])
    assert fd_down is not None and fd_up is not None
    relay = PlainRelay(fd_down, fd_up)

    async def run() -> None:
        try:
            await relay.run(down[0], down[1], up[0], up[1])
        finally:
            down[1].close()
            up[1].close()
    return client, app, relay, asyncio.ensure_future(run())


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_bytes_exact_both_ways_with_half_close_and_buffered_bytes(loop_kind: str) -> None:
    size_up = 8 * 1024 * 1024 + 13
    size_down = 3 * 1024 * 1024 + 7
    to_app = os.urandom(size_up)
    to_client = os.urandom(size_down)

    async def main() -> None:
        (client, down) = await _pair()
        (up, app) = await _pair()
        # bytes already read by the StreamReaders before the relay takes over
        client[1].write(b"early-up")
        app[1].write(b"early-down")
        await asyncio.sleep(0.05)
        await down[0].readexactly(0)
        fd_down, fd_up = plain_socket_fd(down[1]), plain_socket_fd(up[1])
        assert fd_down is not None and fd_up is not None
        relay = PlainRelay(fd_down, fd_up)
        task = asyncio.ensure_future(relay.run(down[0], down[1], up[0], up[1]))

        async def send_up() -> None:
            for i in range(0, size_up, 1 << 20):
                client[1].write(to_app[i:i + (1 << 20)])
                await client[1].drain()
            client[1].write_eof()

        async def app_side() -> bytes:
            # the app answers and half-closes first, then reads the whole upload
            app[1].write(to_client)
            await app[1].drain()
            app[1].write_eof()
            return await app[0].read()

        sender = asyncio.ensure_future(send_up())
        app_task = asyncio.ensure_future(app_side())
        got_client = await client[0].read()
        await sender
        got_app = await app_task
        await asyncio.wait_for(task, 10)
        assert hashlib.sha256(got_app).digest() == hashlib.sha256(b"early-up" + to_app).digest()
        assert hashlib.sha256(got_client).digest() == \
            hashlib.sha256(b"early-down" + to_client).digest()
        assert relay.rx == size_up + 8 and relay.tx == size_down + 10
        assert relay.error is None
        for w in (client[1], down[1], up[1], app[1]):
            w.close()

    _run(main, loop_kind)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_reset_on_one_side_ends_both(loop_kind: str) -> None:
    async def main() -> None:
        client, app, relay, task = await _relayed()
        client[1].write(b"hello")
        assert await app[0].readexactly(5) == b"hello"
        # the app resets its connection (RST via SO_LINGER 0)
        sock = app[1].get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        app[1].transport.abort()
        await asyncio.wait_for(task, 5)
        assert isinstance(relay.error, ConnectionResetError)
        # the client's side is closed too
        assert await asyncio.wait_for(client[0].read(), 5) == b""
        client[1].close()

    _run(main, loop_kind)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_stop_ends_an_idle_relay(loop_kind: str) -> None:
    async def main() -> None:
        client, app, relay, task = await _relayed()
        await asyncio.sleep(0.05)
        assert not task.done()
        relay.stop()
        await asyncio.wait_for(task, 5)
        assert await asyncio.wait_for(client[0].read(), 5) == b""
        assert await asyncio.wait_for(app[0].read(), 5) == b""
        client[1].close()
        app[1].close()

    _run(main, loop_kind)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_stalled_receiver_stops_the_reads_and_one_bounded_buffer_is_held(
        loop_kind: str) -> None:
    """The app reads nothing: the relay reads the client only while nothing it read waits,
    so what it took stays within the sockets' kernel buffers plus one read of at most the
    downstream limit, and no read is larger than that limit. Once the app reads, every
    byte arrives in order and the buffer goes back to the free list."""
    limit = 64 * 1024
    total = 32 * 1024 * 1024
    data = os.urandom(total)
    reads: list[int] = []

    class Recording(PlainRelay):
        def _add_rx(self, n: int) -> None:
            reads.append(n)
            super()._add_rx(n)

    async def main() -> None:
        (client, down) = await _pair()
        (up, app) = await _pair()
        fd_down, fd_up = plain_socket_fd(down[1]), plain_socket_fd(up[1])
        assert fd_down is not None and fd_up is not None
        relay = Recording(fd_down, fd_up, down_limit=limit)
        task = asyncio.ensure_future(relay.run(down[0], down[1], up[0], up[1]))
        app[1].transport.pause_reading()  # type: ignore[attr-defined]

        async def send() -> None:
            for i in range(0, total, 1 << 20):
                client[1].write(data[i:i + (1 << 20)])
                await client[1].drain()
            client[1].write_eof()
        sender = asyncio.ensure_future(send())
        await asyncio.sleep(0.5)
        stalled_rx = relay.rx
        await asyncio.sleep(0.3)
        assert relay.rx == stalled_rx  # no read while the app's side is full
        assert not sender.done()  # the client is held back in turn
        assert stalled_rx < total // 2
        up_dir = relay._dirs[0]
        assert up_dir.buf is not None and len(up_dir.buf) == limit  # one buffer, bounded
        app[1].transport.resume_reading()  # type: ignore[attr-defined]
        got = await asyncio.wait_for(app[0].read(), 20)
        await sender
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        assert max(reads) <= limit
        client[1].close()
        app[1].close()
        await asyncio.wait_for(task, 5)
        assert all(d.buf is None for d in relay._dirs)

    _run(main, loop_kind)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_an_idle_relay_holds_no_buffer(loop_kind: str) -> None:
    """Request/response traffic: each read's buffer goes back to the free list as soon as
    it was written, so a connection between messages holds none, and the next read reuses
    the same buffer (no allocation per message)."""
    async def main() -> None:
        client, app, relay, task = await _relayed()
        for i in range(3):
            client[1].write(b"ping %d" % i)
            assert await app[0].readexactly(6) == b"ping %d" % i
            app[1].write(b"pong %d" % i)
            assert await client[0].readexactly(6) == b"pong %d" % i
            assert all(d.buf is None and d.pending is None for d in relay._dirs)
        spare = plain_relay._free[plain_relay.DEFAULT_LIMIT]
        assert 1 <= len(spare) <= plain_relay.POOL_KEEP
        relay.stop()
        await asyncio.wait_for(task, 5)
        client[1].close()
        app[1].close()

    _run(main, loop_kind)


def test_tls_transports_are_not_relayed_by_socket(tmp_path: object) -> None:
    """A TLS transport's bytes are ciphertext on the socket: no fd is offered for it."""
    class _FakeTransport:
        def __init__(self, extra: dict[str, object]) -> None:
            self.extra = extra

        def is_closing(self) -> bool:
            return False

        def get_extra_info(self, name: str) -> object:
            return self.extra.get(name)

    class _FakeWriter:
        def __init__(self, transport: _FakeTransport) -> None:
            self.transport = transport

    with socket.socket() as sock:
        ctx = ssl.create_default_context()
        tls = _FakeWriter(_FakeTransport({"socket": sock, "sslcontext": ctx}))
        plain = _FakeWriter(_FakeTransport({"socket": sock}))
        assert plain_socket_fd(tls) is None  # type: ignore[arg-type]
        assert plain_socket_fd(plain) == sock.fileno()  # type: ignore[arg-type]
