"""A raw HTTP/2 client for the tests, on the ``h2`` library (client side) over asyncio:
several streams on one connection, each with its own status, headers, body, trailers and
reset code; flow control left to the test when it wants to hold the window."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings


@dataclass
class H2Response:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    reset: int | None = None  # RST_STREAM error code from the server
    ended: bool = False
    informational: list[int] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


class H2Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 conn: h2.connection.H2Connection, auto_ack: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.auto_ack = auto_ack
        self.responses: dict[int, H2Response] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.settings: dict[int, int] = {}
        self.connection_window_update = 0
        self.closed = asyncio.Event()
        self.events: list[h2.events.Event] = []
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, addr: tuple[str, int], *, ssl_ctx: ssl.SSLContext | None = None,
                      window: int | None = None, auto_ack: bool = True,
                      rcvbuf: int | None = None) -> H2Client:
        if rcvbuf is not None:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, addr)
            reader, writer = await asyncio.open_connection(sock=sock, ssl=ssl_ctx)
        else:
            reader, writer = await asyncio.open_connection(addr[0], addr[1], ssl=ssl_ctx)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        if window is not None:
            conn.local_settings = h2.settings.Settings(client=True, initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        client = cls(reader, writer, conn, auto_ack)
        for _ in range(100):  # the server's SETTINGS (and window) before any request
            if client.settings or client.closed.is_set():
                break
            await asyncio.sleep(0.01)
        return client

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out and not self.writer.is_closing():
            self.writer.write(out)

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for ev in events:
                    self._on(ev)
                self.flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            for r in self.responses.values():
                r.done.set()

    def _on(self, ev: h2.events.Event) -> None:
        self.events.append(ev)
        sid = getattr(ev, "stream_id", None)
        r = self.responses.get(sid) if sid else None
        if isinstance(ev, h2.events.ResponseReceived) and r is not None:
            hs = [(str(n), str(v)) for n, v in ev.headers or []]
            r.status = int(dict(hs)[":status"])
            r.headers = [(n, v) for n, v in hs if not n.startswith(":")]
        elif isinstance(ev, h2.events.InformationalResponseReceived) and r is not None:
            r.informational.append(int(dict(ev.headers or [])[":status"]))
        elif isinstance(ev, h2.events.DataReceived) and r is not None:
            r.body += ev.data or b""
            if self.auto_ack:
                self.conn.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
        elif isinstance(ev, h2.events.TrailersReceived) and r is not None:
            r.trailers = [(str(n), str(v)) for n, v in ev.headers or []]
        elif isinstance(ev, h2.events.StreamEnded) and r is not None:
            r.ended = True
            r.done.set()
        elif isinstance(ev, h2.events.StreamReset) and r is not None:
            r.reset = ev.error_code
            r.done.set()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.settings = {int(k): v.new_value for k, v in ev.changed_settings.items()}
        elif isinstance(ev, h2.events.WindowUpdated) and not ev.stream_id:
            self.connection_window_update += ev.delta or 0

    def start(self, method: str, path: str, *, authority: str = "app.test",
              headers: list[tuple[str, str]] | None = None, body: bytes | None = None,
              end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.responses[sid] = H2Response()
        hs = [(":method", method), (":path", path), (":authority", authority),
              (":scheme", "http"), *(headers or [])]
        self.conn.send_headers(sid, hs, end_stream=end and not body)
        if body:
            self.send_body(sid, body, end=end)
        self.flush()
        return sid

    def send_body(self, sid: int, body: bytes, end: bool = True) -> None:
        step = self.conn.max_outbound_frame_size
        for i in range(0, len(body), step):
            self.conn.send_data(sid, body[i:i + step],
                                end_stream=end and i + step >= len(body))
        self.flush()

    async def request(self, method: str, path: str, timeout: float = 5.0,
                      **kw: object) -> H2Response:
        sid = self.start(method, path, **kw)  # type: ignore[arg-type]
        r = self.responses[sid]
        await asyncio.wait_for(r.done.wait(), timeout)
        return r

    async def close(self) -> None:
        self.writer.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
