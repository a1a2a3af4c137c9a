"""HTTP/2 held to a real Envoy 1.40 on loopback (issue #11, "Held to real peers").

One bootstrap (grpc_harness.bootstrap: HCM codec AUTO with http2_protocol_options, both
clusters explicit HTTP/2 upstream), run by each proxy in turn in front of a grpcio test
service and an h2c backend. Per case the suite compares:

- what the client saw against the same call made without a proxy (a proxy is
  transparent to gRPC status, details, trailing metadata and the reply bytes; to curl's
  and nghttp's status, body and trailers);
- the access-log fields (%PROTOCOL%, %UPSTREAM_PROTOCOL%, %RESPONSE_CODE%, %GRPC_STATUS%,
  %RESPONSE_FLAGS%, bytes) against EXPECTED_LOG, which is what Envoy 1.40 logs (the
  `envoy` parameter proves it);
- for remora, everything the client saw (masked: dates, service time) and every log
  field against the Envoy run of the same case.

Needs envoy, curl and nghttp (Debian's nghttp2-client); no root, loopback only.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit.proxy.http2 import grpc_clients as gc
from tests.unit.proxy.http2 import grpc_harness as gh

pytestmark = [pytest.mark.envoy, pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("nghttp") is None,
    reason="needs curl and nghttp (apt-get install curl nghttp2-client)")]

KINDS = [pytest.param("envoy", id="envoy"), pytest.param("remora", id="remora")]
CASES = [*gc.GRPC_CASES, *gc.CLI_CASES]

# What Envoy 1.40 logs per case, field by field (None: depends on timing, not compared).
# A client deadline or cancel is a downstream RST_STREAM: response flag DR; before any
# response headers the code is 0 and there is no gRPC status; after them (cancel) the
# code is 200 and, with no grpc-status ever received, %GRPC_STATUS% is Unknown. A
# trailers-only error reply carries its status in the headers. Bytes are DATA payload
# (gRPC's 5-byte message prefix included), both ways.
_OK = {"protocol": "HTTP/2", "upstream_protocol": "HTTP/2", "code": 200, "flags": "-"}
EXPECTED_LOG: dict[str, dict[str, Any]] = {
    "unary": {**_OK, "grpc_status": "OK", "received": 10, "sent": 15},
    "server-streaming": {**_OK, "grpc_status": "OK", "received": 8, "sent": 500 * 15},
    "client-streaming": {**_OK, "grpc_status": "OK", "received": 500 * 125, "sent": 26},
    "bidi-10000": {**_OK, "grpc_status": "OK", "received": 10_000 * 12,
                   "sent": 10_000 * 15},
    "large-4mib": {**_OK, "grpc_status": "OK", "received": gc.LARGE + 5,
                   "sent": gc.LARGE + 10},
    "deadline": {**_OK, "code": 0, "flags": "DR", "grpc_status": None, "received": 5,
                 "sent": 0},
    "cancel": {**_OK, "flags": "DR", "grpc_status": "Unknown", "received": 5,
               "sent": None},
    "error-trailers": {**_OK, "grpc_status": "FailedPrecondition", "received": 6,
                       "sent": 0},
    "curl-get": {**_OK, "grpc_status": None, "received": 0, "sent": 137},
    "curl-post": {**_OK, "grpc_status": None, "received": 90_000, "sent": 167},
    "nghttp-get": {**_OK, "grpc_status": None, "received": 0, "sent": 149},
    "nghttp-post": {**_OK, "grpc_status": None, "received": 256 * 400, "sent": 171},
    "nghttp-trailers": {**_OK, "grpc_status": None, "received": 0, "sent": 152},
}
TIMING = {case: {k for k, v in fields.items() if v is None and k == "sent"}
          for case, fields in EXPECTED_LOG.items()}


@dataclass
class Backends:
    grpc_port: int
    h2c_port: int
    seen: gh.Seen
    tmp: Path


@dataclass
class Run:
    """One proxy's outcomes and access-log entries for every case."""
    outcomes: dict[str, gc.Outcome]
    log: dict[str, dict[str, Any]]


def run_case(case: str, port: int, backends: Backends) -> gc.Outcome:
    if case in gc.GRPC_CASES:
        return gc.run_grpc(case, port, backends.seen)
    return gc.run_cli(case, port, backends.tmp)


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    with gh.grpc_service() as (grpc_port, seen), gh.h2c_backend() as h2c_port:
        yield Backends(grpc_port, h2c_port, seen, tmp_path_factory.mktemp("h2-bodies"))


@pytest.fixture(scope="module")
def direct(backends: Backends) -> dict[str, gc.Outcome]:
    """Every case without a proxy: gRPC straight to the service, curl/nghttp to the h2c
    backend."""
    return {case: run_case(case, backends.grpc_port if case in gc.GRPC_CASES
                           else backends.h2c_port, backends) for case in CASES}


@pytest.fixture(scope="module")
def runs(backends: Backends, tmp_path_factory: pytest.TempPathFactory,
         ) -> Callable[[str], Run]:
    """KIND -> its Run: the proxy started once on the shared bootstrap, every case sent
    through it, then stopped. A proxy that fails to start fails every case of its kind
    (the error is kept, not retried per case)."""
    done: dict[str, Run | Exception] = {}

    def run(kind: str) -> Run:
        if kind not in done:
            try:
                with gh.proxy_for(kind, tmp_path_factory.mktemp(kind), backends.grpc_port,
                                  backends.h2c_port) as proxy:
                    outcomes = {case: run_case(case, proxy.port, backends)
                                for case in CASES}
                    done[kind] = Run(outcomes, gh.log_entries(proxy.log, CASES))
            except Exception as e:  # kept for every case of KIND
                done[kind] = e
        found = done[kind]
        if isinstance(found, Exception):
            raise found
        return found
    return run


def transparent(case: str, outcome: gc.Outcome) -> gc.Outcome:
    """What a proxy must pass through unchanged: for gRPC everything but the proxy's own
    x-envoy-* metadata (a trailers-only reply carries x-envoy-upstream-service-time); for
    curl/nghttp the exit code, status, the backend's headers, body and trailers, with the
    body's list of request header names (which says what the proxy added) left out."""
    if case in gc.GRPC_CASES:
        return {**outcome, "trailers": [(k, v) for k, v in outcome["trailers"]
                                        if not k.startswith("x-envoy-")]}
    lines = [re.sub(r" headers=\S*$", "", line)
             for line in outcome["response"].splitlines()
             if re.match(r"(HTTP/2 |:status|content-type|x-backend|x-trailer|[A-Z]+ /)",
                         line)]
    return {"exit": outcome["exit"], "lines": lines}


def masked(outcome: gc.Outcome) -> gc.Outcome:
    """OUTCOME with the proxy's service time masked (its value is a duration)."""
    if "trailers" not in outcome:
        return outcome
    return {**outcome, "trailers": [
        (k, "N" if k == "x-envoy-upstream-service-time" else v)
        for k, v in outcome["trailers"]]}


@pytest.mark.cases(len(CASES) * len(KINDS))
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", KINDS)
def test_http2_case(kind: str, case: str, runs: Callable[[str], Run],
                    direct: dict[str, gc.Outcome]) -> None:
    got = runs(kind)
    outcome = got.outcomes[case]
    # the proxy is transparent to what the client sees
    assert transparent(case, outcome) == transparent(case, direct[case])
    # the access log says what Envoy 1.40 says
    entry = got.log.get(case)
    assert entry is not None, f"no access-log line for {case}: {sorted(got.log)}"
    fields = {k: entry.get(k) for k in EXPECTED_LOG[case]}
    want = {k: (fields[k] if k in TIMING[case] else v) for k, v in EXPECTED_LOG[case].items()}
    assert fields == want
    if kind != "envoy":  # and, byte for byte (masked), what Envoy did with the same case
        envoy = runs("envoy")
        assert masked(outcome) == masked(envoy.outcomes[case])
        assert {k: v for k, v in entry.items() if k not in TIMING[case]} == {
            k: v for k, v in envoy.log[case].items() if k not in TIMING[case]}


def test_cancel_and_deadline_reach_the_service(direct: dict[str, gc.Outcome]) -> None:
    """The cancel/deadline cases mean something: without a proxy, grpcio's service sees
    both calls end early (what each proxy is then held to by test_http2_case)."""
    assert direct["cancel"]["service_saw_cancel"] is True
    assert direct["deadline"]["service_saw_cancel"] is True
    assert direct["bidi-10000"]["replies"] == gc.BIDI_MESSAGES
