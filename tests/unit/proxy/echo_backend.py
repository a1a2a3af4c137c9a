"""The HTTP/1.1 backend of the Envoy parity tests: ``python3 echo_backend.py PORT [--empty-header]``
(or its source with ``python3 -c``; loopback_proxies.echo_backend starts it), on 127.0.0.1.

It echoes the request head and body it received (Content-Length or chunked) as a 200 with
a Content-Length, on a keep-alive connection, except by path prefix:

- /slow answers after 1 s (route and per-try timeouts);
- /reset closes the connection without an answer;
- /half promises 100 bytes, sends 3 and closes (a truncated response);
- /chunked answers 201 with a chunked body of its own;
- /drip answers 200 at once and its chunked body in three parts 80 ms apart (a response
  that outlasts a per-try timeout after it started);
- /r503 answers 503 (retries on 5xx or on status 503);
- /flaky answers 503 and 500 alternately (one retry per proxy: each gets 503, then 500);
- a gRPC request (content-type application/grpc) to any other path gets a trailers-only
  answer (200, grpc-status 0, no body) that names the grpc-timeout it came with in
  x-seen-grpc-timeout: a proxy counts a gRPC response without grpc-status as the host's
  error (Envoy's Router::Filter), so an echo with a body would not do.

With --empty-header every echo also carries ``x-empty-up:`` with an empty value (an
access log's %RESP(X-EMPTY-UP)% prints it empty, not ``-``).

Standard library only: it runs as its own process, apart from the tests' imports.
"""

from __future__ import annotations

import asyncio
import sys

FLAKY_HITS = [0]


async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, empty_header: bool) -> None:
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1]
            hm = {line.split(b":")[0].lower(): line.split(b":", 1)[1].strip()
                  for line in head.split(b"\r\n")[1:] if b":" in line}
            body = await r.readexactly(int(hm.get(b"content-length", 0)))
            if hm.get(b"transfer-encoding") == b"chunked":
                while size := int((await r.readuntil(b"\r\n")).strip(), 16):
                    body += (await r.readexactly(size + 2))[:-2]
                await r.readuntil(b"\r\n")
            if path.startswith(b"/slow"):
                await asyncio.sleep(1)
            if path.startswith(b"/reset"):
                break
            if path.startswith(b"/half"):
                w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
                break
            if path.startswith(b"/drip"):
                w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                for part in (b"abc", b"def", b"ghi"):
                    await w.drain()
                    await asyncio.sleep(0.08)
                    w.write(b"%x\r\n%s\r\n" % (len(part), part))
                w.write(b"0\r\n\r\n")
                continue
            if path.startswith(b"/chunked"):
                w.write(b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\nserver: app\r\n"
                        b"\r\n3\r\nabc\r\n0\r\n\r\n")
                continue
            if hm.get(b"content-type", b"").startswith(b"application/grpc"):
                w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 0"
                        b"\r\nx-seen-grpc-timeout: " + hm.get(b"grpc-timeout", b"-")
                        + b"\r\ncontent-length: 0\r\n\r\n")
                await w.drain()
                continue
            status = b"200 OK"
            if path.startswith(b"/r503"):
                status = b"503 Unavailable"
            elif path.startswith(b"/flaky"):
                FLAKY_HITS[0] += 1
                status = b"503 Unavailable" if FLAKY_HITS[0] % 2 else b"500 Oops"
            extra = b"x-empty-up: \r\n" if empty_header else b""
            out = head + body
            w.write(b"HTTP/1.1 " + status + b"\r\n" + extra
                    + b"content-length: %d\r\n\r\n" % len(out) + out)
            await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    w.close()


async def main(port: int, empty_header: bool) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, empty_header),
                                        "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), "--empty-header" in sys.argv[2:]))
