"""Errors a user can fix: the CLI prints their message (no traceback) and the UI shows it."""

from __future__ import annotations


class UserFacingError(RuntimeError):
    """Base for errors whose message tells the user what to change."""


def user_facing_errors() -> tuple[type[BaseException], ...]:
    """Every exception type the CLI reports as a one-line message instead of a traceback."""
    from trainer.config import ConfigError

    types: list[type[BaseException]] = [UserFacingError, ConfigError]
    try:
        from trainer.models.loading import ModelLoadError  # noqa: PLC0415

        types.append(ModelLoadError)
    except ImportError:
        pass
    try:
        from trainer.data import DatasetError

        types.append(DatasetError)
    except ImportError:
        pass
    return tuple(types)
