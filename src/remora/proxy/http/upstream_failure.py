"""What the router answers when an upstream attempt fails before the response started:
Envoy's status, body, RESPONSE_CODE_DETAILS and response flag, free of I/O.

Texts as Envoy 1.40 writes them (router.cc, checked side by side; see
tests/unit/proxy/http/test_envoy_parity.py), e.g. a refused upstream:
503, ``upstream connect error or disconnect/reset before headers. reset reason: remote
connection failure``, ``upstream_reset_before_response_started{remote_connection_failure|
delayed_connect_error:_Connection_refused}``, UF.
"""

from __future__ import annotations

from typing import NamedTuple

from remora.proxy.interfaces import UpstreamError

_RESET_BODY = "upstream connect error or disconnect/reset before headers. "


class LocalAnswer(NamedTuple):
    status: int
    body: bytes
    details: str
    flag: str


def failure_answer(kind: str, err: UpstreamError | None, retried: bool) -> LocalAnswer:
    """KIND: connect (with the cluster's UpstreamError), protocol (malformed response) or
    reset (upstream closed before response headers); RETRIED: more than one attempt."""
    if kind == "connect":
        assert err is not None
        if err.flag == "UH":
            return LocalAnswer(503, b"no healthy upstream", "no_healthy_upstream", "UH")
        if err.flag == "UO":
            reason, detail, flag = "overflow", "overflow", "UO"
        elif not err.reason:  # the core gives no reason for a connect timeout
            reason, detail, flag = "connection timeout", "connection_timeout", err.flag
        else:
            reason, flag = "remote connection failure", err.flag
            detail = "remote_connection_failure|" + err.reason.replace(" ", "_")
    elif kind == "protocol":
        # Envoy 1.40 answers an upstream protocol error with 502 (checked side by side)
        reason, detail, flag = "protocol error", "protocol_error", "UPE"
    else:
        reason, detail, flag = "connection termination", "connection_termination", "UC"
    status = 502 if kind == "protocol" else 503
    prefix = "retried and the latest " if retried else ""
    return LocalAnswer(status, f"{_RESET_BODY}{prefix}reset reason: {reason}".encode(),
                       f"upstream_reset_before_response_started{{{detail}}}", flag)
