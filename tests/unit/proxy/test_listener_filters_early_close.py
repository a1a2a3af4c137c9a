"""The peer closes while tls_inspector / http_inspector still wait for bytes.

Envoy 1.40 (observed on loopback) closes such a connection at once, whatever
listener_filters_timeout is, counts listener.<addr>.downstream_listener_filter_remote_close (FIN) or
downstream_listener_filter_error (reset), opens nothing upstream and writes the
listener's access log line. The client sees a reset when its bytes were left unread, a
FIN when it sent none. Before this was handled remora waited for ever (timeout 0s) or
until the timeout, then counted downstream_pre_cx_timeout. Loopback only; every client
read has a timeout, so a hang fails instead of blocking the suite."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path
from typing import Any

from remora.proxy.listener_filters.http_inspector import detect
from remora.proxy.listener_filters.tls_inspector import parse_client_hello
from tests.unit.proxy.proxy_helpers import FILE_LOG, free_port, running, static_cluster, until
from tests.unit.proxy.test_listener_filters_loopback import INSPECTORS, listener

TLS_ONLY, HTTP_ONLY = INSPECTORS[:1], INSPECTORS[1:]


def probe(port: int, data: bytes, how: str = "shut", wait: float = 0.0) -> str:
    """Send DATA, then half-close ("shut") or reset ("rst"); say how the proxy ended it:
    "rst", "fin", "data" (it relayed something back) or "hang"."""
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.sendall(data)
        time.sleep(wait)
        if how == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return "sent-rst"
        s.shutdown(socket.SHUT_WR)
        s.settimeout(3)
        try:
            got = s.recv(100)
        except TimeoutError:
            return "hang"
        except ConnectionResetError:
            return "rst"
        return "data" if got else "fin"
    finally:
        s.close()


def doc(lport: int, upstream_port: int, filters: list[dict[str, Any]], log: Path) -> dict[str, Any]:
    lis = listener(lport, listener_filters_timeout="0s")
    lis["listener_filters"] = filters
    lis["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(log),
        "log_format": {"text_format_source": {"inline_string":
                       "%RESPONSE_FLAGS% %DOWNSTREAM_LOCAL_ADDRESS% %FILTER_CHAIN_NAME%\n"}}}}]
    return {"static_resources": {"listeners": [lis],
                                 "clusters": [static_cluster("c", upstream_port)]}}


def run_case(tmp_path: Path, filters: list[dict[str, Any]],
             probes: list[tuple[bytes, str, float]]) -> tuple[list[str], dict[str, int], int,
                                                             list[str]]:
    accepted: list[int] = []

    async def main() -> tuple[list[str], dict[str, int], list[str]]:
        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(1)
            writer.write(await reader.read())
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(app, "127.0.0.1", 0)
        uport = int(srv.sockets[0].getsockname()[1])
        lport = free_port()
        log = tmp_path / "listener.log"
        loop = asyncio.get_running_loop()
        async with running(doc(lport, uport, filters, log), tmp_path) as server:
            seen = [await loop.run_in_executor(None, probe, lport, data, how, wait)
                    for data, how, wait in probes]
            prefix = f"listener.127.0.0.1_{lport}."
            await until(lambda: not server.connections)
            counters = {k[len(prefix):]: v for k, v in server.stats.counters.items()
                        if k.startswith(prefix)}
        srv.close()
        lines = log.read_text().splitlines() if log.exists() else []
        return seen, counters, lines

    seen, counters, lines = asyncio.run(main())
    return seen, counters, len(accepted), lines


def test_tls_inspector_two_bytes_then_fin_closes_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    seen, c, upstreams, lines = run_case(tmp_path, TLS_ONLY, [(b"\x16\x03", "shut", 0.0),
                                                              (b"GE", "shut", 0.1)])
    assert seen == ["rst", "rst"]  # the unread bytes make the close a reset
    assert time.monotonic() - started < 3
    assert c["downstream_listener_filter_remote_close"] == 2
    assert c["downstream_pre_cx_timeout"] == 0 and c["downstream_cx_total"] == 0
    assert upstreams == 0
    assert [line.split(" ")[0::2] for line in lines] == [["-", "-"], ["-", "-"]]


def test_http_inspector_partial_request_then_fin_closes(tmp_path: Path) -> None:
    seen, c, upstreams, _ = run_case(tmp_path, HTTP_ONLY, [(b"GE", "shut", 0.0),
                                                           (b"", "shut", 0.0)])
    assert seen == ["rst", "fin"]  # nothing unread: an orderly close
    assert c["downstream_listener_filter_remote_close"] == 2
    assert upstreams == 0


def test_reset_while_peeking_is_a_listener_filter_error(tmp_path: Path) -> None:
    _, c, upstreams, lines = run_case(tmp_path, TLS_ONLY, [(b"\x16\x03", "rst", 0.1)])
    assert c["downstream_listener_filter_error"] == 1
    assert c["downstream_listener_filter_remote_close"] == 0
    assert upstreams == 0 and len(lines) == 1


def test_bytes_enough_to_decide_then_fin_still_reach_the_chain(tmp_path: Path) -> None:
    """A verdict reached before the close stands: "GET /" is not TLS, 0x16 is not HTTP;
    the connection goes on to its chain and the bytes are relayed (then echoed back)."""
    seen, c, upstreams, lines = run_case(
        tmp_path, INSPECTORS, [(b"GET / HTTP/1.1\r\n\r\n", "shut", 0.1)])
    assert seen == ["data"] and upstreams == 1
    assert c["downstream_listener_filter_remote_close"] == 0
    assert lines[0].endswith(" http")
    seen, c, upstreams, _ = run_case(tmp_path, HTTP_ONLY, [(b"\x16\x03", "shut", 0.1)])
    assert seen == ["data"] and upstreams == 1


def test_tls_inspector_waits_for_a_whole_record_header() -> None:
    # BoringSSL (Envoy's tls_inspector) decides nothing on fewer than 5 bytes
    for short in (b"", b"G", b"GET", b"\x16\x09\x00", b"\x00\x01\x02\x03"):
        assert parse_client_hello(short).state == "need_more", short
    assert parse_client_hello(b"GET /").state == "not_tls"
    assert parse_client_hello(b"\x00\x01\x02\x03\x04").state == "not_tls"
    assert detect(b"\x16\x03") is None and detect(b"GE") == "need_more"
