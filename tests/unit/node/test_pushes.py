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


def test_burst_is_merged_then_pushed_when_quiet() -> None:
    t = PushThrottle(every=1.0)
    assert t.due("s0", 0.0)
    t.done("s0", 0.0)
    # a Deployment's pods turn Ready one per pass, 0.2 s apart
    pushes = []
    for i, now in enumerate([0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4], start=1):
        sig = f"s{i}"
        if t.due(sig, now):
            t.done(sig, now)
            pushes.append((sig, now))
        else:
            assert t.pending(sig)
    assert pushes == [("s5", 1.0)]  # one push in the burst, EVERY after the last
    # the burst ends: the first pass without a new change pushes the last state
    assert t.due("s7", 1.6)
    t.done("s7", 1.6)
    assert not t.pending("s7")
    assert not t.due("s7", 1.8)


def test_failed_push_is_tried_again_next_pass() -> None:
    t = PushThrottle(every=1.0)
    assert t.due("a", 0.0)  # the hook raised: done() is not called
    assert t.pending("a")
    assert t.due("a", 0.2)  # the same state on the next pass: tried again
    t.done("a", 0.2)
    assert not t.pending("a")
