"""The clients of the HTTP/2 differential suite, one function per case: grpcio calls (no
generated code: raw bytes in and out) and the real HTTP/2 command-line clients curl
(`--http2-prior-knowledge`) and nghttp. Each returns an Outcome, the part of what the
client saw that the suite compares: gRPC status, details, custom trailing metadata, the
replies (count and digest), whether the service saw the call cancelled; for the CLI
clients, the masked response head, body and trailers."""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from tests.unit.proxy.http2 import grpc_harness as gh

Outcome = dict[str, Any]
BIDI_MESSAGES = 10_000
BIDI_WINDOW = 8  # replies the client waits for before sending more: no whole-stream buffer
LARGE = 4 * 1024 * 1024


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(4, "big") + p)
    return h.hexdigest()[:16]


def _done(case: str, replies: list[bytes], error: grpc.RpcError | None = None,
          seen: gh.Seen | None = None) -> Outcome:
    code, details, trailing = "OK", "", ()
    if error is not None:
        code = error.code().name  # type: ignore[attr-defined]
        details = error.details() or ""  # type: ignore[attr-defined]
        trailing = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    out: Outcome = {"code": code, "details": details,
                    "trailers": sorted((k, v) for k, v in trailing if k.startswith("x-")),
                    "replies": len(replies), "digest": _digest(replies)}
    if seen is not None:  # the client's RST_STREAM reached the service (within 3 s)
        out["service_saw_cancel"] = seen.event(case).wait(3)
    return out


def _meta(case: str) -> tuple[tuple[str, str], ...]:
    return (("x-case", case),)


def _method(name: str) -> str:
    return f"/{gh.SERVICE}/{name}"


def unary(ch: grpc.Channel, case: str, seen: gh.Seen) -> Outcome:
    reply = ch.unary_unary(_method("Unary"))(b"hello", metadata=_meta(case), timeout=10)
    return _done(case, [reply])


def server_streaming(ch: grpc.Channel, case: str, seen: gh.Seen) -> Outcome:
    call = ch.unary_stream(_method("ServerStream"))(b"500", metadata=_meta(case), timeout=20)
    return _done(case, list(call))


def client_streaming(ch: grpc.Channel, case: str, seen: gh.Seen) -> Outcome:
    requests = (b"%03d" % i * 40 for i in range(500))
    reply = ch.stream_unary(_method("ClientStream"))(requests, metadata=_meta(case),
                                                      timeout=20)
    return _done(case, [reply])


def bidi_10000(ch: grpc.Channel, case: str, seen: gh.Seen) -> Outcome:
    """10,000 messages each way, at most BIDI_WINDOW unanswered: a proxy that held the
    request stream (or the replies) back until its end would stall the sender, which
    gives up after 10 s, and the reply count would show it."""
    window = threading.Semaphore(BIDI_WINDOW)

    def requests() -> Iterator[bytes]:
        for i in range(BIDI_MESSAGES):
            if not window.acquire(timeout=10):
                return
            yield b"m-%05d" % i

    replies: list[bytes] = []
    call = ch.stream_stream(_method("Bidi"))(requests(), metadata=_meta(case), timeout=120)
    for r in call:
        replies.append(r)
        window.release()
    return _done(case, replies)


def large_4mib(ch: grpc.Channel, case: str, seen: gh.Seen) -> Outcome:
    payload = bytes(range(256)) * (LARGE // 256)
    reply = ch.unary_unary(_method("Unary"))(payload, metadata=_meta(case), timeout=30)
    return _done(case, [reply])


def deadline(ch: grpc.Channel, case: str, seen: gh.Seen) -> Outcome:
    try:
        ch.unary_unary(_method("Sleep"))(b"", metadata=_meta(case), timeout=0.5)
    except grpc.RpcError as e:
        return _done(case, [], e, seen)
    raise AssertionError("the Sleep call outlived its 0.5 s deadline")


def cancel(ch: grpc.Channel, case: str, seen: gh.Seen) -> Outcome:
    call = ch.unary_stream(_method("Ticks"))(b"", metadata=_meta(case), timeout=20)
    replies = [next(call) for _ in range(3)]
    call.cancel()
    try:
        for r in call:
            replies.append(r)
    except grpc.RpcError as e:
        return _done(case, replies[:3], e, seen)
    raise AssertionError("the cancelled call ended without an error")


def error_trailers(ch: grpc.Channel, case: str, seen: gh.Seen) -> Outcome:
    try:
        ch.unary_unary(_method("Fail"))(b"x", metadata=_meta(case), timeout=10)
    except grpc.RpcError as e:
        return _done(case, [], e)
    raise AssertionError("Fail returned OK")


GrpcCase = Callable[[grpc.Channel, str, gh.Seen], Outcome]
GRPC_CASES: dict[str, GrpcCase] = {
    "unary": unary, "server-streaming": server_streaming,
    "client-streaming": client_streaming, "bidi-10000": bidi_10000,
    "large-4mib": large_4mib, "deadline": deadline, "cancel": cancel,
    "error-trailers": error_trailers,
}


def run_grpc(case: str, port: int, seen: gh.Seen) -> Outcome:
    """CASE on a fresh channel to 127.0.0.1:PORT (h2c prior knowledge, grpcio's way)."""
    seen.forget(case)
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=gh.CHANNEL_OPTIONS) as ch:
        return GRPC_CASES[case](ch, case, seen)


# -- curl and nghttp -------------------------------------------------------------------
_MASKS = [(r"(?im)^date: .*$", "date: D"),
          (r"(?im)^x-envoy-upstream-service-time: \d+$", "x-envoy-upstream-service-time: N"),
          (r"(?im)^(\S+ )?date: .*$", r"\1date: D")]


def _masked(text: str) -> str:
    for pattern, repl in _MASKS:
        text = re.sub(pattern, repl, text)
    return text


def _run(argv: list[str]) -> Outcome:
    r = subprocess.run(argv, capture_output=True, timeout=20, check=False)
    return {"exit": r.returncode, "stdout": r.stdout.decode(errors="replace"),
            "stderr": r.stderr.decode(errors="replace")[-500:]}


def curl(case: str, port: int, path: str, body: bytes | None, tmp: Path) -> Outcome:
    """curl over h2c prior knowledge: the response head (-D -) and body, masked."""
    argv = ["curl", "-sS", "--http2-prior-knowledge", "-D", "-", "-H", f"x-case: {case}",
            f"http://127.0.0.1:{port}{path}"]
    if body is not None:
        (tmp / f"{case}.body").write_bytes(body)
        argv += ["--data-binary", f"@{tmp / f'{case}.body'}"]
    r = _run(argv)
    return {"exit": r["exit"], "response": _masked(r["stdout"].replace("\r\n", "\n"))}


def nghttp(case: str, port: int, path: str, body: bytes | None, tmp: Path) -> Outcome:
    """nghttp (nghttp2's client, h2c prior knowledge for http://): with -v it prints every
    frame; kept are the header fields it received (response headers and trailers, in
    order) and the body, the timestamps dropped."""
    argv = ["nghttp", "-v", "-H", f"x-case: {case}", f"http://127.0.0.1:{port}{path}"]
    if body is not None:
        (tmp / f"{case}.body").write_bytes(body)
        argv += ["-d", str(tmp / f"{case}.body")]
    r = _run(argv)
    kept = []
    for line in r["stdout"].splitlines():
        m = re.match(r"\[\s*[\d.]+\] recv \(stream_id=\d+\) (.*)$", line)
        if m:
            kept.append(m.group(1))
        elif line and not line.startswith(("[", " ")):
            kept.append(line)
    return {"exit": r["exit"], "response": _masked("\n".join(kept))}


CliCase = tuple[Callable[[str, int, str, bytes | None, Path], Outcome], str, bytes | None]
CLI_CASES: dict[str, CliCase] = {
    "curl-get": (curl, "/hello?q=1", None),
    "curl-post": (curl, "/upload", b"abc" * 30000),
    "nghttp-get": (nghttp, "/hello", None),
    "nghttp-post": (nghttp, "/upload", bytes(range(256)) * 400),
    "nghttp-trailers": (nghttp, "/trailers", None),
}


def run_cli(case: str, port: int, tmp: Path) -> Outcome:
    client, path, body = CLI_CASES[case]
    return client(case, port, path, body, tmp)
