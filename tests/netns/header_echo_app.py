"""An app that answers every request with the request head it received as its body:
``python3 header_echo_app.py PORT`` (all addresses), for the mTLS tests that look at the
headers a sidecar adds (x-forwarded-client-cert). Keep-alive, HTTP/1.1, bodies read by
Content-Length. Standard library only: it runs as its own process in a namespace."""

from __future__ import annotations

import asyncio
import sys


async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await r.readexactly(length)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                    b"content-length: %d\r\n\r\n" % len(head) + head)
            await w.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    w.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, None, port, reuse_address=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
