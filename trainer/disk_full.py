"""A full disk, said in words: which folder, how much was needed, how much is free.

torch and safetensors report a full disk in their own ways — ``RuntimeError: [enforce fail at
inline_container.cc:672] . unexpected pos …`` from ``torch.save``, a ``SafetensorError`` or ``OSError``
with ``No space left on device`` — none of which tells a user what happened. Every write of the trainer
is atomic (``trainer.atomic``), so what was saved before is intact; the message says so.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from trainer.errors import UserFacingError

# What the libraries put in their messages when a write hits a full disk (or a quota).
_MARKERS = ("no space left on device", "disk quota exceeded", "enforce fail at inline_container", "file write failed")


class DiskFullError(UserFacingError):
    """A write failed for lack of space; the message names the folder and the numbers."""


def looks_like_disk_full(err: BaseException) -> bool:
    if isinstance(err, DiskFullError):
        return False  # already said
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(marker in str(err).lower() for marker in _MARKERS)


def free_bytes(folder: Path) -> int | None:
    """Free space on the file system holding ``folder`` (or its nearest existing parent)."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def disk_full_error(folder: Path, needed: int, kept: str = "") -> DiskFullError:
    """The user's message: ``no space left on <folder>: N MB needed, M MB free``, and what is kept."""
    free = free_bytes(folder)
    free_text = f"{free / 1e6:,.1f} MB free" if free is not None else "free space unknown"
    return DiskFullError(
        f"no space left on {folder}: about {max(needed, 1) / 1e6:,.1f} MB needed, {free_text}. "
        f"Free some space, then continue with --resume{'; ' + kept if kept else ''}"
    )


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
