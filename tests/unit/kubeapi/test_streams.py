"""A port-forwarded stream's own writer (remora.kubeapi.streams.PodStream), over real
loopback connections: a peer that does not read holds back its own stream only, up to
the stream's bound; the tunnel test with kubectl is in tests/netns/
test_kubeapi_workflows.py."""

from __future__ import annotations

import asyncio
import socket

from remora.kubeapi.streams import PodStream


async def _pair() -> tuple[asyncio.StreamWriter, socket.socket]:
    """A connection whose far end is a plain socket that reads only when told to, with
    small buffers on both ends so the kernel holds little."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    _, writer = await asyncio.open_connection(*listener.getsockname())
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    far, _ = await asyncio.get_running_loop().sock_accept(listener)
    listener.close()
    return writer, far


async def _read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while chunk := await loop.sock_recv(sock, 65536):
        data += chunk
    return data


def test_a_stalled_peer_holds_back_only_its_own_stream() -> None:
    async def run() -> None:
        stalled_writer, stalled_far = await _pair()
        moving_writer, moving_far = await _pair()
        stalled_far.setblocking(False)
        moving_far.setblocking(False)
        stalled, moving = PodStream(limit=32 << 20), PodStream()
        await stalled.put(b"early")  # before the connection: kept, then written first
        stalled.attach(stalled_writer)
        moving.attach(moving_writer)
        # 4 MiB to a peer that reads nothing: every put returns at once (the bound is
        # 32 MiB), where waiting for each drain would never end
        await asyncio.wait_for(asyncio.gather(*(stalled.put(b"x" * (1 << 20))
                                                for _ in range(4))), 5)
        await asyncio.sleep(0.2)
        assert stalled.buffered >= 2 << 20  # most of it waits in the stream's buffer
        # the other stream goes through meanwhile, its end as write_eof
        await moving.put(b"y" * (1 << 20))
        moving.end()
        got = await asyncio.wait_for(_read_all(moving_far), 10)
        assert got == b"y" * (1 << 20)
        # the stalled peer reads at last: everything, in order, the early bytes first
        stalled.end()
        got = await asyncio.wait_for(_read_all(stalled_far), 20)
        assert got == b"early" + b"x" * (4 << 20)
        for w in (stalled_writer, moving_writer):
            w.close()
        stalled_far.close()
        moving_far.close()

    asyncio.run(run())


def test_past_its_bound_a_stream_waits_until_it_drains_or_closes() -> None:
    async def run() -> None:
        writer, far = await _pair()
        far.setblocking(False)
        stream = PodStream(limit=256 << 10)
        stream.attach(writer)
        for _ in range(64):  # until the kernel's buffers and then the bound are full
            if stream.buffered >= stream.limit:
                break
            await asyncio.wait_for(stream.put(b"z" * (64 << 10)), 5)
            await asyncio.sleep(0.02)
        blocked = asyncio.ensure_future(stream.put(b"z" * (64 << 10)))
        await asyncio.sleep(0.3)
        assert stream.buffered >= stream.limit and not blocked.done()
        stream.close()  # a reset: the waiting put returns and what was held is dropped
        await asyncio.wait_for(blocked, 2)
        assert stream.buffered == 0
        await stream.put(b"after")  # ignored once closed
        assert stream.buffered == 0
        await stream.wait_closed()
        writer.close()
        far.close()

    asyncio.run(run())
