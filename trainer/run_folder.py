"""The run folder: creating it without clobbering a user's earlier run, and the graceful-stop signals."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trainer.atomic import write_text
from trainer.config import Config, dumps_config
from trainer.errors import UserFacingError
from trainer.events import EVENTS_FILE

STOP_FILE = "STOP"
LOG_FILE = "train.log"
CONFIG_FILE = "config.toml"


def prepare_run_dir(cfg: Config, resume: bool) -> Path:
    """Create (or, when resuming, reopen) the run folder and write the resolved config into it."""
    run_dir = cfg.run_dir
    has_history = (run_dir / EVENTS_FILE).exists() or (run_dir / "checkpoints").exists()
    if has_history and not resume:
        raise UserFacingError(
            f"run folder {run_dir} already holds a run; pass --resume to continue it, or set another "
            "`run.name` (nothing was overwritten)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / STOP_FILE).unlink(missing_ok=True)  # a stale STOP from the last session must not stop this one
    write_text(run_dir / CONFIG_FILE, dumps_config(cfg))
    return run_dir


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


@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM or by a ``STOP`` file in the run folder; checked once per step."""

    run_dir: Path
    signalled: str = ""
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

    @property
    def requested(self) -> bool:
        return bool(self.signalled) or (self.run_dir / STOP_FILE).exists()

    @property
    def reason(self) -> str:
        return self.signalled or ("STOP file" if (self.run_dir / STOP_FILE).exists() else "")
