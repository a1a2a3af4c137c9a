"""Shared bits of the capture netns tests: the injector's args, SO_ORIGINAL_DST, saves."""

from __future__ import annotations

import socket
import struct

import pytest

from remora.capture.argv import parse_args
from remora.capture.config import CaptureConfig
from tests.lab import Lab, Namespace

# What Istio's sidecar injector passes to istio-iptables (see tests/data/conformance/README.md).
INJECTOR_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
                 "-x", "", "-b", "*", "-d", "15090,15021,15020",
                 "--log_output_level=default:info"]
# Extra args selecting the backend: iptables (default) or Istio's --native-nftables.
BACKENDS = [pytest.param([], id="iptables"), pytest.param(["--native-nftables"], id="nftables")]
SO_ORIGINAL_DST = 80
IP_TRANSPARENT = 19


def injector_config(mode: str = "REDIRECT", *extra: str) -> CaptureConfig:
    args = list(INJECTOR_ARGS)
    args[args.index("-m") + 1] = mode
    return parse_args([*args, *extra], env={})


def original_dst(conn: socket.socket) -> tuple[str, int]:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, addr = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(addr), port


def listener(lab: Lab, ns: Namespace, port: int, transparent: bool = False) -> socket.socket:
    sock = lab.socket(ns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if transparent:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(8)
    sock.settimeout(5)
    return sock


def save(lab: Lab, ns: Namespace, ipv6: bool = False) -> str:
    """iptables-save without its timestamp comments."""
    out = lab.run(ns, ["ip6tables-save" if ipv6 else "iptables-save"]).stdout.decode()
    return "\n".join(line for line in out.splitlines() if not line.startswith("#"))


def ip(lab: Lab, ns: Namespace, *args: str) -> str:
    return lab.run(ns, ["ip", *args]).stdout.decode()
