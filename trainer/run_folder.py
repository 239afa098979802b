"""The run folder: creating it without clobbering a user's earlier run, and the graceful-stop signals."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trainer.atomic import write_text
from trainer.config import Config, dumps_config, load_config
from trainer.errors import UserFacingError
from trainer.events import EVENTS_FILE
from trainer.run_lock import LOCK_FILE

STOP_FILE = "STOP"
SAMPLE_NOW_FILE = "SAMPLE_NOW"  # previews at the next step, then the file is removed
LOG_FILE = "train.log"
CONFIG_FILE = "config.toml"


# What a lora-studio run folder holds; anything else in a folder makes it someone else's.
RUN_ENTRIES = {EVENTS_FILE, CONFIG_FILE, LOG_FILE, STOP_FILE, SAMPLE_NOW_FILE, LOCK_FILE, "checkpoints", "samples", "cache"}
# Settings a checkpoint's weights and optimizer state depend on: a resume must not change them.
RESUME_FIXED = ("model.base", "network", "optimizer.name")


def run_dir_problem(cfg: Config, resume: bool) -> str | None:
    """Why the run folder cannot be used for this run, or None; creates nothing (the pre-flight check asks too)."""
    run_dir = cfg.run_dir
    if not run_dir.exists():
        return _unwritable_problem(run_dir)
    if not run_dir.is_dir():
        return f"run folder {run_dir} is a file; set another `run.name` or `run.output_dir`"
    has_history = (run_dir / EVENTS_FILE).exists() or (run_dir / "checkpoints").exists()
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_ENTRIES and not _is_leftover(p.name))
    if foreign and not has_history:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return (
            f"run folder {run_dir} is not empty and is not a lora-studio run (it holds {shown}); set another "
            "`run.name` or `run.output_dir` (nothing was written there)"
        )
    if has_history and not resume:
        return (
            f"run folder {run_dir} already holds a run; pass --resume to continue it, or set another "
            "`run.name` (nothing was overwritten)"
        )
    if resume:
        return resume_config_problem(cfg)
    return None


def _unwritable_problem(run_dir: Path) -> str | None:
    """Whether the run folder can be made: its nearest existing parent must be a folder we may write in."""
    parent = run_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot make run folder {run_dir}: {parent} is a file; set `run.output_dir` to a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot make run folder {run_dir}: {parent} is not writable; set `run.output_dir` to a folder you can write"
    return None


def _is_leftover(name: str) -> bool:
    """A temporary sibling of an interrupted atomic write (``.<name>.*.tmp``); an export is never made before
    ``events.jsonl`` exists, so an adapter in a folder without it is someone else's file."""
    return name.startswith(".") and name.endswith((".tmp", ".old"))


def resume_config_problem(cfg: Config) -> str | None:
    """A resume whose settings no longer fit the run's checkpoints, named field by field; None when they fit."""
    saved_path = cfg.run_dir / CONFIG_FILE
    if not saved_path.is_file():
        return None
    try:
        saved = load_config(saved_path)
    except Exception as err:  # a config written by an older lora-studio may not load: say so, change nothing
        return f"{saved_path} cannot be read ({err}); resume needs the run's own config"
    changed = []
    for key in RESUME_FIXED:
        section, _, name = key.partition(".")
        old, new = getattr(saved, section), getattr(cfg, section)
        pairs = [(name, getattr(old, name), getattr(new, name))] if name else [
            (f.name, getattr(old, f.name), getattr(new, f.name)) for f in dataclasses.fields(old)
        ]
        changed += [f"{section}.{n} {a!r} -> {b!r}" for n, a, b in pairs if a != b]
    if not changed:
        return None
    return (
        f"cannot resume {cfg.run_dir}: these settings changed since the run started and its checkpoints depend on "
        f"them: {'; '.join(changed)}. Resume with the run's own config ({saved_path}) or start a new run "
        "(nothing was changed)"
    )


def prepare_run_dir(cfg: Config, resume: bool) -> Path:
    """Check and reopen (or create) the run folder; the caller holds its ``RunLock`` and writes the config.

    Leftovers of writers that were killed or ran out of disk (``.*.tmp`` files, ``.step_*.tmp`` folders) are
    removed here: under the run lock no other trainer can be writing them.
    """
    run_dir = cfg.run_dir
    if (problem := run_dir_problem(cfg, resume)) is not None:
        raise UserFacingError(problem)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(run_dir)
    (run_dir / STOP_FILE).unlink(missing_ok=True)  # a stale STOP from the last session must not stop this one
    (run_dir / SAMPLE_NOW_FILE).unlink(missing_ok=True)
    return run_dir


def write_run_config(cfg: Config) -> None:
    write_text(cfg.run_dir / CONFIG_FILE, dumps_config(cfg))


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete the temporary files and folders of interrupted atomic writes anywhere in the run folder."""
    found = [p for p in run_dir.rglob(".*") if p.name.endswith((".tmp", ".old")) and p.name != LOCK_FILE]
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def setup_logging(run_dir: Path) -> logging.Logger:
    """Log to ``run_dir/train.log`` (the UI shows its tail) and to stderr."""
    logger = logging.getLogger(f"lora_studio.{run_dir.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
        for handler in (logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8"), logging.StreamHandler(sys.stderr)):
            handler.setFormatter(fmt)
            logger.addHandler(handler)
    return logger


def take_sample_request(run_dir: Path) -> bool:
    """Whether a ``SAMPLE_NOW`` file asks for previews; the file is removed, so one request makes one set."""
    try:
        (run_dir / SAMPLE_NOW_FILE).unlink()
    except FileNotFoundError:
        return False
    return True


class StopRequested(Exception):  # noqa: N818 - a request, not an error
    """A stop that arrived before training began (loading the model, caching, class images): honoured at once."""


@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM or by a ``STOP`` file in the run folder.

    During set-up (``immediate``) a signal raises ``StopRequested`` at once and long loops call ``check()``
    per item; in the step loop the flag is read once per step, so the step finishes and is saved.
    """

    run_dir: Path
    signalled: str = ""
    immediate: bool = False
    _previous: dict = field(default_factory=dict)

    def install(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Signals can only be caught on the main thread (not, e.g., from a test runner's thread).
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signalled and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means "now"
        self.signalled = signal.Signals(signum).name
        when = "stopping now" if self.immediate else "saving after this step"
        print(f"stop requested ({self.signalled}): {when}", file=sys.stderr, flush=True)  # acknowledged at once
        if self.immediate:
            raise StopRequested(self.signalled)

    def check(self) -> None:
        """Raise ``StopRequested`` when a stop was asked for (for set-up loops: caching, class images)."""
        if self.requested:
            raise StopRequested(self.reason)

    @property
    def requested(self) -> bool:
        return bool(self.signalled) or (self.run_dir / STOP_FILE).exists()

    @property
    def reason(self) -> str:
        return self.signalled or ("STOP file" if (self.run_dir / STOP_FILE).exists() else "")
