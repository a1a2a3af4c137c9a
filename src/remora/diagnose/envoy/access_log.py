"""Parse Istio access-log lines (default text format and JSON) into named fields.

Text: Istio's ``EnvoyTextLogFormat`` (pilot/pkg/model/telemetry_logging.go, 1.9 onwards),
defined once as ``remora.controlplane.envoy_common.ACCESS_LOG_FORMAT`` (what remora's control
plane emits); its fields, in order, are those of AccessLogEntry below. The last eleven
are read from the end of the line, so the pre-1.9 form (a quoted mixer status where the
details are) reads the same.
JSON: ``EnvoyJSONLogFormatIstio`` keys, one object per line; a pretty-printed object
(the seed shows one, with ``//`` notes) and ``x-forwarded-for``-style keys are accepted.
Envoy prints ``-`` for an empty value; it becomes None.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

from remora.diagnose.envoy.config import relaxed_json
from remora.errors import RemoraError

_TOKEN = re.compile(r'\[[^\]]*\](?::\d+)?|"(?:[^"\\]|\\.)*"|\S+')  # [::6]:41234 is one token


@dataclass(frozen=True)
class AccessLogEntry:
    start_time: str | None = None
    method: str | None = None
    path: str | None = None
    protocol: str | None = None
    response_code: str | None = None
    response_flags: str | None = None
    response_code_details: str | None = None
    connection_termination_details: str | None = None
    upstream_transport_failure_reason: str | None = None
    bytes_received: str | None = None
    bytes_sent: str | None = None
    duration: str | None = None
    upstream_service_time: str | None = None
    x_forwarded_for: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    authority: str | None = None
    upstream_host: str | None = None
    upstream_cluster: str | None = None
    upstream_local_address: str | None = None
    downstream_local_address: str | None = None
    downstream_remote_address: str | None = None
    requested_server_name: str | None = None
    route_name: str | None = None
    format: str = "text"
    line: int = 0

    @property
    def direction(self) -> str:
        """inbound (logged by the server's sidecar) or outbound (the client's)."""
        cluster = self.upstream_cluster or ""
        if cluster.startswith("inbound|") or cluster.startswith("InboundPassthrough"):
            return "inbound"
        return "outbound" if cluster else "unknown"

    def to_dict(self) -> dict[str, str | int | None]:
        return asdict(self)


_FIELDS = {f.name for f in fields(AccessLogEntry)}
_ALIASES = {
    "x_request_id": "request_id", "bytes_send": "bytes_sent",
    "x_envoy_upstream_service_time": "upstream_service_time",
    "upstream_cluster_raw": "upstream_cluster",
}
_TAIL = ("x_forwarded_for", "user_agent", "request_id", "authority", "upstream_host",
         "upstream_cluster", "upstream_local_address", "downstream_local_address",
         "downstream_remote_address", "requested_server_name", "route_name")


def _value(text: object) -> str | None:
    if text is None:
        return None
    s = str(text)
    if len(s) >= 2 and s[0] == s[-1] == '"':
        s = s[1:-1]
    return None if s in ("-", "") else s


_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"'})


def parse_text_line(line: str, lineno: int = 0) -> AccessLogEntry | None:
    """One text-format line; None if the line is not an access-log line.

    The fields after the quoted UPSTREAM_HOST are read by position from it, so Istio
    1.1-1.4's default format (no ROUTE_NAME, a quoted mixer status after the flags) reads
    as well as 1.9+'s; typographic quotes and inline-code backticks a paste added are
    undone first."""
    line = line.translate(_QUOTES).strip().strip("`")
    # `kubectl logs --prefix` / `--timestamps` put text before the entry: start at it
    start = re.search(r'\[\d{4}-\d\d-\d\dT[^\]]*\] "', line)
    s = line[start.start():].strip() if start else line.strip()
    if not s.startswith("[") or '"' not in s:
        return None
    toks = _TOKEN.findall(s)
    if len(toks) < 16 or not toks[1].startswith('"'):
        return None
    quoted = [i for i, t in enumerate(toks) if t.startswith('"')]
    host_at = quoted[-1]
    if host_at < 9 or len(toks) - host_at < 5:
        return None
    values: dict[str, str | None] = {"start_time": toks[0].strip("[]")}
    request = (_value(toks[1]) or "").split(" ")
    if len(request) == 3:
        values["method"], values["path"], values["protocol"] = (_value(x) for x in request)
    values["response_code"] = _value(toks[2])
    values["response_flags"] = _value(toks[3])
    middle = toks[4:host_at - 4]
    if len(middle) >= 7 and not middle[0].startswith('"'):
        values["response_code_details"] = _value(middle[0])
        values["connection_termination_details"] = _value(middle[1])
        middle = middle[2:]
    elif middle and middle[0].startswith('"'):
        middle = middle[1:]  # before 1.9: the quoted mixer status
    if len(middle) >= 5:
        values["upstream_transport_failure_reason"] = _value(middle[0])
        middle = middle[1:]
    if len(middle) >= 4:  # 1.1-1.4 have no UPSTREAM_TRANSPORT_FAILURE_REASON
        values["bytes_received"], values["bytes_sent"], values["duration"] = (
            _value(x) for x in middle[:3])
        values["upstream_service_time"] = _value(middle[3])
    for name, tok in zip(_TAIL, toks[host_at - 4:], strict=False):
        values[name] = _value(tok)
    if not (values.get("downstream_remote_address") or values.get("upstream_cluster")):
        return None
    return AccessLogEntry(**values, format="text", line=lineno)


def from_json_object(obj: dict[str, object], lineno: int = 0) -> AccessLogEntry:
    values: dict[str, str | None] = {}
    for key, val in obj.items():
        name = key.lower().replace("-", "_")
        name = _ALIASES.get(name, name)
        if name in _FIELDS and name not in ("format", "line"):
            values[name] = _value(val)
    return AccessLogEntry(**values, format="json", line=lineno)


def parse_access_log(text: str, source: str = "access log") -> list[AccessLogEntry]:
    """Every access-log entry in ``text``; other lines (prompts, app output) are skipped."""
    entries: list[AccessLogEntry] = []
    block: list[str] = []
    depth = 0
    start = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if block:
            block.append(line)
            depth += _brace_delta(line)
            if depth <= 0:
                entries.extend(_json_block("\n".join(block), start, source))
                block = []
            continue
        # `kubectl logs --timestamps` (an RFC 3339 time) and `--prefix` (`[pod/NAME/
        # CONTAINER]`) put one word ahead of a JSON line: the entry starts after it
        prefixed = re.match(r"(?:\[pod/[^\]]+\]|\d{4}-\d\d-\d\dT\S+)\s+(?:\d{4}-\d\d-\d\dT\S+\s+)?"
                            r"(\{.*\})\s*$", s)
        if prefixed:
            try:
                obj = json.loads(prefixed.group(1))
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                entries.append(from_json_object(obj, lineno))
                continue
        if s.startswith("{"):
            try:
                obj = json.loads(s)
            except json.JSONDecodeError:
                block, depth, start = [line], _brace_delta(line), lineno
                if depth <= 0:
                    entries.extend(_json_block(line, lineno, source))
                    block = []
                continue
            if isinstance(obj, dict):
                entries.append(from_json_object(obj, lineno))
            continue
        entry = parse_text_line(line, lineno)
        if entry is not None:
            entries.append(entry)
    if block:
        raise RemoraError(f"{source}: the JSON access-log entry starting at line {start} is "
                          "truncated", "give whole lines from `kubectl logs POD -c istio-proxy`")
    return entries


def _brace_delta(line: str) -> int:
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', "", line)
    return no_strings.count("{") - no_strings.count("}")


def _json_block(text: str, lineno: int, source: str) -> Iterable[AccessLogEntry]:
    try:
        obj, _ = relaxed_json(text)
    except json.JSONDecodeError as exc:
        raise RemoraError(f"{source}: line {lineno} starts a JSON access-log entry that is not "
                          f"valid JSON ({exc.msg})",
                          "give the lines exactly as `kubectl logs POD -c istio-proxy` prints "
                          "them") from exc
    if isinstance(obj, dict):
        yield from_json_object(obj, lineno)
