"""What each training step reports: whether its loss is read, the loss itself (the mean over processes),
the check that it is finite, and the progress bar, rate and ``step`` event.

Reading a loss means a device sync; ``loss_due`` keeps the reads to the steps that need one.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from trainer import tracking
from trainer.config import Config
from trainer.errors import UserFacingError
from trainer.run_outputs import every
from trainer.session import Session


class TrainingDiverged(UserFacingError):
    """The loss became NaN or infinite."""


def loss_due(s: Session, end_of_epoch: bool) -> bool:
    """Steps whose loss is read: logged steps, the last step, and before a checkpoint or an epoch's end (a
    diverged run must not save NaN weights). The same steps on every process (the read is collective)."""
    step, cfg = s.progress.step, s.cfg
    return (
        every(cfg.training.log_every, step) or step >= s.total_steps or end_of_epoch
        or every(cfg.checkpoint.every_n_steps, step)
    )


def mean_loss(s: Session, loss: torch.Tensor, over_processes: bool) -> float:
    """The step's loss as a number: the mean over processes (what one process with their batches would see)."""
    if over_processes and s.accelerator.num_processes > 1:
        loss = s.accelerator.reduce(loss.reshape(1), reduction="mean")
    return float(loss.reshape(-1)[0].item())


def check_finite(loss: float, step: int, cfg: Config) -> None:
    if math.isfinite(loss):
        return
    hints = ["lower `optimizer.learning_rate` (try a tenth)"]
    if cfg.training.mixed_precision == "fp16":
        hints.append("use `training.mixed_precision = \"bf16\"` (or \"no\"): fp16 overflows")
    if not cfg.optimizer.max_grad_norm:
        hints.append("set `optimizer.max_grad_norm = 1.0`")
    hints.append("check the dataset for broken images")
    raise TrainingDiverged(f"the loss became {loss} at step {step}; training stopped. Try: " + "; ".join(hints))


class RateMeter:
    """Optimizer steps per second, smoothed, for it/s and ETA."""

    def __init__(self, start_step: int):
        self.last_time = time.perf_counter()
        self.rate: float | None = None

    def tick(self) -> float:
        now = time.perf_counter()
        instant = 1.0 / max(now - self.last_time, 1e-9)
        self.last_time = now
        self.rate = instant if self.rate is None else 0.8 * self.rate + 0.2 * instant
        return self.rate


def report_step(s: Session, bar: Any, meter: RateMeter, loss: float | None) -> None:
    """Every step: the bar and the rate; with the step's loss (read on logged steps only): the step event."""
    rate = meter.tick()
    step = s.progress.step
    bar.update(1)
    if loss is None:
        return
    lr = s.lr_scheduler.get_last_lr()[0]
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
    if s.accelerator.is_main_process and (step % s.cfg.training.log_every == 0 or step == s.total_steps):
        s.events.emit(
            "step",
            step=step,
            total_steps=s.total_steps,
            epoch=s.progress.epoch,
            loss=round(loss, 6),
            lr=lr,
            it_per_s=round(rate, 4),
            eta_s=round((s.total_steps - step) / rate, 1) if rate > 0 else None,
        )
        tracking.log_scalars(s.accelerator, {"train/loss": loss, "train/lr": lr}, step)
