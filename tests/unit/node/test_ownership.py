"""Which namespaces with a lab's prefix are another lab's (pure part of ownership)."""

from __future__ import annotations

from pathlib import Path

from remora.node import ownership

P = "lab-"
MINE = ownership.mark_text("id-a", Path("/var/lib/a"))
THEIRS = ownership.mark_text("id-b", Path("/var/lib/b"))


def names(found: list[tuple[str, ownership.Owner | None]]) -> list[str]:
    return [n for n, _ in found]


def test_marks_round_trip() -> None:
    assert ownership.parse_mark(THEIRS) == ownership.Owner("id-b", "/var/lib/b")
    assert ownership.parse_mark(None) is None
    assert ownership.parse_mark("some alias") is None


def test_a_fresh_store_owns_nothing_with_its_prefix() -> None:
    existing: dict[str, str | None] = {"lab-node-1": THEIRS, "lab-pod-1234": None,
                                       "other-node-1": None, "lab-x": None}
    found = ownership.foreign(P, existing, "id-a", True, set())
    assert names(found) == ["lab-node-1", "lab-pod-1234"]
    assert found[0][1] == ownership.Owner("id-b", "/var/lib/b")


def test_a_known_store_owns_its_marked_nodes_and_recorded_pods() -> None:
    existing: dict[str, str | None] = {
        "lab-node-1": MINE, "lab-fabric": None,  # ours, and unmarked (older remora)
        "lab-node-2": THEIRS,                     # another lab's (e.g. after a reboot)
        "lab-pod-aaaa": None, "lab-pod-bbbb": None}
    found = ownership.foreign(P, existing, "id-a", False, {"lab-pod-aaaa"})
    assert names(found) == ["lab-node-2", "lab-pod-bbbb"]
    assert ownership.foreign(P, {"lab-node-1": MINE, "lab-pod-aaaa": None}, "id-a", False,
                             {"lab-pod-aaaa"}) == []
