"""Envoy's access-log format strings as a pure function of ``StreamInfo``.

Command operators: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#command-operators
A format string is compiled once into a list of literal strings and operator closures; a
log line is then one pass over that list. Missing values print as ``-`` in text and as
``null`` in ``json_format`` (where a value that is exactly one operator keeps its type, so
``%RESPONSE_CODE%`` is a number), as Envoy 1.40 prints them.
"""

from __future__ import annotations

import ast
import json
import math
import re
import socket
import time
from collections.abc import Callable
from typing import Any

from remora.proxy.config.strict import ConfigError
from remora.proxy.http.header_matcher import RepeatedHeaders
from remora.proxy.stream_info import StreamInfo
from remora.proxy.transport.connection_info import FIELDS as TLS_FIELDS
from remora.proxy.transport.connection_info import UPSTREAM_FIELDS as UPSTREAM_TLS_FIELDS

Value = str | int | None
Op = Callable[[StreamInfo], Value]

# Envoy's default format when log_format is absent
# (source/common/formatter/substitution_format_string.cc DefaultUnstructuredFormat).
DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)
# Istio's default text format is not the proxy's to know: the control plane writes it into
# every sidecar config (remora.controlplane.envoy_common.ACCESS_LOG_FORMAT, its one
# definition) and the proxy compiles it from there like any other format string.


def _no_spaces(value: str | None) -> str | None:
    # Envoy replaces spaces in details and failure reasons so a line splits on spaces.
    return value.replace(" ", "_") if value else None


def _without_port(addr: str | None) -> str | None:
    if not addr:
        return None
    host = addr.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host


_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))  # START_TIME's fraction and zone
# The text of the integers most lines print (status codes, small byte counts, durations in
# ms): an f-string formats an int through PyObject_Format and a new string each time (~400
# instructions under callgrind), a tuple index is one specialized bytecode.
_DECIMAL = tuple(str(n) for n in range(1024))


def _start_time(fmt: str | None) -> Op:
    if not fmt:
        # the last whole second formatted: most lines share it
        last: dict[int, str] = {}

        def default(info: StreamInfo) -> Value:
            t = info.start_time
            whole = int(t)
            text = last.get(whole)
            if text is None:
                last.clear()
                text = last[whole] = _utc_second(whole)
            return text + _MILLIS[int((t - whole) * 1000)]
        return default
    def custom(info: StreamInfo) -> Value:
        return _strftime(fmt, info.start_time)
    return custom


def _strftime(fmt: str, t: float) -> str:
    """T (seconds since the epoch, UTC) in Envoy's DateFormatter FMT: strftime with
    ``%E3S`` (seconds and milliseconds), ``%3f``/``%6f``/``%9f`` and ``%s``; ``%Z`` is
    "UTC" (absl::FormatTime in UTC, observed on Envoy 1.40), not the C library's "GMT"."""
    frac = t % 1
    fmt = fmt.replace("%Z", "UTC")
    text = fmt.replace("%E3S", time.strftime("%S", time.gmtime(t)) + f".{int(frac * 1e3):03d}")
    text = text.replace("%3f", f"{int(frac * 1e3):03d}")
    text = text.replace("%6f", f"{int(frac * 1e6):06d}")
    text = text.replace("%9f", f"{int(frac * 1e9):09d}").replace("%s", str(int(t)))
    return time.strftime(text, time.gmtime(t))


def _utc_second(whole: int) -> str:
    """The whole second WHOLE of Envoy's default time form (``%Y-%m-%dT%H:%M:%S``, UTC);
    the milliseconds and ``Z`` follow (_MILLIS)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def _default_time(t: float) -> str:
    """AccessLogDateTimeFormatter::fromTime: ``%Y-%m-%dT%H:%M:%E3SZ``."""
    whole = int(t)
    return _utc_second(whole) + _MILLIS[int((t - whole) * 1000)]


def _tls_op(field_name: str) -> Op:
    """DOWNSTREAM_<FIELD_NAME>: StreamInfoSslConnectionInfoFormatterProvider, nothing
    (``-``, null) on a connection without TLS and for an empty value."""
    def op(info: StreamInfo) -> Value:
        tls = info.downstream_tls
        return None if tls is None else tls.text(field_name)
    return op


def _upstream_tls_op(field_name: str) -> Op:
    """UPSTREAM_<FIELD_NAME>: the same provider over upstreamInfo's
    upstreamSslConnection, nothing before an upstream connection was given to the
    request, and on one without TLS."""
    def op(info: StreamInfo) -> Value:
        tls = info.upstream_tls
        return None if tls is None else tls.text(field_name)
    return op


def _peer_cert_time(end: bool, upstream: bool, fmt: str | None) -> Op:
    """DOWNSTREAM_PEER_CERT_V_START / _V_END (DownstreamPeerCertVStartFormatter, a
    SystemTimeFormatter), and UPSTREAM_'s on the upstream connection: START_TIME's
    default form or its strftime argument, over the peer certificate's notBefore /
    notAfter; nothing without a peer certificate."""
    def op(info: StreamInfo) -> Value:
        tls = info.upstream_tls if upstream else info.downstream_tls
        valid = tls.peer_validity() if tls is not None else None
        if valid is None:
            return None
        t = valid[1] if end else valid[0]
        return _strftime(fmt, t) if fmt else _default_time(t)
    return op


class HeaderOp:
    """``%REQ(X?Y):N%``, ``%RESP()%``, ``%TRAILER()%``: the header's value, None when it is
    absent. A header that is present but empty prints as the empty string, not ``-``
    (Envoy's HeaderFormatter returns the value whatever it is; checked against Envoy 1.40,
    text and json_format); the renderers tell it from other operators by its class."""

    __slots__ = ("alt", "main", "max_len", "which")

    def __init__(self, which: str, spec: str, max_len: int | None) -> None:
        main, _, alt = spec.partition("?")
        self.which, self.main, self.alt, self.max_len = which, main.lower(), alt.lower(), max_len

    def __call__(self, info: StreamInfo) -> Value:
        headers: dict[str, str] | None = getattr(info, self.which)
        if not headers:
            return None
        if isinstance(headers, RepeatedHeaders):  # a repeated name prints its first value
            headers = headers.first_view()
        value = headers.get(self.main)
        if value is None and self.alt:
            value = headers.get(self.alt)
        if value is None:
            return None
        return value[:self.max_len] if self.max_len is not None else value


def _headers(which: str, spec: str, max_len: int | None) -> Op:
    return HeaderOp(which, spec, max_len)


def _missing(op: Op, value: Value) -> bool:
    """Whether VALUE (what OP gave) prints as ``-`` / null: None, or an empty string from
    any operator but a header's."""
    return value is None or (value == "" and not isinstance(op, HeaderOp))


def _dynamic_metadata(spec: str, max_len: int | None) -> Op:
    namespace, *keys = spec.split(":")

    def op(info: StreamInfo) -> Value:
        value: Any = info.dynamic_metadata.get(namespace)
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        if value is None:
            return None
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        return text[:max_len] if max_len is not None else text
    return op


_HOSTNAME = socket.gethostname()

# gRPC status names as Envoy's %GRPC_STATUS% prints them by default (CAMEL_STRING;
# SNAKE_STRING and NUMBER on request): source/common/grpc/status.cc and
# source/common/formatter/stream_info_formatter.cc GrpcStatusFormatter.
GRPC_CAMEL = ("OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
              "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
              "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
              "Unauthenticated")
GRPC_SNAKE = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
              "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
              "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
              "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
# Grpc::Utility::httpToGrpcStatus: what a response without grpc-status means
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def grpc_status(info: StreamInfo) -> int | None:
    """The response's gRPC status as Envoy's Grpc::Common::getGrpcStatus finds it: the
    trailers' grpc-status, else the headers' (a trailers-only response), else the HTTP
    status mapped; None for a request that is not gRPC (Envoy's hasGrpcContentType:
    application/grpc, or application/grpc+...; not grpc-web, not with ";" parameters,
    observed on Envoy 1.40). A value
    that is no number is -1, Envoy's InvalidCode (observed on Envoy 1.40)."""
    req = info.request_headers
    ct = req.get("content-type", "") if req is not None else ""
    if not (ct.startswith("application/grpc") and (len(ct) == 16 or ct[16] == "+")):
        return None
    for hs in (info.response_trailers, info.response_headers):
        value = hs.get("grpc-status") if hs is not None else None
        if value is not None:
            return int(value) if value.isdigit() else -1
    code = info.response_code
    if not code:
        return None
    return _HTTP_TO_GRPC.get(code, 2)


def _grpc_status_op(form: str | None, path: str) -> Op:
    form = form or "CAMEL_STRING"
    if form not in ("CAMEL_STRING", "SNAKE_STRING", "NUMBER"):
        raise ConfigError(path, f"invalid GRPC_STATUS argument {form!r}",
                          "use CAMEL_STRING, SNAKE_STRING or NUMBER")
    names = GRPC_CAMEL if form == "CAMEL_STRING" else GRPC_SNAKE

    def op(info: StreamInfo) -> Any:
        code = grpc_status(info)
        if code is None:
            return None
        if form == "NUMBER" or not 0 <= code < len(names):
            return code
        return names[code]
    return op


def _upstream_protocol(info: StreamInfo) -> str | None:
    """HTTP/2 when the HTTP/2 pool carried the request; HTTP/1.1 for an HTTP request that
    reached an upstream connection otherwise; nothing when none was reached."""
    if info.upstream_protocol is not None:
        return info.upstream_protocol
    if info.protocol is not None and info.upstream_local_address is not None:
        return "HTTP/1.1"
    return None

# Operators without arguments.
SIMPLE: dict[str, Op] = {
    "PROTOCOL": lambda i: i.protocol,
    "RESPONSE_CODE": lambda i: i.response_code or 0,
    "RESPONSE_FLAGS": lambda i: i.flags_string(),
    "RESPONSE_CODE_DETAILS": lambda i: _no_spaces(i.response_code_details),
    # as it was set: Envoy replaces no spaces here (observed on 1.40: "transport socket
    # timeout was reached")
    "CONNECTION_TERMINATION_DETAILS": lambda i: i.connection_termination_details or None,
    "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda i: _no_spaces(i.upstream_transport_failure_reason),
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON": lambda i: _no_spaces(
        getattr(i.downstream_tls, "failure_reason", None)),
    "BYTES_RECEIVED": lambda i: i.bytes_received,
    "BYTES_SENT": lambda i: i.bytes_sent,
    "DURATION": lambda i: i.duration_ms,
    "UPSTREAM_HOST": lambda i: i.upstream_host,
    "UPSTREAM_CLUSTER": lambda i: i.upstream_cluster,
    "UPSTREAM_CLUSTER_RAW": lambda i: i.upstream_cluster,
    "UPSTREAM_LOCAL_ADDRESS": lambda i: i.upstream_local_address,
    "UPSTREAM_REMOTE_ADDRESS": lambda i: i.upstream_host,
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": lambda i: i.upstream_request_attempt_count,
    "DOWNSTREAM_LOCAL_ADDRESS": lambda i: i.downstream_local_address,
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda i: _without_port(i.downstream_local_address),
    "DOWNSTREAM_REMOTE_ADDRESS": lambda i: i.downstream_remote_address,
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda i: _without_port(i.downstream_remote_address),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": lambda i: i.downstream_direct_remote_address,
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT":
        lambda i: _without_port(i.downstream_direct_remote_address),
    "REQUESTED_SERVER_NAME": lambda i: i.requested_server_name,
    "ROUTE_NAME": lambda i: i.route_name,
    "FILTER_CHAIN_NAME": lambda i: i.filter_chain_name,
    "HOSTNAME": lambda i: _HOSTNAME,
    "UPSTREAM_PROTOCOL": _upstream_protocol,
    "GRPC_STATUS_NUMBER": grpc_status,
    # the downstream and upstream TLS connections' (transport/connection_info.py)
    **{f"DOWNSTREAM_{name}": _tls_op(name) for name in sorted(TLS_FIELDS)},
    **{f"UPSTREAM_{name}": _upstream_tls_op(name) for name in sorted(UPSTREAM_TLS_FIELDS)},
}
# Operators with an optional argument besides START_TIME: the peer certificate's validity
# (end, upstream)
_PEER_CERT_TIMES = {"DOWNSTREAM_PEER_CERT_V_START": (False, False),
                    "DOWNSTREAM_PEER_CERT_V_END": (True, False),
                    "UPSTREAM_PEER_CERT_V_START": (False, True),
                    "UPSTREAM_PEER_CERT_V_END": (True, True)}

_TOKEN = re.compile(r"%([A-Z_0-9]+)(?:\(([^)]*)\))?(?::(\d+))?%")

Token = tuple[str, str | None, str | None]  # (operator name, argument, max length)


def scan(fmt: str, path: str) -> list[str | Token]:
    """Split FMT into literals and operator tokens (``%%`` is a literal ``%``)."""
    parts: list[str | Token] = []
    pos = 0
    literal: list[str] = []
    while pos < len(fmt):
        if fmt.startswith("%%", pos):
            literal.append("%")
            pos += 2
            continue
        match = _TOKEN.match(fmt, pos) if fmt[pos] == "%" else None
        if match is None:
            if fmt[pos] == "%":
                raise ConfigError(path, f"unterminated or malformed command operator at "
                                        f"{fmt[pos:pos + 30]!r}", "write a literal % as %%")
            literal.append(fmt[pos])
            pos += 1
            continue
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append((match.group(1), match.group(2), match.group(3)))
        pos = match.end()
    if literal:
        parts.append("".join(literal))
    return parts


def compile_text(fmt: str, path: str) -> list[str | Op]:
    """Split FMT into literals and operators; an unknown operator is a ConfigError."""
    return [p if isinstance(p, str) else _operator(*p, path) for p in scan(fmt, path)]


_HEADER_FIELDS = {"REQ": "request_headers", "RESP": "response_headers",
                  "TRAILER": "response_trailers"}


def _operator(name: str, arg: str | None, length: str | None, path: str) -> Op:
    max_len = int(length) if length else None
    if name in _HEADER_FIELDS and arg:
        return _headers(_HEADER_FIELDS[name], arg, max_len)
    if name == "START_TIME":
        return _start_time(arg)
    if name in _PEER_CERT_TIMES:
        return _peer_cert_time(*_PEER_CERT_TIMES[name], arg)
    if name == "DYNAMIC_METADATA" and arg:
        return _dynamic_metadata(arg, max_len)
    if name == "GRPC_STATUS":
        return _grpc_status_op(arg, path)
    op = SIMPLE.get(name)
    supported = (f"remora supports: REQ(), RESP(), TRAILER(), START_TIME, GRPC_STATUS(), "
                 f"DYNAMIC_METADATA(), "
                 f"{', '.join(sorted([*SIMPLE, *(n + '()' for n in _PEER_CERT_TIMES)]))}")
    if op is None:
        # Envoy's words for an operator it does not know (SubstitutionFormatParser,
        # observed on 1.40: "Not supported field in StreamInfo: UPSTREAM_PEER_EMAIL_SAN")
        raise ConfigError(path, f"Not supported field in StreamInfo: {name}", supported)
    if arg is not None or (length and name in _NO_LENGTH):
        # a COMMAND_ONLY operator (CommandSyntaxChecker) given an argument or a length:
        # Envoy's words (observed on 1.40)
        raise ConfigError(path, f"{name} does not take any parameters or length",
                          f"write %{name}%")
    return op


# the TLS operators take neither an argument nor a length in Envoy (COMMAND_ONLY)
_NO_LENGTH = frozenset({*(f"DOWNSTREAM_{n}" for n in TLS_FIELDS),
                        *(f"UPSTREAM_{n}" for n in UPSTREAM_TLS_FIELDS)})


def render_text(parts: list[str | Op], info: StreamInfo, missing: str = "-") -> str:
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        else:
            value = part(info)
            out.append(missing if _missing(part, value) else str(value))
    return "".join(out)


# Text-format operators whose printed value is one expression over ``info`` (and the
# header maps ``rq``/``rs``/``tr``, bound once per line): the compiled renderer inlines them
# instead of calling the operator and converting its value. Same text as render_text.
_STR_FIELDS = {  # str or None, printed as is ("-" when None or empty)
    "PROTOCOL": "protocol", "UPSTREAM_HOST": "upstream_host",
    "UPSTREAM_CLUSTER": "upstream_cluster", "UPSTREAM_CLUSTER_RAW": "upstream_cluster",
    "UPSTREAM_LOCAL_ADDRESS": "upstream_local_address",
    "UPSTREAM_REMOTE_ADDRESS": "upstream_host",
    "DOWNSTREAM_LOCAL_ADDRESS": "downstream_local_address",
    "DOWNSTREAM_REMOTE_ADDRESS": "downstream_remote_address",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": "downstream_direct_remote_address",
    "REQUESTED_SERVER_NAME": "requested_server_name", "ROUTE_NAME": "route_name",
    "FILTER_CHAIN_NAME": "filter_chain_name",
    # Envoy replaces no spaces here (observed on 1.40: "transport socket timeout was
    # reached")
    "CONNECTION_TERMINATION_DETAILS": "connection_termination_details",
}
_NO_SPACES_FIELDS = {  # str or None, spaces replaced (_no_spaces)
    "RESPONSE_CODE_DETAILS": "response_code_details",
    "UPSTREAM_TRANSPORT_FAILURE_REASON": "upstream_transport_failure_reason",
}
_INT_FIELDS = {  # int, never None
    "BYTES_RECEIVED": "bytes_received", "BYTES_SENT": "bytes_sent",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": "upstream_request_attempt_count",
}
_HEADER_LOCALS = {"request_headers": "rq", "response_headers": "rs",
                  "response_trailers": "tr"}


class _SecondCache:
    """%START_TIME% without an argument, for the compiled renderer: the text of the last
    whole second formatted (most lines of a second share it, as Envoy's access-log time
    formatter caches its formatted seconds) and that second as a float, so a line in the
    same second costs a subtraction and one ``floor``: ``t - second`` is exact there
    (Sterbenz), so the milliseconds are those of the default START_TIME operator."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -2.0  # no time is in [second, second + 1) yet
        self.text = ""

    def miss(self, t: float) -> str:
        whole = int(t)
        self.second = float(whole)
        self.text = _utc_second(whole)
        return self.text + _MILLIS[int((t - whole) * 1000)]


def _text_expr(token: Token, i: int) -> str | None:
    """The Python expression that prints TOKEN (its locals suffixed with I), or None."""
    name, arg, length = token
    if arg is None and length is None:
        if name in _STR_FIELDS:
            return f"(info.{_STR_FIELDS[name]} or '-')"
        if name in _NO_SPACES_FIELDS:  # replace() only when there is a space to replace
            return (f"('-' if not (s{i} := info.{_NO_SPACES_FIELDS[name]}) else "
                    f"s{i}.replace(' ', '_') if ' ' in s{i} else s{i})")
        if name in _INT_FIELDS:  # an exact int, as str() prints it (_DECIMAL when small)
            return (f"(_DECIMAL[n{i}] if 0 <= (n{i} := info.{_INT_FIELDS[name]}) < "
                    f"{len(_DECIMAL)} else n{i})")
        if name == "RESPONSE_CODE":
            return (f"(_DECIMAL[n{i}] if 0 <= (n{i} := info.response_code or 0) < "
                    f"{len(_DECIMAL)} else n{i})")
        if name == "RESPONSE_FLAGS":
            return f"(','.join(f{i}) if (f{i} := info.response_flags) else '-')"
        # float constants: float-by-int arithmetic and comparison are not specialized
        # bytecodes on CPython 3.11 (the int is converted the same way: same values)
        if name == "DURATION":  # StreamInfo.duration_ms; floor() is int() for d >= 0
            return (f"('-' if (e{i} := info.end_monotonic) is None else "
                    f"(_DECIMAL[n{i}] if (n{i} := _floor(d{i})) < {len(_DECIMAL)} else n{i}) "
                    f"if (d{i} := (e{i} - info.start_monotonic) * 1000.0) >= 0.0 "
                    f"else int(d{i}))")
        if name == "START_TIME":  # _start_time(None), through the per-second cache
            return (f"(_st.text + _MILLIS[_floor(d{i} * 1000.0)] "
                    f"if 0.0 <= (d{i} := (t{i} := info.start_time) - _st.second) < 1.0 "
                    f"else _st.miss(t{i}))")
    if name in _HEADER_FIELDS and arg:
        local = _HEADER_LOCALS[_HEADER_FIELDS[name]]
        main, _, alt = arg.partition("?")
        main, alt = main.lower(), alt.lower()
        # header values are str, never None: absent prints "-", present but empty prints
        # empty (HeaderOp)
        if length:
            value = (f"({local}[{main!r}] if {main!r} in {local} else {local}.get({alt!r}))"
                     if alt else f"{local}.get({main!r})")
            return f"('-' if (h{i} := {value}) is None else h{i}[:{int(length)}])"
        if alt:
            return f"({local}[{main!r}] if {main!r} in {local} else {local}.get({alt!r}, '-'))"
        return f"{local}.get({main!r}, '-')"
    return None


# CPython compiles an f-string of more than 30 parts (its compiler's STACK_USE_GUIDELINE)
# as a list built by one LIST_APPEND per part and then ''.join(list); up to 30 parts are
# joined straight from the stack (BUILD_STRING). Istio's default line has 49 parts.
_STACK_PARTS = 30


def _joined(values: list[ast.expr]) -> ast.JoinedStr:
    """VALUES as one f-string, nested so that every level is a BUILD_STRING of at most
    _STACK_PARTS parts (an inner f-string's value is a str, formatted as itself). Only as
    many leading parts as needed go into inner f-strings: each inner level copies its
    text once more (Envoy's default line has 31 parts: the first two are joined first,
    not the first thirty)."""
    while len(values) > _STACK_PARTS:
        # k leading parts become one: len - k + 1 <= _STACK_PARTS
        k = min(len(values) - _STACK_PARTS + 1, _STACK_PARTS)
        values = [ast.FormattedValue(ast.JoinedStr(values[:k]), -1, None), *values[k:]]
    return ast.JoinedStr(values)


def compile_renderer(tokens: list[str | Token], parts: list[str | Op]
                     ) -> Callable[[StreamInfo], str]:
    """PARTS (compiled from TOKENS) as one function with the literals and operators
    inlined, built when the listener loads: the same output as render_text, without its
    per-part dispatch. The line is one f-string (built as a syntax tree, so literals need
    no escaping): its literals are constants and its values are formatted in place."""
    env: dict[str, Any] = {"_EMPTY": {}, "_floor": math.floor, "_MILLIS": _MILLIS,
                           "_DECIMAL": _DECIMAL,
                           "_st": _SecondCache()}
    body: list[ast.stmt] = []
    values: list[ast.expr] = []
    used_locals: set[str] = set()
    for i, (token, part) in enumerate(zip(tokens, parts, strict=True)):
        if isinstance(part, str):
            values.append(ast.Constant(part))
            continue
        assert not isinstance(token, str)
        expr = _text_expr(token, i)
        if expr is None:
            env[f"op{i}"] = part
            empty = "" if isinstance(part, HeaderOp) else f" or v{i} == ''"
            body.extend(ast.parse(
                f"v{i} = op{i}(info)\n"
                f"v{i} = '-' if v{i} is None{empty} else "
                f"(v{i} if v{i}.__class__ is str else str(v{i}))\n").body)
            expr = f"v{i}"
        else:
            used_locals.update(v for v in _HEADER_LOCALS.values() if f"{v}." in expr
                               or f"in {v}" in expr or f"{v}[" in expr)
        values.append(ast.FormattedValue(ast.parse(expr, mode="eval").body, -1, None))
    header_binds = [ast.parse(f"{local} = info.{field_name} or _EMPTY").body[0]
                    for field_name, local in _HEADER_LOCALS.items() if local in used_locals]
    if "rq" in used_locals:
        # a request repeating a non-inline name (RepeatedHeaders, rare): %REQ()% prints
        # its first value, as HeaderOp does
        header_binds += ast.parse("if rq.__class__ is not dict: rq = rq.first_view()").body
    fn = ast.FunctionDef(
        name="render",
        args=ast.arguments(posonlyargs=[], args=[ast.arg("info")], kwonlyargs=[],
                           kw_defaults=[], defaults=[]),
        body=[*header_binds, *body, ast.Return(_joined(values))],
        decorator_list=[])
    module = ast.fix_missing_locations(ast.Module(body=[fn], type_ignores=[]))
    # the tree is built above from the parsed format only
    exec(compile(module, "<access log format>", "exec"), env)
    render: Callable[[StreamInfo], str] = env["render"]
    return render


class JsonFormat:
    """``json_format``: a Struct whose string values are format strings."""

    def __init__(self, template: dict[str, Any], path: str, omit_empty: bool = False) -> None:
        self.omit_empty = omit_empty
        self.template = self._compile(template, path)

    def _compile(self, node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {k: self._compile(v, f"{path}.{k}") for k, v in node.items()}
        if isinstance(node, str):
            parts = compile_text(node, path)
            if len(parts) == 1 and not isinstance(parts[0], str):
                return ("typed", parts[0])
            return ("text", parts)
        if isinstance(node, (int, float, bool)) or node is None:
            return ("const", node)
        raise ConfigError(path, f"json_format values must be strings, numbers or objects, "
                                f"got {type(node).__name__}")

    def _render(self, node: Any, info: StreamInfo) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, sub in node.items():
                value = self._render(sub, info)
                if value is None and self.omit_empty:
                    continue
                out[key] = value
            return out
        kind, payload = node
        if kind == "typed":
            value = payload(info)
            return None if _missing(payload, value) else value
        if kind == "text":
            return render_text(payload, info)
        return payload

    def render(self, info: StreamInfo) -> str:
        # Envoy sorts keys (JsonFormatOptions sort_properties default) and ends with \n.
        return json.dumps(self._render(self.template, info), separators=(",", ":"),
                          sort_keys=True) + "\n"


class TextFormat:
    def __init__(self, fmt: str, path: str, omit_empty: bool = False) -> None:
        tokens = scan(fmt, path)
        parts = self.parts = [p if isinstance(p, str) else _operator(*p, path) for p in tokens]
        self.render: Callable[[StreamInfo], str]
        if omit_empty:
            # SubstitutionFormatString.omit_empty_values on a text format: a value that is
            # absent prints as nothing instead of "-" (observed on Envoy 1.40)
            self.render = lambda info: render_text(parts, info, "")
        else:
            self.render = compile_renderer(tokens, parts)


Formatter = TextFormat | JsonFormat
