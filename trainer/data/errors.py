"""The dataset's user-facing error (no torch here: the UI imports it to show messages)."""

from __future__ import annotations

from trainer.errors import UserFacingError


class DatasetError(UserFacingError):
    """A dataset that cannot be trained on; the message names every bad file or config field."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)
