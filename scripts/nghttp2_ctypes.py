"""A minimal ctypes binding to nghttp2's C library (libnghttp2), server side only.

A measurement tool for scripts/bench_h2_codec.py (issue #11: measure the pure-Python `h2`
against nghttp2 before choosing), not a dependency of remora: nothing under src/ imports
it. It covers what a server needs to serve request/response streams: a session made by
``nghttp2_session_server_new`` with the callbacks on_begin_headers, on_header,
on_frame_recv, on_data_chunk_recv and on_stream_close, bytes in through
``nghttp2_session_mem_recv``, responses through ``nghttp2_submit_response`` with a data
provider whose read callback ends the body with ``NGHTTP2_DATA_FLAG_NO_END_STREAM`` and
submits the trailers (``nghttp2_submit_trailer``, the order nghttp2's documentation gives
for trailers after a response body), and bytes out through ``nghttp2_session_mem_send``
(the library's own send buffer, so no send callback is needed).

The declarations follow nghttp2/nghttp2.h of nghttp2 1.52 (Debian 12's libnghttp2-14; the
header package is not installed, so the structs are spelled out here): the ssize_t API
(``nghttp2_session_mem_recv``/``mem_send``; 1.60 added the nghttp2_ssize ``*2`` variants
and kept these). Only the frame header (``nghttp2_frame_hd``) of ``nghttp2_frame`` is read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    Union,
    byref,
    c_char_p,
    c_int,
    c_int32,
    c_size_t,
    c_ssize_t,
    c_uint8,
    c_uint32,
    c_void_p,
    string_at,
)
from dataclasses import dataclass, field
from typing import Any

Header = tuple[bytes, bytes]

# nghttp2_frame_type
DATA = 0x00
HEADERS = 0x01
# nghttp2_flag
FLAG_END_STREAM = 0x01
# nghttp2_data_flag
DATA_FLAG_EOF = 0x01
DATA_FLAG_NO_END_STREAM = 0x02
# nghttp2_settings_id
SETTINGS_MAX_CONCURRENT_STREAMS = 0x03
SETTINGS_INITIAL_WINDOW_SIZE = 0x04
SETTINGS_MAX_HEADER_LIST_SIZE = 0x06
# nghttp2_error
ERR_CALLBACK_FAILURE = -902


class FrameHd(Structure):
    """nghttp2_frame_hd, the first member of every nghttp2_frame union member."""

    _fields_ = [("length", c_size_t), ("stream_id", c_int32), ("type", c_uint8),
                ("flags", c_uint8), ("reserved", c_uint8)]


class Nv(Structure):
    """nghttp2_nv; flags 0 (NGHTTP2_NV_FLAG_NONE): the library copies name and value."""

    _fields_ = [("name", c_char_p), ("value", c_char_p), ("namelen", c_size_t),
                ("valuelen", c_size_t), ("flags", c_uint8)]


class SettingsEntry(Structure):
    _fields_ = [("settings_id", c_int32), ("value", c_uint32)]


class DataSource(Union):
    _fields_ = [("fd", c_int), ("ptr", c_void_p)]


# ssize_t (*)(nghttp2_session*, int32_t stream_id, uint8_t *buf, size_t length,
#             uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
READ_CB = CFUNCTYPE(c_ssize_t, c_void_p, c_int32, c_void_p, c_size_t, POINTER(c_uint32),
                    c_void_p, c_void_p)


class DataProvider(Structure):
    _fields_ = [("source", DataSource), ("read_callback", READ_CB)]


FRAME_P = POINTER(FrameHd)
# int (*)(nghttp2_session*, const nghttp2_frame*, void *user_data)
FRAME_CB = CFUNCTYPE(c_int, c_void_p, FRAME_P, c_void_p)
# int (*)(nghttp2_session*, const nghttp2_frame*, const uint8_t *name, size_t namelen,
#         const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data)
HEADER_CB = CFUNCTYPE(c_int, c_void_p, FRAME_P, c_void_p, c_size_t, c_void_p, c_size_t,
                      c_uint8, c_void_p)
# int (*)(nghttp2_session*, uint8_t flags, int32_t stream_id, const uint8_t *data,
#         size_t len, void *user_data)
CHUNK_CB = CFUNCTYPE(c_int, c_void_p, c_uint8, c_int32, c_void_p, c_size_t, c_void_p)
# int (*)(nghttp2_session*, int32_t stream_id, uint32_t error_code, void *user_data)
CLOSE_CB = CFUNCTYPE(c_int, c_void_p, c_int32, c_uint32, c_void_p)


class _Info(Structure):
    _fields_ = [("age", c_int), ("version_num", c_int), ("version_str", c_char_p),
                ("proto_str", c_char_p)]


class Nghttp2Missing(RuntimeError):
    pass


_LIB: Any = None


def library() -> Any:
    """The loaded libnghttp2 with the prototypes used here; Nghttp2Missing if absent."""
    global _LIB
    if _LIB is not None:
        return _LIB
    name = ctypes.util.find_library("nghttp2") or "libnghttp2.so.14"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise Nghttp2Missing(f"libnghttp2 not found ({exc}); apt-get install "
                             "libnghttp2-14") from exc
    proto: dict[str, tuple[Any, list[Any]]] = {
        "nghttp2_version": (POINTER(_Info), [c_int]),
        "nghttp2_strerror": (c_char_p, [c_int]),
        "nghttp2_session_callbacks_new": (c_int, [POINTER(c_void_p)]),
        "nghttp2_session_callbacks_del": (None, [c_void_p]),
        "nghttp2_session_callbacks_set_on_begin_headers_callback": (None, [c_void_p, FRAME_CB]),
        "nghttp2_session_callbacks_set_on_header_callback": (None, [c_void_p, HEADER_CB]),
        "nghttp2_session_callbacks_set_on_frame_recv_callback": (None, [c_void_p, FRAME_CB]),
        "nghttp2_session_callbacks_set_on_data_chunk_recv_callback":
            (None, [c_void_p, CHUNK_CB]),
        "nghttp2_session_callbacks_set_on_stream_close_callback": (None, [c_void_p, CLOSE_CB]),
        "nghttp2_session_server_new": (c_int, [POINTER(c_void_p), c_void_p, c_void_p]),
        "nghttp2_session_del": (None, [c_void_p]),
        "nghttp2_session_mem_recv": (c_ssize_t, [c_void_p, c_char_p, c_size_t]),
        "nghttp2_session_mem_send": (c_ssize_t, [c_void_p, POINTER(c_void_p)]),
        "nghttp2_submit_settings": (c_int, [c_void_p, c_uint8, POINTER(SettingsEntry),
                                            c_size_t]),
        "nghttp2_submit_response": (c_int, [c_void_p, c_int32, POINTER(Nv), c_size_t,
                                            POINTER(DataProvider)]),
        "nghttp2_submit_trailer": (c_int, [c_void_p, c_int32, POINTER(Nv), c_size_t]),
        "nghttp2_session_set_local_window_size": (c_int, [c_void_p, c_uint8, c_int32,
                                                          c_int32]),
    }
    for fname, (restype, argtypes) in proto.items():
        fn = getattr(lib, fname)
        fn.restype, fn.argtypes = restype, argtypes
    _LIB = lib
    return lib


def version() -> str:
    """The loaded library's version string, e.g. "1.52.0"."""
    info = library().nghttp2_version(0)
    return str(info.contents.version_str.decode())


def _check(rv: int, what: str) -> int:
    if rv < 0:
        raise RuntimeError(f"{what}: {library().nghttp2_strerror(rv).decode()} ({rv})")
    return rv


def nv_array(headers: list[Header]) -> Any:
    """A C array of nghttp2_nv for HEADERS; it keeps the bytes objects alive."""
    return (Nv * len(headers))(*[Nv(n, v, len(n), len(v), 0) for n, v in headers])


@dataclass
class Request:
    """One request as the server received it."""

    stream_id: int
    headers: list[Header] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)


Handler = Callable[["Nghttp2Server", Request], None]


class Nghttp2Server:
    """The server side of one HTTP/2 connection on an nghttp2 session, sans I/O:
    ``receive(bytes)`` then ``data_to_send()``. ``on_request`` is called once per request
    whose END_STREAM arrived (headers and body complete); it answers with ``respond``."""

    def __init__(self, on_request: Handler, *, max_concurrent_streams: int = 100,
                 max_header_list_size: int = 65536, initial_window_size: int = 65535,
                 connection_window_size: int = 65535) -> None:
        lib = library()
        self._lib = lib
        self.on_request = on_request
        self.streams: dict[int, Request] = {}
        self.error: BaseException | None = None
        self._bodies: dict[int, tuple[bytes, list[Header]]] = {}
        # The CFUNCTYPE objects must outlive the session: kept on self.
        self._cbs = (FRAME_CB(self._on_begin_headers), HEADER_CB(self._on_header),
                     FRAME_CB(self._on_frame_recv), CHUNK_CB(self._on_data_chunk),
                     CLOSE_CB(self._on_stream_close))
        self._read_cb = READ_CB(self._read)
        callbacks = c_void_p()
        _check(lib.nghttp2_session_callbacks_new(byref(callbacks)), "callbacks_new")
        try:
            lib.nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, self._cbs[0])
            lib.nghttp2_session_callbacks_set_on_header_callback(callbacks, self._cbs[1])
            lib.nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, self._cbs[2])
            lib.nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks,
                                                                          self._cbs[3])
            lib.nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, self._cbs[4])
            session = c_void_p()
            _check(lib.nghttp2_session_server_new(byref(session), callbacks, None),
                   "session_server_new")
        finally:
            lib.nghttp2_session_callbacks_del(callbacks)
        self._session = session
        # The server connection preface: our SETTINGS (h2 advertises the same two limits by
        # default), then the connection window (a WINDOW_UPDATE on stream 0) if enlarged.
        iv = (SettingsEntry * 3)(
            SettingsEntry(SETTINGS_MAX_CONCURRENT_STREAMS, max_concurrent_streams),
            SettingsEntry(SETTINGS_MAX_HEADER_LIST_SIZE, max_header_list_size),
            SettingsEntry(SETTINGS_INITIAL_WINDOW_SIZE, initial_window_size))
        _check(lib.nghttp2_submit_settings(session, 0, iv, 3), "submit_settings")
        if connection_window_size != 65535:
            _check(lib.nghttp2_session_set_local_window_size(session, 0, 0,
                                                             connection_window_size),
                   "set_local_window_size")
        self._out = c_void_p()
        self._out_ref = byref(self._out)

    # -- callbacks (exceptions are kept and fail the session: ctypes would swallow them) --

    def _on_begin_headers(self, _s: int, frame: Any, _u: int) -> int:
        try:
            sid = frame.contents.stream_id
            if sid not in self.streams:
                self.streams[sid] = Request(sid)
            return 0
        except BaseException as exc:
            self.error = exc
            return ERR_CALLBACK_FAILURE

    def _on_header(self, _s: int, frame: Any, name: int, namelen: int, value: int,
                   valuelen: int, _flags: int, _u: int) -> int:
        try:
            self.streams[frame.contents.stream_id].headers.append(
                (string_at(name, namelen), string_at(value, valuelen)))
            return 0
        except BaseException as exc:
            self.error = exc
            return ERR_CALLBACK_FAILURE

    def _on_data_chunk(self, _s: int, _flags: int, sid: int, data: int, length: int,
                       _u: int) -> int:
        try:
            self.streams[sid].body.append(string_at(data, length))
            return 0
        except BaseException as exc:
            self.error = exc
            return ERR_CALLBACK_FAILURE

    def _on_frame_recv(self, _s: int, frame: Any, _u: int) -> int:
        try:
            hd = frame.contents
            if hd.flags & FLAG_END_STREAM and hd.type in (DATA, HEADERS):
                self.on_request(self, self.streams[hd.stream_id])
            return 0
        except BaseException as exc:
            self.error = exc
            return ERR_CALLBACK_FAILURE

    def _on_stream_close(self, _s: int, sid: int, _code: int, _u: int) -> int:
        self.streams.pop(sid, None)
        self._bodies.pop(sid, None)
        return 0

    def _read(self, _s: int, sid: int, buf: int, length: int, data_flags: Any, _src: int,
              _u: int) -> int:
        try:
            body, trailers = self._bodies[sid]
            n = min(len(body), length)
            ctypes.memmove(buf, body, n)
            if n < len(body):
                self._bodies[sid] = (body[n:], trailers)
                return n
            if not trailers:
                data_flags[0] = DATA_FLAG_EOF
                return n
            data_flags[0] = DATA_FLAG_EOF | DATA_FLAG_NO_END_STREAM
            nva = nv_array(trailers)
            _check(self._lib.nghttp2_submit_trailer(self._session, sid, nva, len(trailers)),
                   "submit_trailer")
            return n
        except BaseException as exc:
            self.error = exc
            return ERR_CALLBACK_FAILURE

    # -- the API --

    def respond(self, stream_id: int, headers: list[Header], body: bytes,
                trailers: list[Header]) -> None:
        """Queue a response: HEADERS, the body in DATA frames, then trailers (HEADERS with
        END_STREAM) or, without trailers, END_STREAM on the last DATA frame."""
        self._bodies[stream_id] = (body, trailers)
        provider = DataProvider(DataSource(0), self._read_cb)
        nva = nv_array(headers)
        _check(self._lib.nghttp2_submit_response(self._session, stream_id, nva, len(headers),
                                                 byref(provider)), "submit_response")

    def receive(self, data: bytes) -> None:
        """Process bytes from the client (mem_recv consumes all of it or fails)."""
        rv = self._lib.nghttp2_session_mem_recv(self._session, data, len(data))
        if self.error is not None:
            raise self.error
        _check(rv, "session_mem_recv")

    def data_to_send(self) -> bytes:
        """Everything the session has to send now (mem_send until it returns 0)."""
        out = []
        mem_send, session, ref = self._lib.nghttp2_session_mem_send, self._session, self._out_ref
        while (n := mem_send(session, ref)) > 0:
            out.append(string_at(self._out, n))
        if self.error is not None:
            raise self.error
        _check(n, "session_mem_send")
        return b"".join(out)

    def close(self) -> None:
        if self._session:
            self._lib.nghttp2_session_del(self._session)
            self._session = c_void_p()

    def __enter__(self) -> Nghttp2Server:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
