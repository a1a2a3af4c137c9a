"""A raw h2c client for tests that need the frames themselves (several GOAWAYs, streams
opened after one, frame timing), which the ``h2`` library's state machine does not let a
client see or send: HEADERS out, every frame in, each stamped with its arrival time.
SETTINGS and PING are acknowledged unless the test says otherwise."""

from __future__ import annotations

import asyncio
import time

import hpack
import hyperframe.frame as hf

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class RawH2:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ack_pings: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.ack_pings = ack_pings
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.frames: list[tuple[float, hf.Frame]] = []
        self.statuses: dict[int, str] = {}
        self.t0 = time.monotonic()
        self.closed_at: float | None = None
        self.closed = asyncio.Event()
        self._buf = b""
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, port: int, *, ack_pings: bool = True) -> RawH2:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PREFACE + hf.SettingsFrame(0).serialize())
        return cls(reader, writer, ack_pings)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def request(self, sid: int, path: str = "/") -> None:
        f = hf.HeadersFrame(sid)
        f.flags.add("END_HEADERS")
        f.flags.add("END_STREAM")
        f.data = self.encoder.encode([(":method", "GET"), (":path", path),
                                      (":scheme", "http"), (":authority", "app.test")])
        self.writer.write(f.serialize())

    def goaways(self) -> list[tuple[float, int, int]]:
        """(arrival, last stream id, error code) of each GOAWAY received."""
        return [(t, f.last_stream_id, f.error_code) for t, f in self.frames
                if isinstance(f, hf.GoAwayFrame)]

    def pings(self) -> list[float]:
        return [t for t, f in self.frames if isinstance(f, hf.PingFrame)
                and "ACK" not in f.flags]

    async def close(self) -> None:
        self.writer.close()
        self._task.cancel()

    def _on(self, f: hf.Frame) -> None:
        self.frames.append((self.now(), f))
        if isinstance(f, hf.SettingsFrame) and "ACK" not in f.flags:
            ack = hf.SettingsFrame(0)
            ack.flags.add("ACK")
            self.writer.write(ack.serialize())
        elif isinstance(f, hf.PingFrame) and "ACK" not in f.flags and self.ack_pings:
            ack = hf.PingFrame(0)
            ack.flags.add("ACK")
            ack.opaque_data = f.opaque_data
            self.writer.write(ack.serialize())
        elif isinstance(f, hf.HeadersFrame):
            fields = dict(self.decoder.decode(f.data))
            if ":status" in fields:
                self.statuses[f.stream_id] = str(fields[":status"])

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                self._buf += data
                while len(self._buf) >= 9:
                    frame, size = hf.Frame.parse_frame_header(memoryview(self._buf[:9]))
                    if len(self._buf) < 9 + size:
                        break
                    frame.parse_body(memoryview(self._buf[9:9 + size]))
                    self._buf = self._buf[9 + size:]
                    self._on(frame)
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed_at = self.now()
            self.closed.set()
