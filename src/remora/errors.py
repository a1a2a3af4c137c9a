"""Errors that reach the user as one line: what is wrong, and how to fix it."""

from __future__ import annotations


class RemoraError(Exception):
    """A failure the user can act on.

    ``problem`` names what is wrong (the flag, field, file or privilege); ``fix`` says what
    to do about it. The CLI prints ``remora: error: <problem> (fix: <fix>)`` on one line and
    exits non-zero, so every command reports bad input the same way.
    """

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def one_line(self) -> str:
        text = self.problem.rstrip(".")
        if self.fix:
            fix = self.fix.rstrip(".")
            if text.endswith(")") and " (fix: " in text:
                # a problem quoting another error's line (a failed step's last line)
                # already ends in its fix: one "(fix: ...)" with both, not two in a row
                text = f"{text[:-1]}; {fix})"
            else:
                text += f" (fix: {fix})"
        return " ".join(text.split())


class UsageError(RemoraError):
    """Bad flags or arguments (exit code 2, like click's own usage errors)."""

    exit_code = 2


class PrivilegeError(RemoraError):
    """The operation needs root or a capability the process lacks."""

    exit_code = 1
