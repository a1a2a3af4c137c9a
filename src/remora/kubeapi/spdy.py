"""SPDY/3.1 framing for `kubectl port-forward` (pure): the frames client-go's spdystream
sends and reads, and the header blocks' zlib compression.

kubectl 1.31+ port-forwards over a WebSocket whose binary messages carry a SPDY/3.1
connection (subprotocol `SPDY/3.1+portforward.k8s.io`, client-go's
tools/portforward/tunneling_dialer.go; the apiserver hands the tunnelled SPDY on to
kubelet). Frames are those of the SPDY draft 3 (http://www.chromium.org/spdy/
spdy-protocol/spdy-protocol-draft3): control frames (SYN_STREAM, SYN_REPLY, RST_STREAM,
SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE) and data frames. Header blocks are zlib
streams, one per direction for the whole connection, primed with the draft's dictionary
(section 2.6.10.1). spdystream implements no flow control (it never sends or waits for
WINDOW_UPDATE), so neither does this.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1, 2, 3, 4, 6, 7, 8, 9)
FLAG_FIN = 0x01
CANCEL = 5  # RST_STREAM status
MAX_DATA = (1 << 24) - 1

# The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1), as spdystream's
# spdy/dictionary.go holds it.
DICTIONARY = (
    b"\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put"
    b"\x00\x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0ea"
    b"ccept-charset\x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00"
    b"\x00\x00\raccept-ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\rautho"
    b"rization\x00\x00\x00\rcache-control\x00\x00\x00\nconnection\x00\x00\x00\x0ccontent"
    b"-base\x00\x00\x00\x10content-encoding\x00\x00\x00\x10content-language\x00\x00\x00"
    b"\x0econtent-length\x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00"
    b"\x00\x00\rcontent-range\x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00"
    b"\x00\x04etag\x00\x00\x00\x06expect\x00\x00\x00\x07expires\x00\x00\x00\x04from\x00"
    b"\x00\x00\x04host\x00\x00\x00\x08if-match\x00\x00\x00\x11if-modified-since\x00\x00"
    b"\x00\rif-none-match\x00\x00\x00\x08if-range\x00\x00\x00\x13if-unmodified-since\x00"
    b"\x00\x00\rlast-modified\x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards\x00"
    b"\x00\x00\x06pragma\x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authoriz"
    b"ation\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-after\x00"
    b"\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\x00\x00\x00\x11transfe"
    b"r-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\nuser-agent\x00\x00\x00\x04vary\x00"
    b"\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10www-authenticate\x00\x00\x00"
    b"\x06method\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00"
    b"\x00\x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public"
    b"\x00\x00\x00\nset-cookie\x00\x00\x00\nkeep-alive\x00\x00\x00\x06origin100101201202"
    b"205206300302303304305306307402405406407408409410411412413414415416417502504505203 "
    b"Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401"
    b" Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemente"
    b"d503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    b"Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/"
    b"gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivate"
    b"max-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


@dataclass
class Frame:
    control: bool
    type: int  # a control frame's type; 0 for data
    flags: int
    stream: int  # 0 for the frames of the connection (SETTINGS, PING, GOAWAY)
    data: bytes = b""  # a data frame's payload; a control frame's body after the stream id
    headers: dict[str, str] = field(default_factory=dict)  # SYN_STREAM/SYN_REPLY/HEADERS

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


class Codec:
    """One SPDY connection's framing: `feed` the bytes read, get whole frames back;
    `syn_reply`, `data`, `rst` and `ping` encode the server's frames. The two zlib
    contexts live as long as the connection, as the draft requires."""

    def __init__(self) -> None:
        self._buffer = b""
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zdict=DICTIONARY)

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= 8:
            length = int.from_bytes(self._buffer[5:8], "big")
            if len(self._buffer) < 8 + length:
                break
            head, body = self._buffer[:8], self._buffer[8:8 + length]
            self._buffer = self._buffer[8 + length:]
            frames.append(self._frame(head, body))
        return frames

    def _frame(self, head: bytes, body: bytes) -> Frame:
        flags = head[4]
        if not head[0] & 0x80:
            return Frame(False, 0, flags, struct.unpack("!I", head[:4])[0] & 0x7FFFFFFF, body)
        version, kind = struct.unpack("!HH", head[:4])
        if version & 0x7FFF != VERSION:
            raise ValueError(f"SPDY version {version & 0x7FFF} (only 3 is spoken)")
        stream = struct.unpack("!I", body[:4])[0] & 0x7FFFFFFF if len(body) >= 4 else 0
        if kind == SYN_STREAM:  # stream id, associated stream id, priority and slot
            return Frame(True, kind, flags, stream, body[10:], self._headers(body[10:]))
        if kind in (SYN_REPLY, HEADERS):
            return Frame(True, kind, flags, stream, body[4:], self._headers(body[4:]))
        if kind in (SETTINGS, PING, GOAWAY):  # no stream: the body as it came
            return Frame(True, kind, flags, 0, body)
        return Frame(True, kind, flags, stream, body[4:])

    def _headers(self, block: bytes) -> dict[str, str]:
        raw = self._inflate.decompress(block)  # SYNC_FLUSHed by the sender: all of it
        count = struct.unpack("!I", raw[:4])[0]
        at, out = 4, {}
        for _ in range(count):
            n = struct.unpack("!I", raw[at:at + 4])[0]
            name = raw[at + 4:at + 4 + n].decode("latin-1")
            at += 4 + n
            n = struct.unpack("!I", raw[at:at + 4])[0]
            out[name] = raw[at + 4:at + 4 + n].decode("latin-1")
            at += 4 + n
        return out

    def _block(self, headers: dict[str, str]) -> bytes:
        raw = struct.pack("!I", len(headers))
        for name, value in headers.items():
            for text in (name.lower(), value):
                raw += struct.pack("!I", len(text.encode("latin-1"))) + text.encode("latin-1")
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    @staticmethod
    def _control(kind: int, flags: int, body: bytes) -> bytes:
        return struct.pack("!HHI", 0x8000 | VERSION, kind, (flags << 24) | len(body)) + body

    def syn_reply(self, stream: int, headers: dict[str, str] | None = None,
                  fin: bool = False) -> bytes:
        return self._control(SYN_REPLY, FLAG_FIN if fin else 0,
                             struct.pack("!I", stream) + self._block(headers or {}))

    @staticmethod
    def data(stream: int, payload: bytes, fin: bool = False) -> bytes:
        out = b""
        while True:
            part, payload = payload[:MAX_DATA], payload[MAX_DATA:]
            last = not payload
            flags = FLAG_FIN if fin and last else 0
            out += struct.pack("!II", stream, (flags << 24) | len(part)) + part
            if last:
                return out

    def rst(self, stream: int, status: int = CANCEL) -> bytes:
        return self._control(RST_STREAM, 0, struct.pack("!II", stream, status))

    def ping(self, body: bytes) -> bytes:
        return self._control(PING, 0, body)
