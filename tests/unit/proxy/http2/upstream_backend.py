"""An HTTP/2 (h2c, prior knowledge) backend for the upstream HTTP/2 tests, built on the h2
library's server side and run as its own process:
``python3 upstream_backend.py PORT [MAX_STREAMS [CERT KEY]]`` (with CERT and KEY it
speaks TLS, offers ALPN h2 only and tells the negotiated protocol in ``x-alpn`` and the
server name the client sent in ``x-sni``, ``-`` for none).

Paths: ``/size/N`` answers N bytes (a repeating pattern, see ``body_of``); ``/echo`` the
request body; ``/grpc`` a gRPC-shaped unary answer (5-byte framed message, then trailers
grpc-status 0; ``/grpc-trailer/N`` the same with status N; ``/grpc-late/N`` the same
with its trailers N ms after the message); ``/grpc-fail`` a
trailers-only answer (grpc-status 5 in the headers; ``/grpc-status/N`` the same with
status N);
``/reset`` RST_STREAM(INTERNAL_ERROR) before answering, ``/reset-mid`` after 7 bytes of
body; ``/close`` closes the connection; ``/goaway-early*`` sends a GOAWAY whose last stream
id is below the request's, then closes; ``/garbage`` sends a DATA frame on stream 0;
``/status/N`` answers status N with headers only; ``/repeat`` headers only, with
repeated server, set-cookie, content-type, x-custom and vary fields; ``/refuse`` RST_STREAM
(REFUSED_STREAM) the first time per connection for each path, then answers;
``/slow*`` answers after 0.3 s; ``/goaway`` answers, then GOAWAY and closes. A HEAD
request gets the headers only.
``/headers`` answers the request's header block as it arrived (one ``name: value`` a
line, in order). ``/no-ack`` never acknowledges the request body (its windows stay shut;
the connection is closed when the stream is reset). ``/conns`` answers the number of
connections accepted so far (the multiplexing check).
Every response carries ``x-conn`` (the connection's number) and ``x-stream``.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

ACCEPTED = 0
MAX_STREAMS = 0  # SETTINGS_MAX_CONCURRENT_STREAMS to advertise (argv[2]; 0: h2's default)


def body_of(n: int) -> bytes:
    pattern = bytes(range(256))
    return (pattern * (n // 256 + 1))[:n]


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 number: int) -> None:
        self.r, self.w, self.number = reader, writer, number
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        if MAX_STREAMS:
            self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS})
        self.bodies: dict[int, bytearray] = {}
        self.paths: dict[int, str] = {}
        self.methods: dict[int, str] = {}
        self.heads: dict[int, bytes] = {}
        self.refused: set[str] = set()
        self.window = asyncio.Event()
        self.client_settings: dict[int, int] = {}  # what the client's SETTINGS said
        self.client_window = 65535  # the client's connection window (WINDOW_UPDATE 0)
        self.stalled = False  # a /no-ack request came: its body is never acknowledged

    def flush(self) -> None:
        self.w.write(self.h2.data_to_send())

    async def send_body(self, sid: int, data: bytes, end: bool = True) -> None:
        if not data and end:
            self.h2.end_stream(sid)
            self.flush()
        while data:
            n = min(len(data), self.h2.local_flow_control_window(sid),
                    self.h2.max_outbound_frame_size)
            if n <= 0:
                self.window.clear()
                await self.window.wait()
                continue
            data, last = data[n:], data[:n]
            # the last frame carries END_STREAM, as servers usually send it
            self.h2.send_data(sid, last, end_stream=end and not data)
            self.flush()
            await self.w.drain()

    async def answer(self, sid: int) -> None:
        path = self.paths[sid]
        body = bytes(self.bodies.pop(sid, b""))
        base = [("x-conn", str(self.number)), ("x-stream", str(sid))]
        ssl_object = self.w.get_extra_info("ssl_object")
        if ssl_object is not None:  # what the client's ALPN led to, and its SNI
            base.append(("x-alpn", str(ssl_object.selected_alpn_protocol())))
            base.append(("x-sni", getattr(ssl_object, "sni_seen", None) or "-"))
        if path == "/reset-mid":  # a response started, then RST_STREAM
            self.h2.send_headers(sid, [(":status", "200"), *base])
            self.h2.send_data(sid, b"partial")
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.flush()
            return
        if path.startswith("/goaway-early"):  # GOAWAY that leaves this stream out
            self.h2.close_connection(last_stream_id=sid - 2)
            self.flush()
            await asyncio.sleep(0.2)
            self.w.close()
            return
        if path == "/close":  # the connection closed under the stream
            self.w.close()
            return
        if path == "/garbage":  # a DATA frame on stream 0: a connection error
            self.w.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
            return
        if path == "/repeat":  # repeated response fields, inline in Envoy's map or not
            self.h2.send_headers(sid, [
                (":status", "200"), ("server", "s1"), ("set-cookie", "a=1"),
                ("content-type", "t1"), ("x-custom", "c1"), ("server", "s2"),
                ("set-cookie", "b=2"), ("content-type", ""), ("x-custom", "c2"),
                ("vary", ""), ("vary", "accept"), *base], end_stream=True)
            self.flush()
            return
        if path.startswith("/status/"):  # that status, headers only
            self.h2.send_headers(sid, [(":status", path.split("/")[2]), *base],
                                 end_stream=True)
            self.flush()
            return
        if path == "/reset":
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.flush()
            return
        if path.startswith("/refuse") and path not in self.refused:
            self.refused.add(path)
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            self.flush()
            return
        if path.startswith("/slow"):
            await asyncio.sleep(0.3)
        if path == "/grpc" or path.startswith("/grpc-trailer/"):
            code = path.rsplit("/", 1)[1] if path.startswith("/grpc-trailer/") else "0"
            msg = b"\x00" + (4).to_bytes(4, "big") + b"pong"
            self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc"),
                                       *base])
            await self.send_body(sid, msg, end=False)
            self.h2.send_headers(sid, [("grpc-status", code)], end_stream=True)
            self.flush()
            return
        if path.startswith("/grpc-late/"):  # the message at once, the trailers N ms later
            msg = b"\x00" + (4).to_bytes(4, "big") + b"pong"
            self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc"),
                                       *base])
            await self.send_body(sid, msg, end=False)
            await asyncio.sleep(int(path.rsplit("/", 1)[1]) / 1000)
            try:  # the proxy may have reset the stream (or closed the connection) by now
                self.h2.send_headers(sid, [("grpc-status", "0")], end_stream=True)
                self.flush()
            except (h2.exceptions.ProtocolError, OSError):
                pass
            return
        if path == "/grpc-fail" or path.startswith("/grpc-status/"):
            code = path.rsplit("/", 1)[1] if path.startswith("/grpc-status/") else "5"
            self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc"),
                                       ("grpc-status", code), ("grpc-message", "nope"), *base],
                                 end_stream=True)
            self.flush()
            return
        if path.startswith("/size/"):
            out = body_of(int(path.split("/")[2]))
        elif path.startswith("/headers"):
            out = self.heads[sid]  # the request's header block as received, in order
        elif path == "/client-settings":  # the client's SETTINGS and connection window
            out = (" ".join(f"{c}={v}" for c, v in sorted(self.client_settings.items()))
                   + f" window={self.client_window}").encode()
        elif path == "/conns":
            out = str(ACCEPTED).encode()
        else:
            out = body
        headers = [(":status", "200"), ("content-length", str(len(out))), *base]
        if path == "/goaway":
            # the response, GOAWAY and the close in one write
            self.h2.send_headers(sid, headers)
            self.h2.send_data(sid, out, end_stream=True)
            self.h2.close_connection()
            self.flush()
            self.w.close()
        elif path.startswith("/size/0") or self.methods[sid] == "HEAD":
            self.h2.send_headers(sid, headers, end_stream=True)
            self.flush()
        else:
            self.h2.send_headers(sid, headers)
            await self.send_body(sid, out)

    async def run(self) -> None:
        self.h2.initiate_connection()
        self.flush()
        tasks = set()
        try:
            while data := await self.r.read(65536):
                for ev in self.h2.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        hs = {bytes(n).decode("latin-1"): bytes(v).decode("latin-1")
                              for n, v in ev.headers}
                        self.paths[ev.stream_id] = hs[":path"]
                        self.methods[ev.stream_id] = hs[":method"]
                        if hs[":path"].startswith("/no-ack"):
                            self.stalled = True
                        self.heads[ev.stream_id] = b"".join(
                            bytes(n) + b": " + bytes(v) + b"\n" for n, v in ev.headers)
                        self.bodies[ev.stream_id] = bytearray()
                    elif isinstance(ev, h2.events.DataReceived):
                        self.bodies[ev.stream_id] += ev.data
                        if not self.stalled:
                            self.h2.acknowledge_received_data(ev.flow_controlled_length,
                                                              ev.stream_id)
                    elif isinstance(ev, h2.events.StreamReset) and self.stalled:
                        self.w.close()  # its windows are spent: no use to anyone
                        return
                    elif isinstance(ev, h2.events.WindowUpdated):
                        if not ev.stream_id:
                            self.client_window += ev.delta or 0
                        self.window.set()
                    elif isinstance(ev, h2.events.RemoteSettingsChanged):
                        for code, change in ev.changed_settings.items():
                            self.client_settings[int(code)] = change.new_value
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in self.paths:
                        t = asyncio.ensure_future(self.answer(ev.stream_id))
                        tasks.add(t)
                        t.add_done_callback(tasks.discard)
                self.flush()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        self.w.close()


async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    global ACCEPTED
    ACCEPTED += 1
    await Conn(r, w, ACCEPTED).run()


def _remember_sni(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
    """The ClientHello's server name, kept on the connection's SSLObject (the one
    get_extra_info("ssl_object") gives) for x-sni."""
    sslobj.sni_seen = name  # type: ignore[attr-defined]


async def main() -> None:
    global MAX_STREAMS
    MAX_STREAMS = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    ctx = None
    if len(sys.argv) > 4:  # CERT KEY: TLS, offering ALPN h2 only
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        ctx.set_alpn_protocols(["h2"])
        ctx.sni_callback = _remember_sni  # type: ignore[assignment]
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), ssl=ctx)
    await srv.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
