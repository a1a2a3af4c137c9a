"""`--wait` names a crashing container's own error even when it checks right after the
node restarted the container: the new run has printed nothing yet (its log was just moved
aside to the .previous log), so the error is in the previous run's log."""

from __future__ import annotations

from typing import Any

import pytest

from remora.errors import RemoraError
from remora.lab.progress import wait

ERROR = ("remora: error: frobnicate: unknown or unsupported field 'frobnicate' in Bootstrap "
         "(fix: remove it)\n")


class _JustRestarted:
    """A node whose pod `broken` restarted its container twice; the current run's log
    is LOG_NOW, the previous run's LOG_BEFORE."""

    def __init__(self, log_now: str, log_before: str) -> None:
        self.logs_by_run = {False: log_now, True: log_before}

    def get(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        if kind != "Pod":
            return []
        return [{"metadata": {"name": "broken", "namespace": "default"},
                 "status": {"ready": False, "containerStatuses": [
                     {"name": "proxy", "restartCount": 2, "ready": False,
                      "state": {"running": {}}}]},
                 "remora": {"status": "Running"}}]

    def logs(self, namespace: str, pod: str, container: str | None = None,
             previous: bool = False, tail: int | None = None) -> dict[str, Any]:
        lines = self.logs_by_run[previous].splitlines(keepends=True)
        return {"text": "".join(lines[-tail:] if tail else lines)}


@pytest.mark.parametrize("now,before", [("", ERROR), ("starting\n", "x\n" + ERROR),
                                        (ERROR, "")])
def test_the_error_line_is_found_in_the_current_or_previous_run(now: str, before: str) -> None:
    with pytest.raises(RemoraError) as info:
        wait(_JustRestarted(now, before), None, 5)  # type: ignore[arg-type]
    assert "pod default/broken: container proxy keeps failing" in str(info.value)
    assert "frobnicate" in str(info.value)


def test_no_output_only_when_no_run_printed_anything() -> None:
    with pytest.raises(RemoraError) as info:
        wait(_JustRestarted("", ""), None, 5)  # type: ignore[arg-type]
    assert "keeps failing: no output" in str(info.value)
