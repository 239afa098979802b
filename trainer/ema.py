"""Exponential moving average of the adapter weights, and the weights that previews, validation and exports use.

The update rule is diffusers' ``training_utils.EMAModel.step`` restricted to the LoRA parameters: after the
n-th optimizer step, ``shadow ← d·shadow + (1 − d)·param`` with ``d = min(ema_decay, (1 + k)/(10 + k))``,
``k = n − 1`` (so the first update copies the weights and the average forgets its zero start quickly). Without
warm-up ``d = ema_decay`` from the second update on. The shadow is fp32, on the training device or the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def lora_parameters(modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    """Trainable adapter parameters (any adapter type) keyed as checkpoints key them (``component.parameter_name``)."""
    from trainer.networks import is_adapter_param

    return {
        f"{comp}.{name}": p for comp, module in modules.items() for name, p in module.named_parameters()
        if is_adapter_param(name)
    }


def ema_decay_at(update: int, decay: float, warmup: bool) -> float:
    """The decay applied by the ``update``-th update (1-based): 0 for the first, then the warm-up curve capped at ``decay``."""
    k = update - 1
    if k <= 0:
        return 0.0
    return min(decay, (1 + k) / (10 + k)) if warmup else decay


class AdapterEMA:
    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float, warmup: bool, on_cpu: bool):
        self.params = params
        self.decay, self.warmup = decay, warmup
        self.num_updates = 0
        self.shadow = {
            key: p.detach().to("cpu" if on_cpu else p.device, torch.float32, copy=True) for key, p in params.items()
        }

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights into the average (call once per optimizer step)."""
        self.num_updates += 1
        d = ema_decay_at(self.num_updates, self.decay, self.warmup)
        for key, p in self.params.items():
            shadow = self.shadow[key]
            shadow.mul_(d).add_(p.detach().to(shadow.device, torch.float32), alpha=1 - d)

    def state(self) -> tuple[dict[str, torch.Tensor], int]:
        """CPU copies of the shadow weights, and the number of updates (both go into checkpoints)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.shadow.items()}, self.num_updates

    def load(self, tensors: dict[str, torch.Tensor], num_updates: int, source: Any) -> None:
        from trainer.errors import UserFacingError

        missing = set(self.shadow) - set(tensors)
        if missing:
            raise UserFacingError(
                f"checkpoint {source} has no EMA weights for {sorted(missing)[0]}: `training.ema_decay` or "
                "`[network]` changed since it was saved; resume with the run's config"
            )
        for key, shadow in self.shadow.items():
            shadow.copy_(tensors[key].to(shadow.device, torch.float32))
        self.num_updates = num_updates

    def restore(self, checkpoint: Path) -> None:
        """Load the average saved with ``checkpoint`` (resume); a checkpoint saved without EMA is refused."""
        from trainer.checkpoint import load_checkpoint_extras
        from trainer.errors import UserFacingError

        extras = load_checkpoint_extras(checkpoint)
        if extras.ema is None:
            raise UserFacingError(
                f"checkpoint {checkpoint} holds no EMA weights: `training.ema_decay` was 0 when it was saved; "
                "resume with the run's config (or start a new run)"
            )
        self.load(extras.ema, extras.ema_updates, checkpoint)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own (bit for bit) again after it."""
        with torch.no_grad():
            saved = {k: p.detach().clone() for k, p in self.params.items()}
            for key, p in self.params.items():
                p.copy_(self.shadow[key].to(p.device, p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for key, p in self.params.items():
                    p.copy_(saved[key])


@contextlib.contextmanager
def inference_weights(params: dict[str, torch.nn.Parameter], optimizer: Any, ema: AdapterEMA | None) -> Iterator[None]:
    """The weights to show and ship: the EMA average when on, else a schedule-free optimizer's averaged
    point (``optimizer.eval()``), else the training weights as they are.

    Afterwards the training weights are restored bit for bit: schedule-free's ``train()`` undoes ``eval()``
    by interpolation, which rounds, and a stopped-and-resumed run must not differ from an uninterrupted one.
    """
    if ema is not None:
        with ema.applied():
            yield
        return
    if not _is_schedule_free(optimizer):
        yield
        return
    with torch.no_grad():
        saved = {k: p.detach().clone() for k, p in params.items()}
    optimizer.eval()
    try:
        yield
    finally:
        optimizer.train()
        with torch.no_grad():
            for key, p in params.items():
                p.copy_(saved[key])


def _is_schedule_free(optimizer: Any) -> bool:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps optimizers
    return any("train_mode" in group for group in getattr(inner, "param_groups", []))
