"""The run folder's ``events.jsonl``: one JSON object a line, the trainer's only channel to the UI.

Event types and their fields (every event also has ``type`` and ``time``, seconds since the epoch):

- ``started``: total_steps, epochs, num_images, num_batches_per_epoch, resumed_from_step, base_model, device,
  validation_images, ema_decay, batch_size (per device), num_processes, gradient_accumulation_steps,
  effective_batch_size (images per optimizer step: the product of the three), speed (the levers applied:
  compile, channels_last, attention_kernel, attention_processors, tf32, pin_memory; see trainer/speed.py)
- ``dataset``: report (the health report as a dict), buckets (the bucket table as a dict)
- ``step``: step, total_steps, epoch, loss, lr, it_per_s, eta_s
- ``sample``: step, path (relative to the run folder), prompt, seed, index
- ``checkpoint``: step, path, validation_loss (None without a validation set)
- ``validation``: step, loss, timesteps, per_timestep, images (fixed timesteps and noise: see trainer/validation.py)
- ``export``: step, path, format, verified, max_abs_diff, keys
- ``warning``: message
- ``finished``: status (``completed`` / ``stopped`` / ``failed``), step, error, adapter; a failure may carry
  ``reason`` (``out_of_memory``: the UI offers restarts with less memory)

Lines are appended whole and flushed; a reader may see a partial last line while a write is in flight
and should skip a line that does not parse.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVENTS_FILE = "events.jsonl"


class EventWriter:
    """Appends events to ``run_dir/events.jsonl``."""

    def __init__(self, run_dir: Path, hold: bool = False):
        """``hold``: keep events in memory until ``release()`` (a resume that fails while it sets up must leave
        the run's record as it was, so nothing is appended before it is known to continue)."""
        self.path = Path(run_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.held: list[str] | None = [] if hold else None

    @property
    def holding(self) -> bool:
        return self.held is not None

    def release(self) -> None:
        """Write the held events and write through from now on."""
        held, self.held = self.held or [], None
        for line in held:
            self._append(line)

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type, "time": round(time.time(), 3), **fields}
        line = json.dumps(event, default=str, allow_nan=False) + "\n"
        if self.held is not None:
            self.held.append(line)
        else:
            self._append(line)
        return event

    def _append(self, line: str) -> None:
        # One write call per line with O_APPEND: readers never see two events interleaved.
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()


@dataclass
class EventCursor:
    """Reads events incrementally (the UI polls it); keeps the byte offset of the last whole line."""

    path: Path
    offset: int = 0

    def read_new(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        events = []
        consumed = 0
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            consumed += len(raw)
            try:
                events.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
        self.offset += consumed
        return events


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return EventCursor(Path(run_dir) / EVENTS_FILE).read_new()
