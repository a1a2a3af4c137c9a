"""Happy Eyeballs for an endpoint with ``additional_addresses`` (Envoy's
HappyEyeballsConnectionImpl, envoyproxy/envoy#27881 "Happy Eyeballs for EDS clusters").

An EDS ``Endpoint`` may list other addresses of the same host besides ``address``; istiod
sends a dual-stack pod's other-family address there when ISTIO_DUAL_STACK is on
(pilot/pkg/xds/endpoints/endpoint_builder.go buildEnvoyLbEndpoint). Envoy then connects
as RFC 8305 says: the addresses are sorted by interleaving the families, starting with the
family of ``address`` (a cluster without ``upstream_connection_options.happy_eyeballs_config``
uses that default: the first address's family, one address of it first); the first
attempt starts at once, and the next one starts when the previous attempt fails or 300 ms
have passed without it connecting; the first connection up wins and the others are
closed. So ``address`` is the one used whenever it answers within 300 ms: the other family
is a fallback, not a choice by the destination the app dialled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# Envoy's connection attempt delay (source/common/network/happy_eyeballs_connection_impl.cc)
ATTEMPT_DELAY = 0.3


def interleave(addresses: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """RFC 8305 section 4: alternate the families, starting with the first address's."""
    if not addresses:
        return []
    first_v6 = ":" in addresses[0][0]
    same = [a for a in addresses if (":" in a[0]) == first_v6]
    other = [a for a in addresses if (":" in a[0]) != first_v6]
    out: list[tuple[str, int]] = []
    for i in range(max(len(same), len(other))):
        out.extend(group[i] for group in (same, other) if i < len(group))
    return out


async def race(addresses: Sequence[tuple[str, int]],
               attempt: Callable[[int, tuple[str, int]], Awaitable[T]],
               discard: Callable[[T], None], delay: float = ATTEMPT_DELAY) -> tuple[int, T]:
    """Run ATTEMPT(i, address) staggered by DELAY (the next one at once when the running
    ones have all failed); return the first success with its index, DISCARD the other
    successes, cancel the rest. All failing raises the last attempt's error."""
    ordered = list(addresses)
    pending: dict[asyncio.Task[T], int] = {}
    last_error: BaseException | None = None
    nxt = 0
    start_now = True  # the first attempt, and the next one after an attempt failed
    try:
        while True:
            if nxt < len(ordered) and start_now:
                pending[asyncio.ensure_future(attempt(nxt, ordered[nxt]))] = nxt
                nxt += 1
            start_now = False
            if not pending:
                assert last_error is not None
                raise last_error
            timeout = delay if nxt < len(ordered) else None
            done, _ = await asyncio.wait(pending, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:  # DELAY passed with no answer: start the next attempt too
                pending[asyncio.ensure_future(attempt(nxt, ordered[nxt]))] = nxt
                nxt += 1
                continue
            winner: tuple[int, T] | None = None
            for task in done:
                index = pending.pop(task)
                if task.exception() is not None:
                    last_error = task.exception()
                    start_now = True
                elif winner is None:
                    winner = (index, task.result())
                else:
                    discard(task.result())
            if winner is not None:
                return winner
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                result = await task
                discard(result)
