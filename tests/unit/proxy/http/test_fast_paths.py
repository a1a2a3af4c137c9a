"""The per-request shortcuts of the HTTP/1.1 path against the general code they stand in
for: the state table's one-call moves (codec_state.py) give the same states (or the same
refusal) as the events they combine, from every state either role can be in, and a
response decoder reused on a pooled connection decodes the next response like a new one,
but only when llhttp ended the last message where it ended for us."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from remora.proxy.http.codec import RESPONSE_ENDED, ResponseDecoder, ResponseError
from remora.proxy.http.codec_state import (
    CLIENT,
    END_OF_MESSAGE,
    REQUEST,
    RESPONSE,
    SERVER,
    SWITCH_CONNECT,
    SWITCH_UPGRADE,
    TRANSITIONS,
    ConnectionState,
    IllegalTransition,
)

_CLIENT_STATES = sorted(TRANSITIONS[CLIENT])
_SERVER_STATES = sorted(TRANSITIONS[SERVER])
_STATES = list(itertools.product(_CLIENT_STATES, _SERVER_STATES, (True, False),
                                 (None, SWITCH_UPGRADE, SWITCH_CONNECT)))


def _state(client: str, server: str, keep_alive: bool, switch: str | None) -> ConnectionState:
    st = ConnectionState()
    st.client, st.server, st.keep_alive, st.pending_switch = client, server, keep_alive, switch
    return st


def _outcome(st: ConnectionState, move: Callable[[ConnectionState], object]) -> object:
    try:
        result = move(st)
    except IllegalTransition:
        return "refused"
    return (st.client, st.server, st.keep_alive, st.pending_switch, result)


def _general_whole_request(st: ConnectionState) -> None:
    st.process_event(CLIENT, REQUEST)
    st.process_event(CLIENT, END_OF_MESSAGE)


def _general_next_cycle(st: ConnectionState) -> bool:
    if not st.reusable:
        return False
    st.start_next_cycle()
    return True


@pytest.mark.parametrize(("shortcut", "general"), [
    (ConnectionState.process_whole_request, _general_whole_request),
    (ConnectionState.process_response_head, lambda st: st.process_event(SERVER, RESPONSE)),
    (ConnectionState.process_response_end,
     lambda st: st.process_event(SERVER, END_OF_MESSAGE)),
    (ConnectionState.next_cycle, _general_next_cycle),
], ids=["whole_request", "response_head", "response_end", "next_cycle"])
def test_shortcut_moves_like_the_events_it_combines(
        shortcut: Callable[[ConnectionState], object],
        general: Callable[[ConnectionState], object]) -> None:
    for fields in _STATES:
        assert _outcome(_state(*fields), shortcut) == _outcome(_state(*fields), general), fields


RESPONSE_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def _snapshot(st: ConnectionState) -> tuple[str, str, bool, str | None]:
    return (st.client, st.server, st.keep_alive, st.pending_switch)


def _general_response(st: ConnectionState) -> object:
    """The states after the head (what the router's on_headers sees) and at the end."""
    try:
        st.process_event(SERVER, RESPONSE)
        head = _snapshot(st)
        st.process_event(SERVER, END_OF_MESSAGE)
    except IllegalTransition:
        st.process_error(SERVER)
        return "refused"
    return head


def _decoded_response(st: ConnectionState) -> object:
    heads: list[object] = []
    dec = ResponseDecoder(False, lambda d: heads.append(_snapshot(d.state)), lambda b: None,
                          state=st)
    try:
        dec.feed(RESPONSE_OK)
    except ResponseError:
        return "refused"
    (head,) = heads
    return head


def test_a_decoded_response_moves_the_state_like_the_events() -> None:
    # ResponseDecoder makes the state table's usual moves inline (head: SEND_RESPONSE ->
    # SEND_BODY, end: SEND_BODY -> DONE) and the events otherwise: from every state in
    # which it decodes a response (not after one ended), the same states as the events
    decoded = [f for f in _STATES if f[1] not in RESPONSE_ENDED]
    assert decoded
    for fields in decoded:
        assert (_outcome(_state(*fields), _decoded_response)
                == _outcome(_state(*fields), _general_response)), fields


def _exchange(dec: ResponseDecoder | None, state: ConnectionState, data: bytes,
              head: bool = False) -> tuple[ResponseDecoder, list[object]]:
    seen: list[object] = []

    def on_headers(d: ResponseDecoder) -> None:
        seen.append((d.status, list(d.headers)))

    state.process_whole_request()
    if dec is None:
        dec = ResponseDecoder(head, on_headers, seen.append, state=state)
    else:
        dec.reset(head, on_headers, seen.append)
    dec.feed(data)
    return dec, seen


def test_a_reset_decoder_reads_the_next_response_like_a_new_one() -> None:
    state = ConnectionState()
    dec, first = _exchange(None, state, RESPONSE_OK)
    assert dec.complete and dec.parser_idle and state.next_cycle()
    again, second = _exchange(dec, state,
                              b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n"
                              b"3\r\nabc\r\n0\r\n\r\n")
    assert again is dec and dec.complete and dec.chunked and dec.content_length is None
    _, expected = _exchange(None, ConnectionState(),
                                b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n"
                                b"3\r\nabc\r\n0\r\n\r\n")
    assert first == [(200, [("content-length", "2")]), b"ok"]
    assert second == expected == [(404, [("transfer-encoding", "chunked")]), b"abc"]


def test_a_head_response_leaves_a_parser_that_is_not_reused() -> None:
    # llhttp still waits for the body the HEAD response's content-length announces: the
    # next response needs a new parser (the router makes one when parser_idle is False)
    state = ConnectionState()
    dec, seen = _exchange(None, state, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                          head=True)
    assert dec.complete and not dec.parser_idle and state.next_cycle()
    assert seen == [(200, [("content-length", "5")])]


def test_an_interim_response_is_not_the_end_of_the_message() -> None:
    state = ConnectionState()
    dec, _ = _exchange(None, state, b"HTTP/1.1 100 Continue\r\n\r\n")
    assert not dec.parser_idle and not dec.complete
    dec.feed(RESPONSE_OK)
    assert dec.parser_idle and dec.complete
