"""`remora label`: kubectl label's rules (checked against `kubectl label --local`)."""

from __future__ import annotations

import pytest

from remora.errors import RemoraError, UsageError
from remora.lab import labels


def test_set_and_remove() -> None:
    got = labels.update({"a": "1"}, ["istio-injection=enabled", "a-"], overwrite=False)
    assert got.labels == {"istio-injection": "enabled"} and got.changed


def test_an_existing_value_needs_overwrite() -> None:
    with pytest.raises(RemoraError) as err:
        labels.update({"istio-injection": "enabled"}, ["istio-injection=disabled"], False)
    assert err.value.problem == ("'istio-injection' already has a value (enabled), and "
                                 "--overwrite is false")
    got = labels.update({"istio-injection": "enabled"}, ["istio-injection=disabled"], True)
    assert got.labels == {"istio-injection": "disabled"} and got.changed


def test_the_same_value_or_a_missing_key_changes_nothing() -> None:
    assert not labels.update({"a": "1"}, ["a=1"], False).changed  # "not labeled"
    assert not labels.update({"a": "1"}, ["b-"], False).changed


@pytest.mark.parametrize(("args", "problem"), [
    ([], "at least one label update is required"),
    (["a=b", "a-"], "can not both modify and remove a label in the same command"),
    (["foo"], "invalid label spec: foo"),
])
def test_bad_arguments(args: list[str], problem: str) -> None:
    with pytest.raises(UsageError) as err:
        labels.update({}, args, False)
    assert err.value.problem == problem
