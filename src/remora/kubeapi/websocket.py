"""WebSocket (RFC 6455) framing for exec, and Kubernetes' channel protocol on top (pure).

kubectl 1.30+ runs `exec` over WebSocket with subprotocol v5.channel.k8s.io
(k8s.io/apimachinery/pkg/util/remotecommand/constants.go): every binary message starts
with one byte naming the stream — 0 stdin, 1 stdout, 2 stderr, 3 error (the final
metav1.Status), 4 resize — and v5 adds 255, a client's "close this stream" signal
(the next byte names the stream, e.g. [255, 0] closes stdin).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass
from typing import Any

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def frame(opcode: int, payload: bytes) -> bytes:
    """A server frame: final, unmasked (RFC 6455 5.1: servers never mask)."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def channel(stream: int, data: bytes) -> bytes:
    return frame(OP_BINARY, bytes([stream]) + data)


def close_frame(code: int = 1000) -> bytes:
    return frame(OP_CLOSE, struct.pack("!H", code))


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes


def parse(buffer: bytes) -> tuple[Frame | None, int]:
    """The first complete frame in BUFFER and the bytes it took (None, 0: need more)."""
    if len(buffer) < 2:
        return None, 0
    b0, b1 = buffer[0], buffer[1]
    n = b1 & 0x7F
    at = 2
    if n == 126:
        if len(buffer) < 4:
            return None, 0
        n = struct.unpack("!H", buffer[2:4])[0]
        at = 4
    elif n == 127:
        if len(buffer) < 10:
            return None, 0
        n = struct.unpack("!Q", buffer[2:10])[0]
        at = 10
    mask = b""
    if b1 & 0x80:
        if len(buffer) < at + 4:
            return None, 0
        mask = buffer[at:at + 4]
        at += 4
    if len(buffer) < at + n:
        return None, 0
    payload = buffer[at:at + n]
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return Frame(bool(b0 & 0x80), b0 & 0x0F, payload), at + n


def exit_status(code: int) -> dict[str, Any]:
    """The error channel's last message, as kubelet sends it: Success, or
    NonZeroExitCode with the code in details.causes (kubectl exits with it)."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
