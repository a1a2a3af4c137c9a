"""Route retry policy: which outcomes are retried, how often and after which back-off.

Envoy reference: RetryPolicy in route_components.proto and
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter#x-envoy-retry-on
(the meaning of each ``retry_on`` condition). Pure: the router asks ``should_retry_*``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from remora.proxy.config.strict import ConfigError, Fields, type_url_of

# retry_on conditions remora understands. refused-stream is an HTTP/2 condition that
# never occurs on HTTP/1.1 upstreams; the gRPC ones look at the grpc-status header.
_GRPC = {"cancelled": "1", "deadline-exceeded": "4", "resource-exhausted": "8",
         "unavailable": "14", "internal": "13"}
_KNOWN = {"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
          "retriable-4xx", "refused-stream", "retriable-status-codes",
          "envoy-ratelimited", *_GRPC}

PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
PREVIOUS_HOSTS_TYPE = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"


@dataclass(frozen=True)
class RetryPolicy:
    retry_on: frozenset[str]
    num_retries: int = 1
    per_try_timeout: float = 0.0  # 0: only the route timeout applies
    retriable_status_codes: frozenset[int] = frozenset()
    previous_hosts: bool = False
    host_selection_retry_max_attempts: int = 1
    base_interval: float = 0.025
    max_interval: float = 0.25
    # what retry_on_status asks of retry_on, worked out once (it is asked per response:
    # a test per condition cost ~0.5 k instructions per request on the lab's client
    # sidecar, whose Istio route retries; callgrind bench_lab_cpu.py)
    _on_5xx: bool = field(init=False, repr=False, compare=False)
    # the statuses retried below 500 and the 5xx ones without "5xx": gateway-error 502-504,
    # retriable-4xx 409, retriable-status-codes, envoy-ratelimited 429
    _statuses: frozenset[int] = field(init=False, repr=False, compare=False)
    _grpc_statuses: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        on = self.retry_on
        statuses: set[int] = set()
        if "gateway-error" in on:
            statuses.update((502, 503, 504))
        if "retriable-4xx" in on:
            statuses.add(409)
        if "retriable-status-codes" in on:
            statuses.update(self.retriable_status_codes)
        if "envoy-ratelimited" in on:
            statuses.add(429)
        object.__setattr__(self, "_on_5xx", "5xx" in on)
        object.__setattr__(self, "_statuses", frozenset(statuses))
        object.__setattr__(self, "_grpc_statuses", frozenset(_GRPC[c] for c in on if c in _GRPC))

    def retry_on_status(self, status: int, grpc_status: str | None) -> bool:
        """A response with STATUS (and GRPC_STATUS, its first grpc-status header) is
        retried: 5xx any status >= 500, the status conditions theirs, a gRPC condition
        its grpc-status code."""
        if (status >= 500 and self._on_5xx) or status in self._statuses:
            return True
        return grpc_status is not None and grpc_status in self._grpc_statuses

    def retry_on_connect_failure(self) -> bool:
        # A connect failure is also a reset before any byte was sent (Envoy counts both).
        on = self.retry_on
        return ("connect-failure" in on or "reset" in on or "5xx" in on
                or "gateway-error" in on or "reset-before-request" in on)

    def retry_on_reset(self, request_sent: bool) -> bool:
        on = self.retry_on
        if "reset" in on or "5xx" in on:
            return True
        return not request_sent and "reset-before-request" in on

    def backoff(self, retry_number: int) -> float:
        """Envoy's jittered exponential back-off: the n-th retry waits a random time in
        [0, base * (2^n - 1)), capped at max_interval (25ms base: 0-24ms, 0-74ms, ...)."""
        upper = min(self.base_interval * ((1 << retry_number) - 1), self.max_interval)
        return random.random() * upper


def parse_retry_policy(f: Fields) -> RetryPolicy:
    raw_on = f.string("retry_on", "") or ""
    conditions = frozenset(c.strip() for c in raw_on.split(",") if c.strip())
    unknown = sorted(conditions - _KNOWN)
    if unknown:
        raise ConfigError(f.at("retry_on"), f"unsupported retry_on condition {unknown[0]!r}",
                          f"remora implements: {', '.join(sorted(_KNOWN))}")
    num = f.integer("num_retries", 1)
    per_try = f.duration("per_try_timeout", 0.0)
    codes = frozenset(int(c) for c in f.items("retriable_status_codes"))
    prev = False
    for p in f.each("retry_host_predicate", "RetryHostPredicate"):
        name = p.string("name")
        tc = p.fields("typed_config")
        if tc is not None:
            url = type_url_of(tc)
            if url != PREVIOUS_HOSTS_TYPE:
                raise ConfigError(tc.path, f"unsupported retry host predicate {url!r}",
                                  f"remora implements {PREVIOUS_HOSTS}")
            tc.done()
        elif name != PREVIOUS_HOSTS:
            raise ConfigError(p.path, f"unsupported retry host predicate {name!r}",
                              f"remora implements {PREVIOUS_HOSTS}")
        p.done()
        prev = True
    attempts = f.integer("host_selection_retry_max_attempts", 1)
    base, cap = 0.025, None
    bo = f.fields("retry_back_off", "RetryBackOff")
    if bo is not None:
        base = bo.duration("base_interval", 0.025)
        cap = bo.duration("max_interval")
        bo.done()
    f.done()
    return RetryPolicy(
        retry_on=conditions, num_retries=num, per_try_timeout=per_try,
        retriable_status_codes=codes, previous_hosts=prev,
        host_selection_retry_max_attempts=attempts, base_interval=base,
        max_interval=cap if cap is not None else base * 10,
    )
