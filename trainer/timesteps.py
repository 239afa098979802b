"""Which timesteps a step trains on: uniform or logit-normal draws over a configurable range.

Sources: sd-scripts ``library/train_util.py`` (``get_timesteps``: uniform integers in
``[min_timestep, max_timestep)``); logit-normal sampling from Esser et al. 2024 (SD3, "Scaling Rectified Flow
Transformers", §3.1) as diffusers' ``training_utils.compute_density_for_timestep_sampling`` draws it:
``u = sigmoid(N(mean, std))``. Every draw comes from the global torch RNG, which checkpoints save.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TimestepRange:
    """Trained timesteps ``[low, high)`` and how they are drawn."""

    low: int
    high: int
    sampling: str = "uniform"  # uniform | logit_normal
    logit_mean: float = 0.0
    logit_std: float = 1.0

    @classmethod
    def from_config(cls, training, num_train_timesteps: int) -> TimestepRange:
        """``training.max_timestep = 0`` means the model's own ``num_train_timesteps``."""
        high = min(training.max_timestep or num_train_timesteps, num_train_timesteps)
        return cls(training.min_timestep, high, training.timestep_sampling, training.logit_mean, training.logit_std)


def sample_timesteps(batch_size: int, timestep_range: TimestepRange, device: torch.device) -> torch.Tensor:
    """``batch_size`` integer timesteps in ``[low, high)``; logit-normal maps u∈(0,1) to ``low + ⌊u·(high−low)⌋``."""
    low, high = timestep_range.low, timestep_range.high
    if timestep_range.sampling == "logit_normal":
        u = torch.sigmoid(torch.randn(batch_size) * timestep_range.logit_std + timestep_range.logit_mean)  # (B,)
        t = low + (u * (high - low)).long().clamp(max=high - low - 1)
        return t.to(device)
    if timestep_range.sampling != "uniform":
        raise ValueError(f"`training.timestep_sampling` must be uniform or logit_normal, got {timestep_range.sampling!r}")
    return torch.randint(low, high, (batch_size,), device=device, dtype=torch.long)


def grid_timesteps(count: int, timestep_range: TimestepRange) -> torch.Tensor:
    """``count`` fixed timesteps at the centres of equal slices of the range (validation's grid).

    For ``[0, 1000)`` and 4: 125, 375, 625, 875 — every part of the schedule is scored, the same ones each time.
    """
    low, high = timestep_range.low, timestep_range.high
    centres = [low + int((j + 0.5) * (high - low) / count) for j in range(count)]
    return torch.tensor(centres, dtype=torch.long)
