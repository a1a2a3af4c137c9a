"""Envoy's earliest-deadline-first scheduler (source/common/upstream/edf_scheduler.h), the
weighted round robin of ROUND_ROBIN (and LEAST_REQUEST) clusters whose endpoints'
``load_balancing_weight`` differ (EdfLoadBalancerBase in load_balancer_impl.cc; with
equal weights Envoy, and remora, take the plain rotation instead).

Each host is queued with deadline ``now + 1 / weight``; a pick takes the earliest
deadline (ties: the host queued first), moves ``now`` to it and queues the host again
with its weight at that moment. Over N picks a host of weight w of a total W is picked
N * w / W times, give or take one. Envoy starts the schedule at a random point
(EdfScheduler::createWithPicks with a random seed of up to 429496729 picks, computed in
closed form, so that proxies do not all hit the same host first); this one makes a
random number of picks below the host count, which varies the first host the same way
but not the phase of a long schedule (the distribution is the same; the exact sequence
of one Envoy cannot be reproduced anyway, its seed being random).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class EdfScheduler(Generic[T]):
    __slots__ = ("_now", "_order", "_queue")

    def __init__(self) -> None:
        self._now = 0.0
        self._order = 0
        self._queue: list[tuple[float, int, T]] = []

    def add(self, weight: float, item: T) -> None:
        """Queue ITEM with deadline now + 1/WEIGHT (EdfScheduler::add)."""
        heapq.heappush(self._queue, (self._now + 1.0 / weight, self._order, item))
        self._order += 1

    def pick_and_add(self, weight: Callable[[T], float]) -> T | None:
        """The item with the earliest deadline, queued again with WEIGHT(item)
        (EdfScheduler::pickAndAdd); None when empty."""
        if not self._queue:
            return None
        deadline, _, item = heapq.heappop(self._queue)
        self._now = deadline
        self.add(weight(item), item)
        return item

    @classmethod
    def create_with_picks(cls, items: Sequence[T], weight: Callable[[T], float],
                          picks: int) -> EdfScheduler[T]:
        """A scheduler of ITEMS that already made PICKS picks
        (EdfScheduler::createWithPicks)."""
        sched: EdfScheduler[T] = cls()
        for item in items:
            sched.add(weight(item), item)
        for _ in range(picks):
            sched.pick_and_add(weight)
        return sched


def random_start(items: Sequence[T], weight: Callable[[T], float]) -> EdfScheduler[T]:
    """A schedule begun at a random point of its first round, as Envoy's refresh does
    with its random seed (the picks taken modulo the number of hosts)."""
    return EdfScheduler.create_with_picks(items, weight, random.randrange(max(len(items), 1)))
