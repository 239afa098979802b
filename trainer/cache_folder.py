"""Cache folders that are either complete or absent: built aside, under a cross-process lock, checked on use.

A cache entry (a builtin model today) is a folder that many processes may want at once — two accelerate
ranks, the UI and a CLI run, a rerun after Ctrl-C. The rules that make that safe:

- It is built in a temporary sibling and renamed into place only when complete (``atomic_dir``), with a
  manifest of every file and its size written last (``.complete.json``). A folder without a valid
  manifest, or whose files are missing or of another size, is incomplete and is never loaded.
- Building happens under an exclusive file lock beside the folder (``filelock``: ``flock`` on POSIX, so a
  killed holder releases it at once). Whoever waits re-checks after taking the lock, so concurrent first
  uses build once. Leftovers of killed builders (``.<name>.*.tmp``) are removed under that lock.
- An incomplete entry, or one a caller failed to load, is rebuilt with a one-line notice; if the rebuild
  itself fails, the message names the folder and says it can be deleted.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trainer.atomic import atomic_dir
from trainer.errors import UserFacingError

MANIFEST = ".complete.json"
# How long a process waits for another one's build before giving up; tiny builtins take seconds.
LOCK_WAIT_S = 30 * 60
# After this long without the lock, say that we are waiting (and for whom).
WAIT_NOTICE_S = 2.0


class CacheBuildError(UserFacingError):
    """A cache entry that could not be built or repaired."""


def notice(message: str) -> None:
    """One line on stderr: the CLI shows it, and the UI's job log captures it."""
    print(f"notice: {message}", file=sys.stderr, flush=True)


@dataclass
class CacheFolder:
    """One cache entry: ``folder`` plus how to build it."""

    folder: Path
    label: str  # what the entry is, for messages: "builtin model builtin:tiny-sd"
    build: Callable[[Path], None]  # writes the entry's files into the folder it is given

    @property
    def lock_path(self) -> Path:
        return self.folder.parent / f".{self.folder.name}.lock"

    def problem(self) -> str | None:
        """Why the entry cannot be used as it is, or None when it is complete."""
        manifest_path = self.folder / MANIFEST
        if not self.folder.is_dir():
            return "not built yet"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            files = dict(manifest["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return f"no valid completeness marker ({MANIFEST})"
        for rel, size in files.items():
            path = self.folder / rel
            if not path.is_file():
                return f"{rel} is missing"
            if path.stat().st_size != size:
                return f"{rel} is truncated or changed ({path.stat().st_size} of {size} bytes)"
        return None

    def build_id(self) -> str | None:
        """Identifies one build of the entry (the manifest's bytes), to tell a repair already made by another process."""
        try:
            return (self.folder / MANIFEST).read_text(encoding="utf-8")
        except OSError:
            return None

    def ensure(self) -> Path:
        """The folder, complete: built (or repaired) first when it is not."""
        if self.problem() is None:  # the fast path takes no lock
            return self.folder
        with self._locked():
            problem = self.problem()  # another process may have built it while we waited
            if problem is not None:
                if problem != "not built yet":
                    notice(f"{self.label}: the cache at {self.folder} is incomplete ({problem}); rebuilding it")
                self._rebuild()
        return self.folder

    def repair(self, reason: str, seen_build_id: str | None) -> Path:
        """Rebuild an entry that failed to load, unless another process already rebuilt it since."""
        with self._locked():
            if self.problem() is None and self.build_id() != seen_build_id:
                return self.folder
            notice(f"{self.label}: the cache at {self.folder} could not be loaded ({reason}); rebuilding it")
            self._rebuild()
        return self.folder

    def _rebuild(self) -> None:
        self._remove_leftovers()
        try:
            with atomic_dir(self.folder) as tmp:
                self.build(tmp)
                write_manifest(tmp)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # a full disk, a read-only cache, a library error: all say the same to the user
            raise CacheBuildError(
                f"could not build the {self.label} into {self.folder} ({type(err).__name__}: {err}). "
                f"Free some disk space or set LORA_STUDIO_CACHE to a writable folder; the folder {self.folder} "
                "can be deleted safely (it is rebuilt on the next run)"
            ) from None

    def _remove_leftovers(self) -> None:
        """Temporary folders of builders that were killed; only ever called under the lock."""
        parent = self.folder.parent
        if not parent.is_dir():
            return
        for stale in [*parent.glob(f".{self.folder.name}.*.tmp"), parent / f".{self.folder.name}.old"]:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        from filelock import FileLock, Timeout

        self.folder.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.lock_path)
        try:
            lock.acquire(timeout=WAIT_NOTICE_S)
        except Timeout:
            notice(f"{self.label}: waiting for another process that is building it ({self.lock_path})")
            try:
                lock.acquire(timeout=LOCK_WAIT_S)
            except Timeout:
                raise CacheBuildError(
                    f"gave up after {LOCK_WAIT_S // 60} minutes waiting for another process to build the {self.label} "
                    f"(it holds {self.lock_path}); stop that process, or delete {self.folder} and the lock file"
                ) from None
        try:
            yield
        finally:
            lock.release()


def write_manifest(folder: Path) -> None:
    """Record every file of ``folder`` with its size; written last, so its presence means complete."""
    files = {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1), encoding="utf-8")
