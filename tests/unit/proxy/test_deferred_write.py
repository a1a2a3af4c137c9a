"""deferred_write.py: a turn's first write goes out at once, later ones at the turn's end,
in order per transport, never lost before a close, dropped once the peer closed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import uvloop

from remora.proxy.deferred_write import DEFER_LIMIT, DeferredOutput, WriteBatch, batch_for


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closing


class FakeLoop:
    """call_soon only: the test plays the loop's turns by hand."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], None]] = []

    def call_soon(self, cb: Callable[[], None]) -> None:
        self.ready.append(cb)

    def end_turn(self) -> None:
        ready, self.ready = self.ready, []
        for cb in ready:
            cb()


def outputs(n: int) -> tuple[FakeLoop, list[FakeTransport], list[DeferredOutput]]:
    loop = FakeLoop()
    batch = WriteBatch(loop)  # type: ignore[arg-type]
    ts = [FakeTransport() for _ in range(n)]
    return loop, ts, [DeferredOutput(t, batch) for t in ts]  # type: ignore[arg-type]


def test_first_write_of_a_turn_goes_out_at_once_later_ones_at_the_turns_end() -> None:
    loop, (a, b), (oa, ob) = outputs(2)
    oa.write(b"one")
    assert a.sent == [b"one"]  # one request per turn: nothing to wait for
    ob.write(b"two")
    oa.write(b"three")
    ob.write(b"four")
    assert b.sent == [] and a.sent == [b"one"]
    assert ob.pending == 7 and oa.pending == 5
    loop.end_turn()
    assert a.sent == [b"one", b"three"]
    assert b.sent == [b"twofour"]  # one write(2) for the turn's bytes of one transport
    assert oa.pending == ob.pending == 0
    # the next turn starts eager again
    ob.write(b"five")
    assert b.sent[-1] == b"five"
    loop.end_turn()
    assert loop.ready == []


def test_flush_hands_the_queued_bytes_over_before_a_close() -> None:
    loop, (_, b), (oa, ob) = outputs(2)
    oa.write(b"x")
    ob.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
    ob.flush()  # what Http1Connection.run and PooledConnection.close do before closing
    b.closing = True
    assert b.sent == [b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"]
    loop.end_turn()  # the turn's end does not write to the closed transport again
    assert b.sent == [b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"]


def test_a_transport_the_peer_closed_drops_the_queued_bytes() -> None:
    loop, (_, b), (oa, ob) = outputs(2)
    oa.write(b"x")
    ob.write(b"late")
    b.closing = True  # connection_lost in the same turn
    loop.end_turn()
    assert b.sent == []


def test_large_writes_go_out_at_once_after_what_was_queued() -> None:
    loop, (_, b), (oa, ob) = outputs(2)
    oa.write(b"x")
    ob.write(b"head")
    big = b"b" * (DEFER_LIMIT + 1)
    ob.write(big)  # the turn's bytes above the limit: flushed now, in order
    assert b.sent == [b"head" + big]
    ob.write(b"tail")
    assert b.sent == [b"head" + big]
    loop.end_turn()
    assert b.sent == [b"head" + big, b"tail"]
    # a large write that starts a transport's turn is not queued at all
    oa.write(b"y")  # eager (new turn)
    ob.write(big)
    assert b.sent[-1] == big
    assert loop.ready  # the end-of-turn call for the eager write
    loop.end_turn()


def test_on_uvloop_the_turns_writes_follow_its_callbacks() -> None:
    uvloop.run(_real_loop())


async def _real_loop() -> None:
    loop = asyncio.get_running_loop()
    batch = batch_for(loop)
    assert batch_for(loop) is batch  # one batch per loop
    a, b = FakeTransport(), FakeTransport()
    oa, ob = DeferredOutput(a, batch), DeferredOutput(b, batch)  # type: ignore[arg-type]
    order: list[str] = []

    def io_callbacks() -> None:  # two requests answered in one turn
        oa.write(b"1")
        order.append("a written" if a.sent else "a queued")
        ob.write(b"2")
        order.append("b written" if b.sent else "b queued")

    loop.call_soon(io_callbacks)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == ["a written", "b queued"]
    assert b.sent == [b"2"]


class FrameCodec:
    """An HTTP/2 connection's part: frames serialised only when the batch flushes it."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.queued: list[bytes] = []
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        if self.queued:
            self.transport.write(b"".join(self.queued))
            self.queued = []


def test_a_deferred_codec_is_flushed_at_the_turns_end_and_leaves_the_eager_write() -> None:
    loop = FakeLoop()
    batch = WriteBatch(loop)  # type: ignore[arg-type]
    h2, down = FakeTransport(), FakeTransport()
    codec = FrameCodec(h2)
    out = DeferredOutput(down, batch)  # type: ignore[arg-type]
    codec.queued.append(b"WINDOW_UPDATE")
    batch.defer(codec)
    assert h2.sent == [] and len(loop.ready) == 1  # never at once, one end-of-turn call
    # an HTTP/1.1 client's response in the same turn is still the turn's first write
    out.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert down.sent == [b"HTTP/1.1 200 OK\r\n\r\n"]
    assert len(loop.ready) == 1  # the same end-of-turn call
    out.write(b"second")  # the turn's second write waits
    assert down.sent == [b"HTTP/1.1 200 OK\r\n\r\n"]
    codec.queued.append(b"DATA")
    loop.end_turn()
    assert h2.sent == [b"WINDOW_UPDATEDATA"] and codec.flushes == 1
    assert down.sent == [b"HTTP/1.1 200 OK\r\n\r\n", b"second"]
    assert loop.ready == []
    # the next turn: a write before the codec's defer is eager again, the call is shared
    out.write(b"next")
    assert down.sent[-1] == b"next"
    batch.defer(codec)
    assert len(loop.ready) == 1
    loop.end_turn()
    assert codec.flushes == 2 and loop.ready == []


def test_a_holding_codec_makes_the_turns_writes_wait() -> None:
    """A downstream HTTP/2 connection's read: the upstream requests of its streams wait
    for the turn's end together."""
    loop = FakeLoop()
    batch = WriteBatch(loop)  # type: ignore[arg-type]
    h2, up = FakeTransport(), FakeTransport()
    codec = FrameCodec(h2)
    out = DeferredOutput(up, batch)  # type: ignore[arg-type]
    batch.defer(codec, hold=True)
    out.write(b"GET / HTTP/1.1\r\n\r\n")
    assert up.sent == [] and len(loop.ready) == 1
    loop.end_turn()
    assert up.sent == [b"GET / HTTP/1.1\r\n\r\n"] and codec.flushes == 1
    out.write(b"next")  # the next turn starts eager again
    assert up.sent[-1] == b"next"
    loop.end_turn()
    assert loop.ready == []
