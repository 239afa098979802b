"""Whether a trainer is alive in a run folder: the exclusive lock file ``<run_dir>/.lock``.

A trainer holds ``fcntl.flock(LOCK_EX)`` on ``.lock`` while it trains and writes its pid into the file
as text. The kernel releases a flock when its holder ends, however it ends (``kill -9`` included), so a
held lock means a live trainer. The events cannot tell that: a killed trainer writes no ``finished``
event, and its last ``step`` looks the same as a live one's.

Standard library only (the UI imports this; it must never import torch).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = ".lock"
PID_WAIT_S = 0.5  # the holder writes its pid right after taking the lock: wait that long for it


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the process holding ``run_dir/.lock``, or None when no process holds it.

    0 means "held, but no pid written": a holder that has only just taken the lock. Never creates the
    file. Probing takes the lock for an instant when it is free, so a trainer taking it with
    ``LOCK_NB`` at that very instant fails once: the trainer should retry (or block) briefly.
    """
    path = Path(run_dir) / LOCK_FILE
    try:
        with open(path, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return _written_pid(path)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except FileNotFoundError:
        return None
    return None


def _written_pid(path: Path) -> int:
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        try:
            return int(path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                return 0
            time.sleep(0.02)


class RunLock:
    """The exclusive hold of a trainer on its run folder, for training and resuming alike.

    Two trainers in one folder would interleave their events and write checkpoints twice. The second
    one is refused with the holder's pid. The file stays when released (deleting it would let a third
    process lock a fresh inode while a second still holds the old one).
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._handle = None

    def acquire(self) -> RunLock:
        from trainer.errors import UserFacingError

        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.run_dir / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
        deadline = time.monotonic() + PID_WAIT_S  # lock_holder() probes by taking the lock for an instant
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                handle.close()
                pid = _written_pid(self.run_dir / LOCK_FILE)
                holder = f"pid {pid}" if pid else "another process"
                raise UserFacingError(
                    f"run folder {self.run_dir} is in use by another trainer ({holder}); wait for it to finish or "
                    "stop it (the UI's Stop, or Ctrl-C / kill in its terminal), or set another `run.name`"
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.seek(0)
                self._handle.truncate()
                fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
