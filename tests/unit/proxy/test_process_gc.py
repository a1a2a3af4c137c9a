"""The proxy process's cyclic-GC tuning (proxy/process.py ``_tune_gc``): the young
generation is collected every GC_YOUNG_THRESHOLD net allocations, so the objects of many
multiplexed streams in flight (which die by reference counting) are not traversed over and
over; the older generations keep their thresholds."""

from __future__ import annotations

import gc

from remora.proxy import process


def test_young_generation_threshold_raised_older_ones_kept() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 7, 9)
        process._tune_gc()
        assert gc.get_threshold() == (process.GC_YOUNG_THRESHOLD, 7, 9)
        assert process.GC_YOUNG_THRESHOLD > 700
    finally:
        gc.set_threshold(*before)


def test_no_young_collection_for_objects_short_of_the_threshold() -> None:
    """What the threshold buys: holding a burst of container objects (2,000, about what
    200 streams in flight hold) triggers no collection at the raised threshold, and does
    at CPython's default."""
    before = gc.get_threshold()
    runs: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            runs.append(info["generation"])

    def burst() -> int:
        gc.collect()
        del runs[:]
        held = [[i] for i in range(2000)]  # tracked containers, alive together
        n = len(runs)
        del held
        return n

    gc.callbacks.append(count)
    try:
        gc.set_threshold(700, *before[1:])
        assert burst() >= 1
        process._tune_gc()
        assert burst() == 0
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*before)
