"""The sidecars' config push after cluster changes (remora.node.pushes): a lone change
pushes at once, a burst at most once per EVERY and again when it quiets down."""

from __future__ import annotations

from remora.node.pushes import PushThrottle


def test_lone_change_pushes_at_once() -> None:
    t = PushThrottle(every=1.0)
    assert t.due("a", 0.0)
    t.done("a", 0.0)
    assert not t.due("a", 0.2)  # nothing changed
    assert not t.pending("a")
    assert t.due("b", 5.0)  # a change long after the last push: no delay


def _run(t: PushThrottle, passes: list[tuple[float, str]]) -> list[tuple[str, float]]:
    pushes = []
    for now, sig in passes:
        if t.due(sig, now):
            t.done(sig, now)
            pushes.append((sig, now))
    return pushes


def test_burst_is_merged_then_pushed_when_quiet() -> None:
    t = PushThrottle(every=1.0, quiet=0.5)
    assert _run(t, [(0.0, "s0")]) == [("s0", 0.0)]
    # a Deployment's pods turn Ready one per pass, 0.2 s apart: one push in the burst,
    # EVERY after the last
    burst = [(round(0.2 * i, 1), f"s{i}") for i in range(1, 8)]
    assert _run(t, burst) == [("s5", 1.0)]
    assert t.pending("s7")
    # the burst ends: the last state is pushed once the cluster has been quiet for QUIET
    assert _run(t, [(1.6, "s7"), (1.8, "s7")]) == []
    assert _run(t, [(2.0, "s7"), (2.2, "s7")]) == [("s7", 2.0)]
    assert not t.pending("s7")


def test_changes_between_quiet_passes_are_still_one_push_a_second() -> None:
    # pods turning Ready 0.4 s apart leave a pass without a change between two changes
    t = PushThrottle(every=1.0, quiet=0.5)
    passes = [(round(0.2 * i, 1), f"s{i // 2}") for i in range(0, 20)]
    pushes = _run(t, passes)
    assert pushes == [("s0", 0.0), ("s2", 1.0), ("s5", 2.0), ("s7", 3.0)]


def test_failed_push_is_tried_again_next_pass() -> None:
    t = PushThrottle(every=1.0)
    assert t.due("a", 0.0)  # the hook raised: done() is not called
    assert t.pending("a")
    assert t.due("a", 0.2)  # the same state on the next pass: tried again
    t.done("a", 0.2)
    assert not t.pending("a")


def test_a_slow_push_spaces_the_next_ones() -> None:
    # one push of many pods took 0.75 s on a loaded host: within a burst the next waits
    # COST_RATIO times that, not EVERY (each pass would otherwise find it a second old)
    t = PushThrottle(every=1.0, quiet=0.5, cost_ratio=4.0)
    assert t.due("s0", 0.0)
    t.done("s0", 0.0, took=0.75)
    burst = [(float(i), f"s{i}") for i in range(1, 8)]  # a pass a second, each a change
    pushes = []
    for now, sig in burst:
        if t.due(sig, now):
            t.done(sig, now, took=0.75)
            pushes.append((sig, now))
    assert pushes == [("s3", 3.0), ("s6", 6.0)]
    # a lone change long after: at once
    assert t.due("lone", 20.0)
