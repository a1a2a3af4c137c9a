"""The TLS contexts' SSLObject (transport/tls.py): ``write`` and ``pending`` are the C
methods, ``read`` asks for at most READ_CAP bytes per call (uvloop asks for 256 KiB,
which glibc serves by mmap), and what goes through is the same, byte for byte, for a
body of many records; ``read`` into a buffer keeps its size. Driven over memory BIOs
with the contexts a DownstreamTlsContext and an UpstreamTlsContext give, no sockets."""

from __future__ import annotations

import os
import ssl
import tracemalloc
from pathlib import Path
from typing import cast

from remora.controlplane.ca import CertificateAuthority
from remora.proxy.config.strict import Fields
from remora.proxy.transport.tls import READ_CAP, TlsTransport, parse_transport_socket

TLS = "envoy.transport_sockets.tls"
PREFIX = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."


def _transport(certs: Path, server: bool) -> TlsTransport:
    common = {"tls_certificates": [{
        "certificate_chain": {"filename": str(certs / "cert-chain.pem")},
        "private_key": {"filename": str(certs / "key.pem")}}],
        "validation_context": {"trusted_ca": {"filename": str(certs / "root-cert.pem")}}}
    typed: dict[str, object] = {
        "@type": PREFIX + ("DownstreamTlsContext" if server else "UpstreamTlsContext"),
        "common_tls_context": common}
    if server:
        typed["require_client_certificate"] = True
    t = parse_transport_socket(Fields({"name": TLS, "typed_config": typed}, "ts"), server)
    assert t is not None
    return t


def _pair(tmp_path: Path) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.SSLObject, ssl.MemoryBIO]:
    certs = tmp_path / "certs"
    CertificateAuthority(tmp_path / "ca").ensure_workload(certs, "demo")
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = _transport(certs, False).context().wrap_bio(c_in, c_out, server_hostname="x")
    server = _transport(certs, True).context().wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # the handshake, one flight at a time
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
    assert client.getpeercert() and server.getpeercert()  # mutual, verified
    return client, c_in, server, s_out


def test_reads_are_capped_and_deliver_every_byte(tmp_path: Path) -> None:
    client, c_in, server, s_out = _pair(tmp_path)
    body = os.urandom(300 * 1024)  # 19 records of 16 KiB
    assert server.write(body) == len(body)
    assert server.pending() == 0
    c_in.write(s_out.read())
    got = []
    tracemalloc.start()
    try:
        while True:  # as uvloop's _do_read__copied: ask for 256 KiB while bytes wait
            try:
                chunk = client.read(256 * 1024)
            except ssl.SSLWantReadError:
                break
            assert 0 < len(chunk) <= READ_CAP
            got.append(chunk)
        # no read allocated a buffer of the size asked for (_ssl allocates what is asked
        # and shrinks it after): the largest block is the capped one
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert b"".join(got) == body
    # what was read so far plus one capped buffer; a 256 KiB one would go over
    assert peak < len(body) + 2 * READ_CAP


def test_read_into_a_buffer_keeps_its_size(tmp_path: Path) -> None:
    client, c_in, server, s_out = _pair(tmp_path)
    server.write(b"x" * 1000)
    c_in.write(s_out.read())
    buf = bytearray(600)
    # with a buffer, read returns the count (typeshed says bytes)
    assert cast(int, client.read(600, buf)) == 600
    assert client.pending() == 400  # the rest of the record, decrypted
    assert cast(int, client.read(600, buf)) == 400
    assert bytes(buf[:400]) == b"x" * 400
