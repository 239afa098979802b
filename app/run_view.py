"""Events → what the page shows: progress, loss and LR curves, preview gallery, status of a run.

The trainer's ``events.jsonl`` is the only channel between the two processes. ``RunFollower`` reads it
incrementally (the page polls once a second and must not re-parse a long run's history each time) and
keeps a ``RunView``; the rendering helpers turn a view into the HTML, tables and captions the page shows.
Pure Python (no Gradio, no torch) so that every mapping is unit-tested.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.events import EVENTS_FILE, EventCursor, read_events

LOSS_SMOOTHING = 0.9  # exponential moving average weight, as TensorBoard's default smoothing slider
MAX_PLOT_POINTS = 2000  # the chart thins longer histories evenly; the events file keeps every step
CHART_INTERVAL_S = 5.0  # a growing loss chart is redrawn at most this often (see MonitorMemo)
ACTIVE_POLL_S = 1.0  # the page polls this often while a job runs or waits in the queue...
IDLE_POLL_S = 5.0  # ...and this often otherwise: each poll costs the browser CPU (a quarter core at 1 s, headless)


@dataclass
class Preview:
    path: Path
    step: int
    prompt: str

    @property
    def caption(self) -> str:
        return f"step {self.step} · {self.prompt}"


@dataclass
class Checkpoint:
    step: int
    path: str  # relative to the run folder
    validation_loss: float | None = None


@dataclass
class BestCheckpoint:
    """The checkpoint with the lowest validation loss, and its adapter file when it is still on disk."""

    step: int
    validation_loss: float
    adapter: Path | None

    @property
    def label(self) -> str:
        return f"Best checkpoint: step {self.step}, validation loss {self.validation_loss:.4f}"


@dataclass
class RunView:
    """Everything the monitor shows about one run, accumulated from its events."""

    run_dir: Path
    status: str = "waiting"  # waiting / running / completed / stopped / failed
    step: int = 0
    total_steps: int = 0
    it_per_s: float | None = None
    eta_s: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    lrs: list[tuple[int, float]] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    previews: list[Preview] = field(default_factory=list)
    adapters: list[dict[str, Any]] = field(default_factory=list)  # export events
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    started: float | None = None
    last_started: float | None = None  # the latest session's `started` (a resumed run has several)
    ended: float | None = None
    base_model: str = ""
    dataset_report: dict[str, Any] | None = None
    ranks: dict[str, Any] | None = None  # the last `ranks` event (AdaLoRA's final rank per block)
    adapter_size: dict[str, int] = field(default_factory=dict)  # trainable parameters, and LoRA's at the same rank (VeRA)
    batch: str = ""  # "4 (2 per device × 2 processes × 1 accumulation step)" from the latest `started`
    failure_reason: str = ""  # the `finished` event's `reason`, e.g. "out_of_memory"

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "started":
            self.status = "running"
            self.total_steps = int(event.get("total_steps") or 0)
            self.step = int(event.get("resumed_from_step") or 0)
            self.started = self.started or event.get("time")
            self.last_started = event.get("time")
            self.base_model = str(event.get("base_model", ""))
            self.adapter_size = {k: int(event[k]) for k in ("trainable_parameters", "lora_parameters_same_rank")
                                 if isinstance(event.get(k), int)}
            self.batch = batch_text(event)
            self.error, self.ended = "", None
        elif kind == "dataset":
            self.dataset_report = event.get("report")
        elif kind == "ranks":
            self.ranks = event
        elif kind == "step":
            self.step = int(event["step"])
            self.total_steps = int(event.get("total_steps") or self.total_steps)
            self.it_per_s, self.eta_s = event.get("it_per_s"), event.get("eta_s")
            if _finite(event.get("loss")):
                self.losses.append((self.step, float(event["loss"])))
            if _finite(event.get("lr")):
                self.lrs.append((self.step, float(event["lr"])))
        elif kind == "validation" and _finite(event.get("loss")):
            self.validation.append((int(event["step"]), float(event["loss"])))
        elif kind == "checkpoint":
            loss = event.get("validation_loss")
            self.checkpoints.append(Checkpoint(int(event["step"]), str(event["path"]), float(loss) if _finite(loss) else None))
        elif kind == "sample":
            self.previews.append(Preview(self.run_dir / event["path"], int(event.get("step", 0)), str(event.get("prompt", ""))))
        elif kind == "export":
            self.adapters.append(event)
        elif kind == "warning":
            self.warnings.append(str(event.get("message", "")))
        elif kind == "finished":
            self.status = str(event.get("status", "completed"))
            self.step = int(event.get("step") or self.step)
            self.error = str(event.get("error") or "")
            self.failure_reason = str(event.get("reason") or "")
            self.ended = event.get("time")
            self.eta_s = 0.0 if self.status == "completed" else None

    @property
    def final_loss(self) -> float | None:
        """Mean of the last 10 step losses: one step's loss is too noisy to compare runs by."""
        tail = [loss for _, loss in self.losses[-10:]]
        return sum(tail) / len(tail) if tail else None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    def adapter_path(self, fmt: str) -> Path | None:
        """The newest exported adapter of format ``kohya`` or ``diffusers``, if it exists on disk."""
        for event in reversed(self.adapters):
            if event.get("format") == fmt:
                path = self.run_dir / event["path"]
                if path.exists():
                    return path
        return None


def batch_text(started: dict[str, Any]) -> str:
    """The effective batch of a ``started`` event in words; "" for runs recorded before it was logged."""
    try:
        per_device, processes = int(started["batch_size"]), int(started["num_processes"])
        accumulation = int(started["gradient_accumulation_steps"])
    except (KeyError, TypeError, ValueError):
        return ""
    from trainer.distributed import effective_batch  # torch-free

    return effective_batch(per_device, processes, accumulation).describe()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class RunFollower:
    """Incremental reader of one run folder's events (a byte cursor, so each poll reads only new lines)."""

    def __init__(self, run_dir: Path):
        self.view = RunView(Path(run_dir))
        self._cursor = EventCursor(Path(run_dir) / EVENTS_FILE)

    def poll(self) -> RunView:
        for event in self._cursor.read_new():
            self.view.apply(event)
        return self.view


@dataclass(frozen=True)
class MonitorMemo:
    """What the page last received, part by part, so that a poll re-sends only the parts that changed.

    Re-sending everything every second made the browser redraw both charts and the gallery each tick;
    on a 2-core machine that stole a core from the trainer and ran it 2.4x slower. The charts are the
    costly part, so a growing loss curve is redrawn at most every ``CHART_INTERVAL_S``; a new job, a
    status change (e.g. completed) and the first points are drawn at once.
    """

    progress: tuple = ()
    charts: tuple = ()
    charts_at: float = float("-inf")
    gallery: tuple = ()
    queue: tuple = ()
    log: str = ""
    outcome: str = ""  # the last finished job's outcome, as shown
    poll_s: float = 0.0  # the page's polling interval

    def updates(self, current: MonitorMemo, now: float) -> tuple[set[str], MonitorMemo]:
        """The parts of ``current`` to send, and the memo that remembers having sent them."""
        plain = ("progress", "gallery", "queue", "log", "outcome", "poll_s")
        send = {part for part in plain if getattr(current, part) != getattr(self, part)}
        if current.charts != self.charts:
            # charts = (job id, status, number of points): a new job or status is never held back.
            urgent = current.charts[:2] != self.charts[:2] or not self.charts or self.charts[2] == 0
            if urgent or now - self.charts_at >= CHART_INTERVAL_S:
                send.add("charts")
        kept = {part: getattr(current if part in send else self, part) for part in (*plain, "charts")}
        return send, MonitorMemo(**kept, charts_at=now if "charts" in send else self.charts_at)


def monitor_memo(
    job_id: str | None, state: str, view: RunView | None, queue: list[list[str]], log: str, outcome: str = ""
) -> MonitorMemo:
    """The signature of what the monitor would show for this job, view, queue (active jobs first), log and outcome."""
    points = len(view.losses) if view else 0
    return MonitorMemo(
        progress=(job_id, state, view.step if view else 0, view.status if view else "", view.error if view else ""),
        charts=(job_id, view.status if view else "", points),
        gallery=(job_id, len(view.previews) if view else 0),
        queue=tuple(map(tuple, queue)),
        log=log,
        outcome=outcome,
        poll_s=ACTIVE_POLL_S if queue else IDLE_POLL_S,
    )


def load_view(run_dir: Path) -> RunView:
    """A run's whole history at once (the runs table)."""
    view = RunView(Path(run_dir))
    for event in read_events(Path(run_dir)):
        view.apply(event)
    return view


# ---------------------------------------------------------------------------------------------
# Rendering


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_html(view: RunView | None, job_state: str = "") -> str:
    """A progress bar with step/total, it/s and ETA (a plain HTML bar: Gradio has no live one outside events)."""
    if view is None:
        return '<div id="run-progress" class="ls-progress idle">No run yet: press <b>Start training</b>.</div>'
    state = job_state or view.status
    percent = 100 * view.fraction
    speed = f"{view.it_per_s:.2f} it/s" if view.it_per_s else "– it/s"
    detail = f"step {view.step} / {view.total_steps or '?'} · {speed} · ETA {format_duration(view.eta_s)}"
    if view.batch:
        detail += f" · batch {view.batch}"
    if state in ("queued", "waiting"):
        detail = "loading the model and dataset…" if state == "waiting" else "queued"
    return (
        f'<div id="run-progress" class="ls-progress {html.escape(state)}" data-step="{view.step}" '
        f'data-total="{view.total_steps}" data-status="{html.escape(state)}">'
        f'<div class="ls-progress-label"><b>{html.escape(view.run_dir.name)}</b> — {html.escape(state)} · '
        f"{html.escape(detail)}</div>"
        f'<div class="ls-progress-track"><div class="ls-progress-fill" style="width:{percent:.1f}%"></div></div>'
        "</div>"
    )


def smoothed(values: list[float], weight: float = LOSS_SMOOTHING) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing), so the first points are not pulled to 0."""
    out, last, norm = [], 0.0, 0.0
    for value in values:
        last = weight * last + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out


def _thin(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    if len(points) <= MAX_PLOT_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_PLOT_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def loss_rows(view: RunView) -> list[dict[str, Any]]:
    """Long-format rows (step, loss, series) for a line chart: raw and smoothed training loss, the validation
    loss, and checkpoint markers (at their validation loss, or the smoothed loss of their step without one)."""
    points = _thin(view.losses)
    smooth = smoothed([loss for _, loss in view.losses])
    smooth_points = _thin(list(zip([s for s, _ in view.losses], smooth, strict=True)))
    rows = [{"step": s, "loss": v, "series": "raw"} for s, v in points]
    rows += [{"step": s, "loss": v, "series": "smoothed"} for s, v in smooth_points]
    rows += [{"step": s, "loss": v, "series": "validation"} for s, v in view.validation]
    smooth_at = dict(zip([s for s, _ in view.losses], smooth, strict=True))
    for ckpt in view.checkpoints:
        y = ckpt.validation_loss if ckpt.validation_loss is not None else smooth_at.get(ckpt.step)
        if y is not None:
            rows.append({"step": ckpt.step, "loss": y, "series": "checkpoint"})
    return rows


def best_checkpoint(view: RunView) -> BestCheckpoint | None:
    """The checkpoint with the lowest validation loss (the earliest on a tie; the trainer never deletes it)."""
    scored = [c for c in view.checkpoints if c.validation_loss is not None]
    if not scored:
        return None
    best = min(scored, key=lambda c: (c.validation_loss, c.step))
    folder = view.run_dir / best.path
    adapters = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    files = [p for p in adapters if p.name not in ("lora_state.safetensors", "ema_state.safetensors")]
    kohya = [p for p in files if not p.stem.endswith("_diffusers")]
    return BestCheckpoint(best.step, float(best.validation_loss), (kohya or files or [None])[0])


def tracking_hint(run_dir: Path) -> str:
    """Where a run's TensorBoard logs are and the command that opens them (empty when the run logs none)."""
    logs = Path(run_dir) / "logs"
    if not logs.is_dir():
        return ""
    return f"TensorBoard logs: `{logs}` — open them with `tensorboard --logdir {logs}` (then http://localhost:6006)."


def lr_rows(view: RunView) -> list[dict[str, Any]]:
    return [{"step": s, "lr": v} for s, v in _thin(view.lrs)]


def gallery_items(view: RunView) -> list[tuple[str, str]]:
    """Newest previews first, each captioned with its step and prompt."""
    return [(str(p.path), p.caption) for p in reversed(view.previews) if p.path.exists()]

