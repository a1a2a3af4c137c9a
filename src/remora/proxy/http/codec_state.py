"""The HTTP/1.1 request/response cycle as an explicit state table, free of I/O.

The same shape as h11's ``_state.py`` (each side of a connection, CLIENT and SERVER, has
its own state; events move it along a table; anything else is a protocol error), written
for remora's two uses: the upstream connection (the router is the CLIENT, the upstream
the SERVER) and the decoders (codec.py), which consult it instead of keeping their own
flags for "head seen", "message complete", "switched protocols" and "must close".

Per role the states are IDLE (no message yet), SEND_BODY (a head was sent, its body
follows), DONE (the message ended, the connection may carry another), MUST_CLOSE (it
ended and the connection may not be reused: ``Connection: close``, a response framed by
the connection's close, a request body left unfinished), CLOSED, and SWITCHED_PROTOCOL
(after a 101 to an Upgrade request, or a 2xx to CONNECT: the bytes are no HTTP any more).
The SERVER also has SEND_RESPONSE (the request head arrived, its response has not) and
the CLIENT MIGHT_SWITCH_PROTOCOL (it proposed an upgrade and must wait for the answer
before it may send anything else), as in h11. ERROR is where a refused event leaves the
role. A connection goes back to IDLE for the next cycle only when both roles are DONE
(``start_next_cycle``); that is the pool's condition for reusing it (RFC 9112 section 9.3,
Envoy's codec: a connection is reused only after a complete request and response and
without ``Connection: close``).
"""

from __future__ import annotations

from typing import Final

# roles
CLIENT: Final = "CLIENT"
SERVER: Final = "SERVER"

# states
IDLE: Final = "IDLE"
SEND_RESPONSE: Final = "SEND_RESPONSE"
SEND_BODY: Final = "SEND_BODY"
DONE: Final = "DONE"
MUST_CLOSE: Final = "MUST_CLOSE"
CLOSED: Final = "CLOSED"
MIGHT_SWITCH_PROTOCOL: Final = "MIGHT_SWITCH_PROTOCOL"
SWITCHED_PROTOCOL: Final = "SWITCHED_PROTOCOL"
ERROR: Final = "ERROR"

# events
REQUEST: Final = "REQUEST"  # a request head (CLIENT)
INFORMATIONAL: Final = "INFORMATIONAL"  # a 1xx response head (SERVER)
RESPONSE: Final = "RESPONSE"  # a final response head (SERVER)
DATA: Final = "DATA"
END_OF_MESSAGE: Final = "END_OF_MESSAGE"
CONNECTION_CLOSED: Final = "CONNECTION_CLOSED"

# how a SERVER event accepts a switch the CLIENT proposed
SWITCH_UPGRADE: Final = "SWITCH_UPGRADE"  # 101 to an Upgrade request
SWITCH_CONNECT: Final = "SWITCH_CONNECT"  # 2xx to CONNECT

# (role, state) -> {event or (event, switch): new state}. Anything not listed is illegal.
TRANSITIONS: Final[dict[str, dict[str, dict[str | tuple[str, str], str]]]] = {
    CLIENT: {
        IDLE: {REQUEST: SEND_BODY, CONNECTION_CLOSED: CLOSED},
        SEND_BODY: {DATA: SEND_BODY, END_OF_MESSAGE: DONE},
        DONE: {CONNECTION_CLOSED: CLOSED},
        MUST_CLOSE: {CONNECTION_CLOSED: CLOSED},
        CLOSED: {CONNECTION_CLOSED: CLOSED},
        MIGHT_SWITCH_PROTOCOL: {},
        SWITCHED_PROTOCOL: {},
        ERROR: {},
    },
    SERVER: {
        # the server's IDLE moves on the client's request head, not on an event of its own
        IDLE: {CONNECTION_CLOSED: CLOSED, RESPONSE: SEND_BODY},
        SEND_RESPONSE: {
            INFORMATIONAL: SEND_RESPONSE,
            RESPONSE: SEND_BODY,
            (INFORMATIONAL, SWITCH_UPGRADE): SWITCHED_PROTOCOL,
            (RESPONSE, SWITCH_CONNECT): SWITCHED_PROTOCOL,
        },
        SEND_BODY: {DATA: SEND_BODY, END_OF_MESSAGE: DONE},
        DONE: {CONNECTION_CLOSED: CLOSED},
        MUST_CLOSE: {CONNECTION_CLOSED: CLOSED},
        CLOSED: {CONNECTION_CLOSED: CLOSED},
        SWITCHED_PROTOCOL: {},
        ERROR: {},
    },
}


# the same table flattened per role, for one dict lookup per event
_CLIENT_MOVES: Final = {(state, event): new for state, moves in TRANSITIONS[CLIENT].items()
                        for event, new in moves.items()}
_SERVER_MOVES: Final = {(state, event): new for state, moves in TRANSITIONS[SERVER].items()
                        for event, new in moves.items()}


class IllegalTransition(Exception):
    """ROLE cannot take EVENT in its current state (a protocol error)."""

    def __init__(self, role: str, state: str, event: str) -> None:
        super().__init__(f"{role} cannot take {event} in state {state}")
        self.role = role
        self.state = state
        self.event = event


class ConnectionState:
    """Both roles' states of one HTTP/1.1 connection, and the rules that move them."""

    __slots__ = ("client", "keep_alive", "pending_switch", "server")

    def __init__(self) -> None:
        self.client = IDLE
        self.server = IDLE
        self.keep_alive = True
        self.pending_switch: str | None = None  # SWITCH_UPGRADE / SWITCH_CONNECT proposed

    def state(self, role: str) -> str:
        return self.client if role == CLIENT else self.server

    def process_error(self, role: str) -> None:
        """ROLE broke the protocol: it ends in ERROR (the connection is not reused)."""
        if role == CLIENT:
            self.client = ERROR
        else:
            self.server = ERROR

    def process_keep_alive_disabled(self) -> None:
        """``Connection: close`` (or HTTP/1.0) on either message: no next cycle."""
        self.keep_alive = False
        self._fire_state_triggered()

    def process_event(self, role: str, event: str, switch: str | None = None) -> None:
        """Move ROLE by EVENT. SWITCH: on a CLIENT REQUEST, the switch it proposes
        (an Upgrade request, a CONNECT); on a SERVER event, the proposal it accepts.
        Raises IllegalTransition for an event the table does not allow (and changes
        nothing then)."""
        if role == CLIENT:
            new = _CLIENT_MOVES.get((self.client, event))
            if new is None:
                raise IllegalTransition(role, self.client, event)
            self.client = new
            if event == REQUEST:
                self.pending_switch = switch
                if self.server == IDLE:
                    self.server = SEND_RESPONSE  # the request head starts the response
        else:
            if switch is not None:
                if switch != self.pending_switch or self.client != MIGHT_SWITCH_PROTOCOL:
                    # only a proposed switch can be accepted, once it was sent whole
                    raise IllegalTransition(role, self.server, f"{event} accepting {switch}")
                new = _SERVER_MOVES.get((self.server, (event, switch)))
            else:
                new = _SERVER_MOVES.get((self.server, event))
            if new is None:
                raise IllegalTransition(role, self.server, event)
            self.server = new
            if event == RESPONSE and new != SWITCHED_PROTOCOL:
                self.pending_switch = None  # a final response declines the proposal
        if (self.pending_switch is not None or not self.keep_alive
                or self.client == MIGHT_SWITCH_PROTOCOL or new == SWITCHED_PROTOCOL):
            self._fire_state_triggered()

    def process_whole_request(self) -> None:
        """CLIENT REQUEST then END_OF_MESSAGE, no switch proposed: a request sent whole
        in one write (the router's usual request). The table's two moves in one call when
        nothing else applies (both roles IDLE, keep-alive), else the two events."""
        if self.client == IDLE and self.server == IDLE and self.keep_alive:
            # IDLE -REQUEST-> SEND_BODY -END_OF_MESSAGE-> DONE; the head starts the
            # server's response; no proposal, so no state-triggered move
            self.client = DONE
            self.server = SEND_RESPONSE
            self.pending_switch = None
            return
        self.process_event(CLIENT, REQUEST)
        self.process_event(CLIENT, END_OF_MESSAGE)

    def process_response_head(self) -> None:
        """SERVER RESPONSE (a final response's head, accepting no switch): the table's
        move SEND_RESPONSE -> SEND_BODY when nothing state-triggered can follow, else
        process_event. ResponseDecoder makes the same move inline (as it makes
        process_response_end's at a response's end: test_fast_paths.py holds the copies
        to the events)."""
        if (self.server == SEND_RESPONSE and self.pending_switch is None and self.keep_alive
                and self.client != MIGHT_SWITCH_PROTOCOL):
            self.server = SEND_BODY
            return
        self.process_event(SERVER, RESPONSE)

    def process_response_end(self) -> None:
        """SERVER END_OF_MESSAGE from SEND_BODY (the response ended): DONE, or through
        process_event when a state-triggered move may follow."""
        if (self.server == SEND_BODY and self.pending_switch is None and self.keep_alive
                and self.client != MIGHT_SWITCH_PROTOCOL):
            self.server = DONE
            return
        self.process_event(SERVER, END_OF_MESSAGE)

    def _fire_state_triggered(self) -> None:
        # a proposal holds the client after its message until the server answers it
        if self.pending_switch is not None and self.client == DONE:
            self.client = MIGHT_SWITCH_PROTOCOL
        if self.pending_switch is None and self.client == MIGHT_SWITCH_PROTOCOL:
            self.client = DONE
        # the server accepted the switch: the client switched too
        if self.server == SWITCHED_PROTOCOL and self.client == MIGHT_SWITCH_PROTOCOL:
            self.client = SWITCHED_PROTOCOL
        if not self.keep_alive:
            if self.client == DONE:
                self.client = MUST_CLOSE
            if self.server == DONE:
                self.server = MUST_CLOSE

    @property
    def reusable(self) -> bool:
        """Both messages ended cleanly and nothing forbids another cycle."""
        return self.client == DONE and self.server == DONE

    def next_cycle(self) -> bool:
        """start_next_cycle if the connection is ``reusable`` (True), else nothing
        (False): the pool's question and its consequence in one call."""
        if self.client == DONE and self.server == DONE:
            self.client = self.server = IDLE
            return True
        return False

    def start_next_cycle(self) -> None:
        """Both DONE: back to IDLE for the next request (raises otherwise)."""
        if not self.reusable:
            raise IllegalTransition("CONNECTION", f"{self.client}/{self.server}",
                                    "start_next_cycle")
        self.client = self.server = IDLE
