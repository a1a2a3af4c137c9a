"""The API's I/O edge: HTTPS on loopback, HTTP/1.1 (keep-alive, chunked streams), and the
streams the handlers describe — watches (polling the store), followed logs and WebSocket
exec. Everything else is remora.kubeapi.handlers, run in a worker thread per request (the
store's reads are SQLite, one connection per thread).

ALPN offers only http/1.1: Go's client then speaks HTTP/1.1, which exec's WebSocket
upgrade needs anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import socket
import ssl
import struct
import termios
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

from remora.kubeapi import spdy
from remora.kubeapi import websocket as ws
from remora.kubeapi.certs import Credentials
from remora.kubeapi.handlers import Exec, Handler, LogStream, PortForward, Watch
from remora.kubeapi.messages import ApiError, Request, Response, status_object
from remora.kubeapi.streams import PodStream
from remora.kubeapi.versions import events

log = logging.getLogger("remora.kubeapi")
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
WATCH_POLL = 0.5
LOG_POLL = 0.2
POD_CHECK = 10  # a followed log checks every 10 polls (2 s) that its pod is still there
REASON = {200: "OK", 201: "Created", 101: "Switching Protocols", 400: "Bad Request",
          401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
          415: "Unsupported Media Type", 422: "Unprocessable Entity",
          500: "Internal Server Error"}


class ClientGone(Exception):
    pass


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise ApiError(400, "request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _ = lines[0].split(" ", 2)
    except ValueError:
        raise ApiError(400, f"bad request line {lines[0]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            name = name.strip().lower()
            headers[name] = f"{headers[name]}, {value.strip()}" if name in headers \
                else value.strip()
    body = b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size + 2)
            body = body[:-2]
            if len(body) > MAX_BODY:
                raise ApiError(400, "request body too large")
    elif headers.get("content-length"):
        length = int(headers["content-length"])
        if length > MAX_BODY:
            raise ApiError(400, "request body too large")
        body = await reader.readexactly(length)
    return Request.parse(method, target, headers, body)


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASON.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class KubeApiServer:
    def __init__(self, handler: Handler, creds: Credentials) -> None:
        self.handler = handler
        self.creds = creds
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.creds.cert), str(self.creds.key))
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._connection, host, port,
                                                  ssl=self._ssl(), limit=MAX_HEAD)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                try:
                    req = await _read_request(reader)
                except ApiError as exc:
                    await self._respond(writer, exc.response(), close=True)
                    return
                if req is None:
                    return
                keep = await self._serve(req, reader, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ClientGone, ssl.SSLError):
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("kubeapi connection failed")
        finally:
            if task is not None:
                self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, req: Request, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> bool:
        try:
            result = await asyncio.to_thread(self.handler.handle, req)
        except Exception as exc:  # a bug must still answer as the apiserver would
            log.exception("kubeapi handler failed on %s %s", req.method, req.path)
            result = Response.of(status_object(500, f"internal error: {exc!r}"), 500)
        close = req.headers.get("connection", "").lower() == "close"
        if isinstance(result, Response):
            await self._respond(writer, result, close)
            return not close
        if isinstance(result, Watch):
            await self._watch(result, reader, writer)
        elif isinstance(result, LogStream):
            await self._follow(result, reader, writer)
        elif isinstance(result, PortForward):
            await self._portforward(req, result, reader, writer)
        else:
            await self._exec(req, result, reader, writer)
        return False

    async def _respond(self, writer: asyncio.StreamWriter, resp: Response,
                       close: bool) -> None:
        own = {name.lower() for name, _ in resp.headers}
        headers = [("Content-Type", resp.content_type),
                   ("Content-Length", str(len(resp.body))),
                   *(() if "cache-control" in own else (("Cache-Control", "no-cache, private"),)),
                   *resp.headers]
        # apimachinery's NewWarningHeader: a quoted-string, `"` and `\` escaped (client-go
        # unquotes it, so kubectl prints `unknown field "spec.x"` as from an apiserver)
        headers += [("Warning", '299 - "' + w.replace("\\", "\\\\").replace('"', '\\"') + '"')
                    for w in resp.warnings]
        if close:
            headers.append(("Connection", "close"))
        writer.write(_head(resp.status, headers) + resp.body)
        await writer.drain()

    @staticmethod
    def _chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n" if data else b""

    async def _stream_head(self, writer: asyncio.StreamWriter, content_type: str) -> None:
        writer.write(_head(200, [("Content-Type", content_type),
                                 ("Transfer-Encoding", "chunked"),
                                 ("Cache-Control", "no-cache, private")]))
        await writer.drain()

    @staticmethod
    def _gone(reader: asyncio.StreamReader) -> asyncio.Task[bytes]:
        # a streaming client sends nothing more: EOF means it went away
        return asyncio.ensure_future(reader.read(1))

    async def _watch(self, w: Watch, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        view, first = await asyncio.to_thread(self.handler.watch_start, w)
        await self._stream_head(writer, "application/json")
        gone = self._gone(reader)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + w.timeout if w.timeout else None
        sent = 0
        try:
            pending = first
            while True:
                for kind, obj in pending:
                    writer.write(self._chunk(self.handler.watch_event(w, kind, obj,
                                                                      sent == 0)))
                    sent += 1
                await writer.drain()
                wait = WATCH_POLL if deadline is None else min(WATCH_POLL,
                                                               deadline - loop.time())
                if wait <= 0:
                    break
                done, _ = await asyncio.wait({gone}, timeout=wait)
                if done:
                    return
                current = await asyncio.to_thread(self.handler.watch_view, w)
                pending = events(view, current)
                view = current
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            gone.cancel()

    async def _follow(self, stream: LogStream, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await self._stream_head(writer, "text/plain")
        gone = self._gone(reader)
        path: Path = stream.path
        handle: BinaryIO | None = None
        remaining = stream.remaining  # limitBytes still to send (None: no limit)

        def limited(data: bytes) -> bytes:
            nonlocal remaining
            if remaining is None:
                return data
            data = data[:remaining]
            remaining -= len(data)
            return data

        try:
            writer.write(self._chunk(stream.text.encode()))
            await writer.drain()
            if remaining == 0:  # limitBytes reached: the stream ends, as kubelet ends it
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return
            inode = None
            try:
                st = path.stat()
                handle = open(path, "rb")  # noqa: SIM115 - followed across polls
                handle.seek(0, os.SEEK_END)
                inode = st.st_ino
            except OSError:
                pass
            polls = 0
            while True:
                done, _ = await asyncio.wait({gone}, timeout=LOG_POLL)
                if done:
                    return
                polls += 1
                if polls % POD_CHECK == 0 and not await asyncio.to_thread(
                        self.handler.pod_alive, stream):
                    if handle is not None:  # the last lines, then the end of the stream
                        writer.write(self._chunk(limited(handle.read())))
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return
                try:
                    now_inode: int | None = path.stat().st_ino
                except OSError:
                    now_inode = None
                if now_inode is not None and now_inode != inode:  # a restart replaced the file
                    if handle is not None:
                        writer.write(self._chunk(limited(handle.read())))
                        handle.close()
                    handle, inode = open(path, "rb"), now_inode  # noqa: SIM115
                if handle is not None:
                    writer.write(self._chunk(limited(handle.read())))
                    await writer.drain()
                if remaining == 0:
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return
        finally:
            gone.cancel()
            if handle is not None:
                handle.close()

    async def _exec(self, req: Request, ex: Exec, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        key = req.headers.get("sec-websocket-key", "")
        writer.write(_head(101, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                 ("Sec-WebSocket-Accept", ws.accept_key(key)),
                                 ("Sec-WebSocket-Protocol", ex.protocol)]))
        await writer.drain()
        master = -1  # the pty's master side, with tty (kubectl exec -t)
        try:
            if ex.tty:
                # a terminal, as the runtime gives a container's exec with tty: the
                # command's stdin, stdout and stderr are the pty (so its shell prompts,
                # `tty` names it, isatty is true), its controlling terminal too
                master, slave = os.openpty()
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *ex.argv, stdin=slave, stdout=slave, stderr=slave,
                        start_new_session=True, preexec_fn=_controlling_tty)
                finally:
                    os.close(slave)
                os.set_blocking(master, False)
            else:
                proc = await asyncio.create_subprocess_exec(
                    *ex.argv, stdin=asyncio.subprocess.PIPE if ex.stdin else
                    asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            if master >= 0:
                os.close(master)
            writer.write(ws.channel(ws.ERROR, json.dumps(status_object(
                500, f"exec: cannot start {ex.argv[-1]!r}: {exc.strerror}")).encode()))
            writer.write(ws.close_frame())
            await writer.drain()
            return
        lock = asyncio.Lock()

        async def send(data: bytes) -> None:
            async with lock:
                writer.write(data)
                await writer.drain()

        async def pump(stream: asyncio.StreamReader | None, channel: int, wanted: bool) -> None:
            if stream is None:
                return
            while chunk := await stream.read(32 * 1024):
                if wanted:
                    await send(ws.channel(channel, chunk))

        async def pump_pty() -> None:
            # the pty's output is the stdout channel (a terminal has no separate stderr,
            # kubelet sends it all on stdout); EIO once every holder of the slave closed
            loop = asyncio.get_running_loop()
            ready: asyncio.Queue[bytes] = asyncio.Queue()

            def readable() -> None:
                try:
                    data = os.read(master, 32 * 1024)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if not data:
                    loop.remove_reader(master)
                ready.put_nowait(data)

            loop.add_reader(master, readable)
            try:
                while chunk := await ready.get():
                    await send(ws.channel(ws.STDOUT, chunk))
            finally:
                loop.remove_reader(master)

        async def to_stdin(payload: bytes) -> None:
            view = memoryview(payload)
            while view and proc.returncode is None:
                try:  # the pty's input queue is small: a paste may take several writes
                    view = view[os.write(master, view):]
                except BlockingIOError:
                    await asyncio.sleep(0.02)
                except OSError:
                    return

        async def client() -> None:
            async for frame in _client_frames(reader, send):
                if frame.opcode == ws.OP_CLOSE:
                    break
                if not frame.payload:
                    continue
                stream, payload = frame.payload[0], frame.payload[1:]
                if master >= 0 and stream == ws.STDIN:
                    await to_stdin(payload)
                elif master >= 0 and stream == ws.RESIZE:
                    _resize(master, payload)
                elif master >= 0 and stream == ws.CLOSE:
                    pass  # a terminal's end of input is the user's ^D, sent as stdin
                elif stream == ws.STDIN and proc.stdin is not None:
                    proc.stdin.write(payload)
                    await proc.stdin.drain()
                elif stream == ws.CLOSE and payload[:1] == bytes([ws.STDIN]) and \
                        proc.stdin is not None:
                    proc.stdin.close()
            # the client went away (its end of the connection, or a close frame)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 15)

        reading = asyncio.ensure_future(client())
        try:
            if master >= 0:
                output = asyncio.ensure_future(pump_pty())
                code = await proc.wait()
                # what it wrote last, until the pty is drained (a background child that
                # keeps the terminal open does not hold the exec's end)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(output), 0.5)
                output.cancel()
            else:
                await asyncio.gather(pump(proc.stdout, ws.STDOUT, ex.stdout),
                                     pump(proc.stderr, ws.STDERR, ex.stderr))
                code = await proc.wait()
            await send(ws.channel(ws.ERROR, json.dumps(ws.exit_status(code)).encode()))
            await send(ws.close_frame())
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                await asyncio.wait_for(asyncio.shield(reading), 2)
        finally:
            reading.cancel()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                await proc.wait()
            if master >= 0:
                os.close(master)


    async def _portforward(self, req: Request, pf: PortForward, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        """kubelet's side of port-forward (pkg/kubelet/cri/streaming/portforward/
        httpstream.go) over client-go's WebSocket tunnel: the client opens two SPDY
        streams per local connection, headers streamType error|data, port and
        requestID; each is answered with SYN_REPLY, and the pair becomes one TCP
        connection to the port on the pod's loopback. The pod's bytes go back on the
        data stream; its end is the data stream's FIN, then the error stream's (empty:
        no error), which is what the client waits for before closing its side. The
        client's bytes reach the pod through each data stream's own PodStream, so a pod
        connection that does not read holds back its own stream only."""
        key = req.headers.get("sec-websocket-key", "")
        writer.write(_head(101, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                 ("Sec-WebSocket-Accept", ws.accept_key(key)),
                                 ("Sec-WebSocket-Protocol", pf.protocol)]))
        await writer.drain()
        codec = spdy.Codec()
        lock = asyncio.Lock()
        kinds: dict[int, tuple[str, str, str]] = {}  # stream -> (type, requestID, port)
        pairs: dict[str, dict[str, int]] = {}  # requestID -> {"error": id, "data": id}
        pods: dict[int, asyncio.StreamWriter] = {}  # data stream -> the pod's connection
        # data stream -> its way to the pod: the frame loop never waits on a pod's
        # connection, each stream writes on its own (remora.kubeapi.streams)
        streams: dict[int, PodStream] = {}
        tasks: set[asyncio.Task[None]] = set()

        async def send(data: bytes) -> None:
            async with lock:  # one SPDY frame per WebSocket message, never interleaved
                writer.write(ws.frame(ws.OP_BINARY, data))
                await writer.drain()

        def drop(data_id: int) -> None:
            stream = streams.pop(data_id, None)
            if stream is not None:
                stream.close()

        async def forward(request: str, port_text: str) -> None:
            error_id, data_id = pairs[request]["error"], pairs[request]["data"]
            try:
                port = int(port_text)
                if not 0 < port < 65536:
                    raise ValueError
            except ValueError:
                drop(data_id)
                await send(codec.data(error_id, f"invalid port {port_text!r}".encode(), True))
                await send(codec.data(data_id, b"", True))
                return
            try:
                sock = await _dial_in_netns(pf.netns, port)
            except OSError as exc:
                # kubelet: "error forwarding port %d to pod %s, uid %v: %v" around
                # containerd's "failed to connect to localhost:%d inside namespace %q,
                # IPv4: %v IPv6 %v"
                message = (f"error forwarding port {port} to pod {pf.pod}, uid {pf.uid}: "
                           f"failed to connect to localhost:{port} inside namespace "
                           f"\"{pf.netns}\", {exc}")
                drop(data_id)
                await send(codec.data(error_id, message.encode(), True))
                await send(codec.data(data_id, b"", True))
                return
            pod_reader, pod_writer = await asyncio.open_connection(sock=sock)
            pods[data_id] = pod_writer
            stream = streams.get(data_id)
            if stream is None:  # reset before the pod answered
                pod_writer.close()
                return
            stream.attach(pod_writer)  # what came before the connection goes first
            try:
                while chunk := await pod_reader.read(32 * 1024):
                    await send(codec.data(data_id, chunk))
            except ConnectionError:
                pass
            await send(codec.data(data_id, b"", True))
            await send(codec.data(error_id, b"", True))
            pods.pop(data_id, None)
            drop(data_id)
            pod_writer.close()

        async def on_frame(frame: spdy.Frame) -> bool:
            if frame.control and frame.type == spdy.SYN_STREAM:
                await send(codec.syn_reply(frame.stream))
                kind = frame.headers.get("streamtype", "")
                request = frame.headers.get("requestid", "")
                kinds[frame.stream] = (kind, request, frame.headers.get("port", ""))
                if kind in ("error", "data"):
                    if kind == "data":
                        streams[frame.stream] = PodStream()
                    pair = pairs.setdefault(request, {})
                    pair[kind] = frame.stream
                    if len(pair) == 2:
                        task = asyncio.ensure_future(
                            forward(request, kinds[pair["data"]][2]))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                else:
                    await send(codec.rst(frame.stream, 1))  # PROTOCOL_ERROR
            elif not frame.control:
                if kinds.get(frame.stream, ("",))[0] != "data":
                    return True  # the error stream's FIN: the client writes nothing on it
                stream = streams.get(frame.stream)
                if stream is None:
                    return True  # its pod connection is gone (or never came)
                # waits only while this stream holds its whole buffer (streams.py)
                await stream.put(frame.data)
                if frame.fin:
                    stream.end()
            elif frame.type == spdy.RST_STREAM:
                drop(frame.stream)
                pod = pods.pop(frame.stream, None)
                if pod is not None:
                    pod.close()
            elif frame.type == spdy.PING:
                await send(codec.ping(frame.data))
            elif frame.type == spdy.GOAWAY:
                return False
            return True  # SETTINGS, WINDOW_UPDATE: spdystream does no flow control

        async def send_raw(data: bytes) -> None:
            await _send_raw(writer, lock, data)

        try:
            async for frame in _client_frames(reader, send_raw):
                if frame.opcode == ws.OP_CLOSE:
                    await send_raw(ws.close_frame())
                    return
                for spdy_frame in codec.feed(frame.payload):
                    if not await on_frame(spdy_frame):
                        return
        except ValueError as exc:  # not SPDY/3: close, as spdystream would
            log.warning("port-forward to %s: %s", pf.pod, exc)
        finally:
            for task in list(tasks):
                task.cancel()
            for stream in streams.values():
                stream.close()
            for pod in pods.values():
                pod.close()


async def _client_frames(reader: asyncio.StreamReader,
                         send: Callable[[bytes], Awaitable[None]]) -> AsyncIterator[ws.Frame]:
    """The frames a WebSocket client sends on READER that its server acts on (binary and
    continuation frames, and a close frame, after which nothing more is read), until the
    client's end of the connection; a ping is answered with a pong through SEND."""
    buffer = b""
    while data := await reader.read(64 * 1024):
        buffer += data
        while True:
            frame, used = ws.parse(buffer)
            if frame is None:
                break
            buffer = buffer[used:]
            if frame.opcode == ws.OP_PING:
                await send(ws.frame(ws.OP_PONG, frame.payload))
            elif frame.opcode == ws.OP_CLOSE:
                yield frame
                return
            elif frame.opcode in (ws.OP_BINARY, ws.OP_CONT):
                yield frame


async def _send_raw(writer: asyncio.StreamWriter, lock: asyncio.Lock, data: bytes) -> None:
    async with lock:
        writer.write(data)
        await writer.drain()


_CLONE_NEWNET = 0x40000000


def _socket_in_netns(netns: str, family: int) -> socket.socket:
    """A TCP socket made in network namespace NETNS (a socket stays in the namespace it
    was made in), from a thread of its own: setns(2) changes only the calling thread's
    namespace, and this thread ends after it."""
    made: list[socket.socket] = []
    failed: list[OSError] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            with open(f"/run/netns/{netns}", "rb") as target:
                if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            made.append(socket.socket(family, socket.SOCK_STREAM))
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


async def _dial_in_netns(netns: str, port: int) -> socket.socket:
    """A connection to PORT on the pod's loopback, IPv4 then IPv6, as containerd's
    PortForward dials localhost inside the sandbox's network namespace."""
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = await asyncio.to_thread(_socket_in_netns, netns, family)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), 5)
            return sock
        except OSError as exc:  # TimeoutError (wait_for's) is an OSError too
            sock.close()
            why = os.strerror(exc.errno).lower() if exc.errno else "timed out"
            errors.append(f"{'IPv4' if family == socket.AF_INET else 'IPv6'}: dial "
                          f"{address} port {port}: {why}")
    raise OSError(", ".join(errors))


def _controlling_tty() -> None:
    """In the exec'd child, after setsid: make its stdin (the pty) the session's
    controlling terminal, so ^C reaches the foreground job as SIGINT."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _resize(master: int, payload: bytes) -> None:
    """The resize channel's {"Width": W, "Height": H} (remotecommand's TerminalSize), set
    on the pty as a runtime sets it (the shell gets SIGWINCH)."""
    try:
        size = json.loads(payload)
        rows, cols = int(size.get("Height", 0)), int(size.get("Width", 0))
    except (ValueError, AttributeError, TypeError):
        return
    if 0 < rows < 65536 and 0 < cols < 65536:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
