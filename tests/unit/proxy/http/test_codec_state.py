"""The HTTP/1.1 connection state table (codec_state.py) without sockets: events in, both
roles' states and the reuse decision out; an event the table does not allow raises.
Then the response decoder on a connection's state, as the router drives it."""

from __future__ import annotations

import pytest

from remora.proxy.http.codec import ResponseDecoder, ResponseError
from remora.proxy.http.codec_state import (
    CLIENT,
    CLOSED,
    CONNECTION_CLOSED,
    DATA,
    DONE,
    END_OF_MESSAGE,
    ERROR,
    IDLE,
    INFORMATIONAL,
    MIGHT_SWITCH_PROTOCOL,
    MUST_CLOSE,
    REQUEST,
    RESPONSE,
    SEND_BODY,
    SEND_RESPONSE,
    SERVER,
    SWITCH_UPGRADE,
    SWITCHED_PROTOCOL,
    ConnectionState,
    IllegalTransition,
)


def play(*events: tuple[str, str] | tuple[str, str, str]) -> ConnectionState:
    st = ConnectionState()
    for ev in events:
        st.process_event(*ev)
    return st


def test_a_full_cycle_and_the_next() -> None:
    st = ConnectionState()
    assert (st.client, st.server) == (IDLE, IDLE)
    st.process_event(CLIENT, REQUEST)
    assert (st.client, st.server) == (SEND_BODY, SEND_RESPONSE)
    st.process_event(CLIENT, DATA)
    st.process_event(CLIENT, END_OF_MESSAGE)
    assert (st.client, st.server) == (DONE, SEND_RESPONSE)
    st.process_event(SERVER, INFORMATIONAL)  # 100 Continue
    assert st.server == SEND_RESPONSE
    st.process_event(SERVER, RESPONSE)
    st.process_event(SERVER, DATA)
    assert not st.reusable
    st.process_event(SERVER, END_OF_MESSAGE)
    assert (st.client, st.server) == (DONE, DONE) and st.reusable
    st.start_next_cycle()
    assert (st.client, st.server) == (IDLE, IDLE)


def test_response_before_the_request_body_ended_is_not_reusable_yet() -> None:
    st = play((CLIENT, REQUEST), (SERVER, RESPONSE), (SERVER, END_OF_MESSAGE))
    assert (st.client, st.server) == (SEND_BODY, DONE) and not st.reusable
    with pytest.raises(IllegalTransition):
        st.start_next_cycle()
    st.process_event(CLIENT, END_OF_MESSAGE)
    assert st.reusable


@pytest.mark.parametrize("events,role,event", [
    ((), SERVER, END_OF_MESSAGE),  # nothing to end
    ((), CLIENT, DATA),  # a body before any head
    (((CLIENT, REQUEST), (CLIENT, END_OF_MESSAGE)), CLIENT, REQUEST),  # no pipelining here
    (((CLIENT, REQUEST),), SERVER, DATA),  # a body before the response head
    (((CLIENT, REQUEST), (SERVER, RESPONSE)), SERVER, RESPONSE),  # a second head
    (((CLIENT, REQUEST), (SERVER, RESPONSE), (SERVER, END_OF_MESSAGE)), SERVER, DATA),
    (((CLIENT, REQUEST), (SERVER, RESPONSE)), SERVER, INFORMATIONAL),  # 1xx after final
])
def test_illegal_events_raise(events: tuple[tuple[str, str], ...], role: str,
                              event: str) -> None:
    st = play(*events)
    before = (st.client, st.server)
    with pytest.raises(IllegalTransition):
        st.process_event(role, event)
    assert (st.client, st.server) == before  # a refused event changes nothing


def test_keep_alive_disabled_makes_done_must_close() -> None:
    st = play((CLIENT, REQUEST), (CLIENT, END_OF_MESSAGE), (SERVER, RESPONSE))
    st.process_keep_alive_disabled()  # Connection: close on the response
    st.process_event(SERVER, END_OF_MESSAGE)
    assert (st.client, st.server) == (MUST_CLOSE, MUST_CLOSE) and not st.reusable
    st.process_event(CLIENT, CONNECTION_CLOSED)
    st.process_event(SERVER, CONNECTION_CLOSED)
    assert (st.client, st.server) == (CLOSED, CLOSED)


def test_accepted_upgrade_switches_both_roles() -> None:
    st = play((CLIENT, REQUEST, SWITCH_UPGRADE))
    assert st.client == SEND_BODY
    # the proposal was not sent whole yet: accepting it is refused
    with pytest.raises(IllegalTransition):
        st.process_event(SERVER, INFORMATIONAL, SWITCH_UPGRADE)
    st.process_event(CLIENT, END_OF_MESSAGE)
    assert st.client == MIGHT_SWITCH_PROTOCOL  # waits for the answer
    st.process_event(SERVER, INFORMATIONAL, SWITCH_UPGRADE)
    assert (st.client, st.server) == (SWITCHED_PROTOCOL, SWITCHED_PROTOCOL)
    assert not st.reusable
    with pytest.raises(IllegalTransition):
        st.process_event(SERVER, DATA)


def test_declined_upgrade_returns_to_done() -> None:
    st = play((CLIENT, REQUEST, SWITCH_UPGRADE), (CLIENT, END_OF_MESSAGE), (SERVER, RESPONSE))
    assert st.client == DONE and st.pending_switch is None
    st.process_event(SERVER, END_OF_MESSAGE)
    assert st.reusable


def test_a_switch_nobody_proposed_is_refused() -> None:
    st = play((CLIENT, REQUEST), (CLIENT, END_OF_MESSAGE))
    with pytest.raises(IllegalTransition):
        st.process_event(SERVER, INFORMATIONAL, SWITCH_UPGRADE)


def test_error_ends_the_role() -> None:
    st = play((CLIENT, REQUEST), (CLIENT, END_OF_MESSAGE), (SERVER, RESPONSE))
    st.process_error(SERVER)
    assert st.server == ERROR and not st.reusable
    with pytest.raises(IllegalTransition):
        st.process_event(SERVER, END_OF_MESSAGE)


# -- the response decoder on a connection's state ---------------------------------------
def _decode(state: ConnectionState, *chunks: bytes, head: bool = False) -> ResponseDecoder:
    dec = ResponseDecoder(head, lambda d: None, lambda b: None, state=state)
    for c in chunks:
        dec.feed(c)
    return dec


def test_decoder_moves_the_server_role() -> None:
    st = play((CLIENT, REQUEST), (CLIENT, END_OF_MESSAGE))
    dec = _decode(st, b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 4",
                  b"\r\n\r\nab")
    assert st.server == SEND_BODY and not dec.complete and dec.headers_done
    dec.feed(b"cd")
    assert st.server == DONE and dec.complete and st.reusable


def test_decoder_connection_close_and_eof_framing() -> None:
    st = play((CLIENT, REQUEST), (CLIENT, END_OF_MESSAGE))
    dec = _decode(st, b"HTTP/1.1 200 OK\r\n\r\nuntil close")
    assert st.server == SEND_BODY and dec.eof_completes()
    dec.end_at_eof()
    assert st.server == MUST_CLOSE and dec.complete and not st.reusable
    st2 = play((CLIENT, REQUEST), (CLIENT, END_OF_MESSAGE))
    _decode(st2, b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
    assert st2.server == MUST_CLOSE


def test_decoder_trailing_bytes_forbid_reuse() -> None:
    st = play((CLIENT, REQUEST), (CLIENT, END_OF_MESSAGE))
    dec = _decode(st, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert dec.complete and dec.trailing and st.server == MUST_CLOSE and not st.reusable


def test_decoder_requested_101_switches() -> None:
    st = play((CLIENT, REQUEST, SWITCH_UPGRADE), (CLIENT, END_OF_MESSAGE))
    dec = _decode(st, b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                      b"connection: upgrade\r\n\r\nframes")
    assert (st.client, st.server) == (SWITCHED_PROTOCOL, SWITCHED_PROTOCOL)
    assert dec.complete and dec.upgrade_tail == b"frames"


def test_decoder_unrequested_101_must_close() -> None:
    st = play((CLIENT, REQUEST), (CLIENT, END_OF_MESSAGE))
    dec = _decode(st, b"HTTP/1.1 101 Switching Protocols\r\nupgrade: foo\r\n"
                      b"connection: upgrade\r\n\r\nx")
    assert dec.complete and st.server == MUST_CLOSE and not st.reusable


def test_decoder_malformed_response_is_an_error_state() -> None:
    st = play((CLIENT, REQUEST), (CLIENT, END_OF_MESSAGE))
    with pytest.raises(ResponseError):
        _decode(st, b"not http\r\n\r\n")
    assert st.server == ERROR and not st.reusable


def test_decoder_refuses_a_response_before_any_request() -> None:
    st = ConnectionState()  # the server role is IDLE: no request was sent
    with pytest.raises(ResponseError):
        _decode(st, b"HTTP/1.1 100 Continue\r\n\r\n")


# -- the pooled connection's protocol (pool.PooledConnection) without sockets ------------
class _Transport:
    """What PooledConnection uses of an asyncio transport."""

    def __init__(self, protocol: object) -> None:
        self.protocol = protocol
        self.closed = False
        self.reading = True
        self.written: list[bytes] = []

    def get_protocol(self) -> object:
        return self.protocol

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0


class _Writer:
    def __init__(self, transport: _Transport) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self) -> None:
        self.transport.close()


class _Handler:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False

    def upstream_data(self, data: bytes) -> None:
        self.data.append(data)

    def upstream_eof(self) -> None:
        self.eof = True


def _pooled(buffered: bytes = b"") -> tuple[object, _Transport, list[int]]:
    import asyncio
    from typing import cast

    from remora.proxy.http.pool import PooledConnection
    from remora.proxy.interfaces import Upstream

    async def build() -> tuple[object, _Transport, list[int]]:
        reader = asyncio.StreamReader()
        reader.feed_data(buffered)  # read by the core's protocol before the take-over
        transport = _Transport(object())
        strays: list[int] = []
        up = Upstream(reader, cast(asyncio.StreamWriter, _Writer(transport)), "10.0.0.1:80",
                      "10.0.0.2:4000")
        pc = PooledConnection(("c", "10.0.0.1", 80, None), up,
                              on_stray=lambda: strays.append(1))
        pc.take_over()
        assert transport.protocol is pc
        return pc, transport, strays
    return asyncio.run(build())


def test_pooled_connection_hands_reads_to_its_handler_and_holds_the_rest() -> None:
    from remora.proxy.http.pool import PooledConnection
    pc, transport, strays = _pooled(b"early")
    assert isinstance(pc, PooledConnection)
    assert pc.stray_bytes()  # what the StreamReader buffered is kept, not lost
    h = _Handler()
    pc.attach(h)
    assert h.data == [b"early"] and not pc.stray_bytes()
    pc.data_received(b"more")
    assert h.data == [b"early", b"more"]
    pc.handler = None
    pc.data_received(b"late")  # no handler, not idle in a pool: held for the next reader
    assert pc.stray_bytes() and strays == [] and not transport.closed
    pc.eof_received()
    h2 = _Handler()
    pc.attach(h2)
    assert h2.data == [b"late"] and h2.eof and not pc.usable()


def test_pooled_connection_idle_bytes_close_it_and_count_once() -> None:
    from remora.proxy.http.pool import ConnectionPool, PooledConnection
    pc, transport, strays = _pooled()
    assert isinstance(pc, PooledConnection)
    pool = ConnectionPool()
    pool.release(pc)
    assert pool.idle_count() == 1
    pc.data_received(b"HTTP/1.1 200 OK\r\n\r\n")  # nobody asked: upstream_cx_protocol_error
    assert strays == [1] and transport.closed and pool.idle_count() == 0
    pc.data_received(b"x")
    assert strays == [1]
