"""RetryPolicy.retry_on_status: which response statuses (and grpc-status codes) a route's
retry_on retries, as Envoy's router documents each condition
(https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter#x-envoy-retry-on
and #x-envoy-retry-grpc-on)."""

from __future__ import annotations

import pytest

from remora.proxy.http.retry import RetryPolicy

# Istio's default route retry policy (pilot's DefaultPolicy): gRPC codes and a status list
ISTIO = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"


@pytest.mark.parametrize("retry_on,codes,status,grpc,retried", [
    ("5xx", (), 500, None, True),
    ("5xx", (), 503, None, True),
    ("5xx", (), 599, None, True),
    ("5xx", (), 499, None, False),
    ("5xx", (), 200, "14", False),  # no gRPC condition: grpc-status is not looked at
    ("gateway-error", (), 502, None, True),
    ("gateway-error", (), 504, None, True),
    ("gateway-error", (), 500, None, False),
    ("gateway-error", (), 501, None, False),
    ("retriable-4xx", (), 409, None, True),
    ("retriable-4xx", (), 404, None, False),
    ("envoy-ratelimited", (), 429, None, True),
    ("envoy-ratelimited", (), 503, None, False),
    ("retriable-status-codes", (418, 200), 418, None, True),
    ("retriable-status-codes", (418, 200), 200, None, True),
    ("retriable-status-codes", (418,), 503, None, False),
    ("connect-failure", (418,), 418, None, False),  # codes without the condition
    (ISTIO, (503,), 503, None, True),
    (ISTIO, (503,), 500, None, False),
    (ISTIO, (503,), 200, None, False),
    (ISTIO, (503,), 200, "14", True),  # unavailable
    (ISTIO, (503,), 200, "1", True),  # cancelled
    (ISTIO, (503,), 200, "4", False),  # deadline-exceeded is not in the list
    (ISTIO, (503,), 200, "0", False),
    ("deadline-exceeded,resource-exhausted,internal", (), 200, "4", True),
    ("deadline-exceeded,resource-exhausted,internal", (), 200, "8", True),
    ("deadline-exceeded,resource-exhausted,internal", (), 200, "13", True),
    ("deadline-exceeded,resource-exhausted,internal", (), 200, "14", False),
    ("reset,connect-failure", (), 503, "14", False),
])
def test_retry_on_status(retry_on: str, codes: tuple[int, ...], status: int,
                         grpc: str | None, retried: bool) -> None:
    policy = RetryPolicy(retry_on=frozenset(retry_on.split(",")),
                         retriable_status_codes=frozenset(codes))
    assert policy.retry_on_status(status, grpc) is retried


def test_policies_equal_by_their_fields() -> None:
    """What retry_on_status works out from the fields leaves equality and hashing to them."""
    a = RetryPolicy(retry_on=frozenset({"5xx", "unavailable"}), num_retries=2)
    b = RetryPolicy(retry_on=frozenset({"unavailable", "5xx"}), num_retries=2)
    assert a == b and hash(a) == hash(b)
    assert a != RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=2)
