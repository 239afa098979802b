"""Progress of a tool: a tqdm bar on stderr and, with ``--events FILE``, JSON lines the UI follows as a job.

The events contract (the same shape as a training run's ``events.jsonl``: one whole JSON object a line,
appended and flushed, so a reader polling the file may see a partial last line and must skip it):

- ``{"event": "progress", "done": i, "total": n, "what": "..."}`` while working; ``done`` counts up to
  ``total`` within one stage, ``what`` names the stage (``merging``, ``writing unet``, ``checking``...);
  a tool may run several stages, each starting again at ``done`` 0.
- exactly one last line ``{"event": "finished", "ok": true|false, "output": PATH|null, "message": "..."}``:
  ``ok`` true when the output was written and passed its check, false with the error message otherwise
  (the process then also exits non-zero). A file without a ``finished`` line means the tool was killed.

Every event also carries ``time`` (seconds since the epoch). The file is appended to, never truncated,
so the caller chooses a fresh path per job.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class Progress:
    """One tool run's progress: ``stage`` wraps an iterable with a bar and events; ``finish`` ends the file."""

    def __init__(self, events: Path | None = None, show_bar: bool = True):
        self.events = Path(events) if events else None
        self.show_bar = show_bar
        self.finished = False
        if self.events:
            self.events.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> None:
        if self.events is None:
            return
        line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}, default=str) + "\n"
        # One write per line with O_APPEND (as trainer/events.py): readers never see two lines interleaved.
        with open(self.events, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()

    def stage(self, items: Iterable[T], total: int, what: str) -> Iterator[T]:
        """Yield ``items`` with a bar and a progress event after each (and one at 0)."""
        from tqdm.auto import tqdm

        self.emit("progress", done=0, total=total, what=what)
        with tqdm(total=total, desc=what, file=sys.stderr, disable=not self.show_bar, leave=False) as bar:
            for done, item in enumerate(items, 1):
                yield item
                bar.update(1)
                self.emit("progress", done=done, total=total, what=what)

    def finish(self, ok: bool, output: Path | str | None, message: str) -> None:
        if not self.finished:
            self.finished = True
            self.emit("finished", ok=ok, output=None if output is None else str(output), message=message)


def run_tool(events: Path | None, work: Any) -> Any:
    """Run ``work(progress)`` and end the events file with its outcome; the result needs ``path`` and
    ``message``. Errors are recorded as ``ok: false`` and re-raised (the CLI prints a UserFacingError as
    ``error: ...`` and exits 2; anything else keeps its traceback)."""
    progress = Progress(events)
    try:
        result = work(progress)
    except BaseException as err:
        progress.finish(False, None, str(err) or type(err).__name__)
        raise
    progress.finish(True, result.path, result.message)
    return result
