"""scripts/bench_h2_codec.py compares like with like: the `h2` server and the libnghttp2
server (scripts/nghttp2_ctypes.py, ctypes) parse the same requests and send the same
responses, as an `h2` client decodes their bytes (headers, body, trailers, END_STREAM).

Skipped only when libnghttp2 cannot be loaded (Debian package libnghttp2-14)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


bench = _load("bench_h2_codec")
ng = bench.ng

try:
    ng.library()
    NG_MISSING = ""
except ng.Nghttp2Missing as exc:
    NG_MISSING = str(exc)

pytestmark = pytest.mark.skipif(bool(NG_MISSING), reason=f"libnghttp2 absent: {NG_MISSING}")


@pytest.mark.parametrize("shape", ["grpc", "get"])
@pytest.mark.parametrize(("requests", "concurrency"), [(7, 1), (25, 10)])
def test_both_codecs_do_the_same_work(requests: int, concurrency: int, shape: str) -> None:
    spec = bench.SHAPES[shape]
    work = bench.make_workload(requests, concurrency, spec)
    assert sum(work.per_round) == requests
    expected = bench.Response(spec.response_headers, spec.response_body, spec.trailers, True)
    decoded = {}
    for kind in bench.SERVERS:  # h2, h2-noval, nghttp2 (+ ngh2 when importable)
        _, outputs, parsed = bench.serve(kind, work)
        assert parsed == [(spec.request_headers, spec.request_body)] * requests, kind
        decoded[kind] = bench.decode(work, outputs)
        assert sorted(decoded[kind]) == list(range(1, 2 * requests, 2)), kind
        assert all(r == expected for r in decoded[kind].values()), kind
    assert all(d == decoded["h2"] for d in decoded.values())
    assert "nghttp2" in decoded
    bench.check(work)  # the script's own pre-timing check agrees


class _WrongTrailers(bench.NgServer):
    def _on_request(self, server: Any, req: Any) -> None:
        self.parsed.append((req.headers, b"".join(req.body)))
        server.respond(req.stream_id, bench.GRPC.response_headers,
                       bench.GRPC.response_body, [(b"grpc-status", b"13")])


class _DropsAHeader(bench.NgServer):
    def _on_request(self, server: Any, req: Any) -> None:
        self.parsed.append((req.headers[:-1], b"".join(req.body)))
        server.respond(req.stream_id, bench.GRPC.response_headers,
                       bench.GRPC.response_body, bench.GRPC.trailers)


@pytest.mark.parametrize(("server", "message"), [
    (_WrongTrailers, "nghttp2: stream 1 answered"),
    (_DropsAHeader, "nghttp2: parsed requests differ"),
])
def test_check_catches_a_codec_doing_different_work(
        monkeypatch: pytest.MonkeyPatch, server: type, message: str) -> None:
    work = bench.make_workload(3, 1)
    bench.check(work)
    monkeypatch.setitem(bench.SERVERS, "nghttp2", server)
    with pytest.raises(RuntimeError, match=message):
        bench.check(work)


@pytest.mark.parametrize("trailers", [[], [(b"grpc-status", b"0"), (b"x-t", b"1")]])
def test_binding_splits_a_large_body(trailers: list[tuple[bytes, bytes]]) -> None:
    """The data provider's read callback is called once per DATA frame (16 KiB frames):
    a 40,000-byte body arrives whole, then the trailers (END_STREAM on their HEADERS) or,
    without trailers, END_STREAM on the last DATA frame."""
    body = bytes(range(256)) * 156 + b"tail"
    parsed: list[tuple[list[tuple[bytes, bytes]], bytes]] = []

    def on_request(server: Any, req: Any) -> None:
        parsed.append((req.headers, b"".join(req.body)))
        server.respond(req.stream_id, [(b":status", b"404")], body, trailers)

    work = bench.make_workload(2, 2)
    with ng.Nghttp2Server(on_request, connection_window_size=bench.SERVER_WINDOW) as server:
        outputs = []
        for chunk in work.chunks:
            server.receive(chunk)
            outputs.append(server.data_to_send())
    responses = bench.decode(work, outputs)
    assert [len(p[1]) for p in parsed] == [len(bench.GRPC.request_body)] * 2
    assert sorted(responses) == [1, 3]
    for r in responses.values():
        assert (r.headers, r.body, r.trailers, r.ended) == ([(b":status", b"404")], body,
                                                           trailers, True)


def test_binding_reports_a_protocol_error_as_an_exception() -> None:
    with ng.Nghttp2Server(lambda *_: None) as server, pytest.raises(RuntimeError,
                                                                    match="mem_recv"):
        server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not the HTTP/2 preface
