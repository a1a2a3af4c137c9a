"""tcp_proxy's half-close over TLS (transport/tls.py _HalfClose) in-process, under uvloop
(what `remora proxy` runs) and plain asyncio (what it runs without uvloop): the bootstrap
of test_tls_half_close_envoy_parity (a plain client to a TLS backend, a TLS client to a
plain backend, and both chained over mTLS; TLS 1.2 and 1.3 toward the backend), with
3 MiB each way (and a TLS backend that half-closes first), so the end of stream is
passed on while uvloop's and the socket's write buffers still hold what came before it:
the close_notify must follow every byte, and the answer come back whole.

The SSLObject's close_notify is one SSL_shutdown through ctypes (handshake.py); the
last test checks the pointer is found on this CPython, so the unwrap fallback is not what
the others exercised."""

from __future__ import annotations

import asyncio
import functools
import gc
import socket
import ssl
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from remora.controlplane.ca import CertificateAuthority
from remora.proxy.transport import handshake, tls
from tests.unit.proxy import tls_half_close as th
from tests.unit.proxy.proxy_helpers import free_port, running
from tests.unit.proxy.test_tls_sslobject import _transport

PAYLOAD = bytes(range(256)) * (3 * 4096)  # 3 MiB
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def tls_client(port: int, payload: bytes, ctx: ssl.SSLContext) -> tuple[bytes, str]:
    return th.tls_client(port, ctx, payload)


def _run(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_half_close_over_tls_under_each_loop(tmp_path: Path, loop: str) -> None:
    certs = tmp_path / "certs"
    CertificateAuthority(tmp_path / "ca").ensure_workload(certs, "demo")
    tls_ends: list[tuple[int, str]] = []
    plain_ends: list[tuple[int, str]] = []
    tls_srv = th.tls_backend(th.server_context(certs), tls_ends)
    plain_srv = th.plain_backend(plain_ends)
    greeted_ends: list[tuple[int, str]] = []
    greeter = th.greeting_backend(th.server_context(certs), greeted_ends)
    # one that half-closes with a FIN alone: an end of stream too (Envoy's SslSocket)
    greeted_fin_ends: list[tuple[int, str]] = []
    greeter_fin = th.greeting_backend(th.server_context(certs), greeted_fin_ends,
                                      close_notify=False)
    ports = {name: free_port() for name in th.PATHS}
    doc = th.bootstrap(ports, free_port(), tls_srv.getsockname()[1],
                       plain_srv.getsockname()[1], certs, tmp_path, greeter.getsockname()[1],
                       greeter_fin.getsockname()[1])
    out: dict[str, tuple[bytes, str]] = {}
    greeted: list[str] = []

    async def main() -> None:
        async with running(doc, tmp_path):
            for name in th.PATHS:
                client: Callable[[int, bytes], tuple[bytes, str]]
                if name == "from-tls":
                    client = functools.partial(tls_client, ctx=th.client_context(certs))
                elif name.startswith("greeted"):
                    client = th.plain_client_greeted
                else:
                    client = th.plain_client
                out[name] = await asyncio.to_thread(client, ports[name], PAYLOAD)
            # (the proxy still relaying the client's input to it)
            greeted.extend(await asyncio.to_thread(th.backend_ends, greeted_ends, len(PAYLOAD)))
            greeted.extend(await asyncio.to_thread(th.backend_ends, greeted_fin_ends,
                                                   len(PAYLOAD)))
            # a TLS client's FIN after its close_notify, and a FIN alone: still an end of
            # stream, the connection left open for the answer (Envoy's SslSocket)
            for name, close_notify in (("fin", True), ("fin-only", False)):
                out[name] = await asyncio.to_thread(
                    th.tls_client, ports["from-tls"], th.client_context(certs), PAYLOAD,
                    fin=True, close_notify=close_notify)

    try:
        _run(loop, main)
    finally:
        tls_srv.close()
        plain_srv.close()
        greeter.close()
        greeter_fin.close()
    answer = th.answer(PAYLOAD)
    # each end as Envoy passes it on (test_tls_half_close_envoy_parity)
    assert out == {name: (th.GREETING if name.startswith("greeted") else answer,
                          "close_notify" if name.startswith(("from-tls", "fin")) else "fin")
                   for name in (*th.PATHS, "fin", "fin-only")}
    # the backends that half-closed first still got the client's input, and its end
    assert greeted == ["close_notify", "close_notify"], (greeted_ends, greeted_fin_ends)
    assert tls_ends == [(len(PAYLOAD), "close_notify")] * 2  # to-tls, to-tls13
    # from-tls, mesh, mesh13, fin, fin-only
    assert plain_ends == [(len(PAYLOAD), "fin")] * 5


def test_close_notify_goes_through_ssl_shutdown(tmp_path: Path) -> None:
    """The SSL pointer of an SSLObject of remora's context is found (CPython's
    PySSLSocket layout), so send_close_notify calls SSL_shutdown once, and the peer reads
    the close_notify while the sender can still read what the peer sends after it."""
    certs = tmp_path / "certs"
    CertificateAuthority(tmp_path / "ca").ensure_workload(certs, "demo")
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = _transport(certs, False).context().wrap_bio(c_in, c_out, server_hostname="x")
    server = _transport(certs, True).context().wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = 0
        for obj in (client, server):
            try:
                obj.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done == 2:
            break
    handshake.send_close_notify(client)
    lib = handshake._shutdown
    assert lib is not None and handshake._ssl_pointer(client) is not None
    s_in.write(c_out.read())
    assert server.read(1024) == b""  # the end of stream (it has not sent its own)
    server.write(b"answer after close_notify")
    c_in.write(s_out.read())  # after the server's TLS 1.3 session tickets
    got = b""
    with pytest.raises(ssl.SSLWantReadError):
        while True:
            got += client.read(1024)
    assert got == b"answer after close_notify"


@pytest.mark.parametrize("close_notify", [True, False], ids=["close_notify+fin", "fin"])
@pytest.mark.parametrize("loop", LOOPS)
def test_a_fin_ends_the_stream_after_what_the_tls_layer_still_holds(
        tmp_path: Path, loop: str, close_notify: bool) -> None:
    """A TLS connection of a half-closing filter whose application has paused its reading
    (what tcp_proxy's downstream does while the upstream is slow) when the client's FIN
    comes, records still in the SSLObject's incoming BIO: the application reads them all,
    then the end of stream, and its answer and close_notify still reach the client (the
    FIN alone too: Envoy's SslSocket takes the socket's EOF for an end of stream)."""
    certs = tmp_path / "certs"
    CertificateAuthority(tmp_path / "ca").ensure_workload(certs, "demo")
    payload = bytes(range(256)) * 800  # 200 KiB: above a paused StreamReader's 128 KiB
    got: list[int] = []
    ssl_objects: list[weakref.ref[ssl.SSLObject]] = []

    async def main() -> None:
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        client = asyncio.ensure_future(asyncio.to_thread(
            th.tls_client, lsock.getsockname()[1], th.client_context(certs), payload,
            fin=True, close_notify=close_notify))
        conn, _ = await asyncio.get_running_loop().sock_accept(lsock)
        lsock.close()
        reader, writer, _, _ = await tls.accept_downstream(
            conn, _transport(certs, True), 64 * 1024, half_close=True)
        assert tls.half_close(writer.transport)
        ssl_objects.append(weakref.ref(writer.transport.get_extra_info("ssl_object")))
        await asyncio.sleep(0.5)  # the FIN comes while the reader is paused
        data = await reader.read()
        got.append(len(data))
        writer.write(th.answer(data))
        assert tls.write_eof(writer.transport)
        await writer.drain()
        writer.close()
        assert await client == (th.answer(payload), "close_notify")
        del reader, writer
        for _ in range(10):  # the transports' connection_lost callbacks
            await asyncio.sleep(0.01)

    gc.disable()  # what is left of the connection goes by reference counting alone
    try:
        _run(loop, main)
        assert got == [len(payload)]
        assert ssl_objects[0]() is None, "a reference cycle keeps the SSLObject"
    finally:
        gc.enable()
