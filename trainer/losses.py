"""Per-sample loss weights and robust losses from sd-scripts' recipe options.

Sources: sd-scripts ``library/custom_train_functions.py`` (``apply_debiased_estimation``: weight ``1/√SNR(t)``
with SNR capped at 1000, after Yu et al. 2023, "Debias the Training of Diffusion Models") and
``library/train_util.py`` (``get_huber_threshold_if_needed`` and ``conditional_loss``: pseudo-Huber
``2c(√((x−y)²+c²) − c)`` and smooth-L1 ``2(√((x−y)²+c²) − c)``, after Khrapov et al. 2024, "Improving Diffusion
Models's Data-Corruption Resistance using Scheduled Pseudo-Huber Loss").
"""

from __future__ import annotations

import math

import torch
from diffusers.training_utils import compute_snr

SNR_CAP = 1000.0  # sd-scripts: SNR(0) is huge (inf with some schedules); 1000 bounds the weight


def debiased_weights(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """``1/√min(SNR(t), 1000)`` per sample: high-noise steps count more, near-clean steps less."""
    snr = compute_snr(scheduler, timesteps).clamp(min=1e-8, max=SNR_CAP)
    return 1.0 / torch.sqrt(snr)


def huber_threshold(scheduler, timesteps: torch.Tensor, schedule: str, huber_c: float) -> torch.Tensor:
    """The threshold c per sample (B,), as sd-scripts schedules it (``huber_scale`` fixed at 1).

    - ``constant``: c everywhere.
    - ``exponential``: ``exp(ln(c)·t/T)``: 1 at t = 0 down to c at t = T.
    - ``snr``: ``(1 − c)/(1 + σ_t)² + c`` with ``σ_t = √((1 − ᾱ_t)/ᾱ_t)``: near 1 for clean steps, near c for noisy.
    """
    t = timesteps.detach().cpu()
    if schedule == "constant":
        return torch.full(t.shape, float(huber_c))
    if schedule == "exponential":
        num = scheduler.config.num_train_timesteps
        return torch.exp(math.log(huber_c) * t.float() / num)
    if schedule == "snr":
        alphas_cumprod = scheduler.alphas_cumprod.detach().cpu().float()[t]
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        return (1 - huber_c) / (1 + sigmas) ** 2 + huber_c
    raise ValueError(f"`training.huber_schedule` must be snr, exponential or constant, got {schedule!r}")


def elementwise_loss(
    prediction: torch.Tensor, target: torch.Tensor, loss_type: str, threshold: torch.Tensor | None = None
) -> torch.Tensor:
    """Unreduced loss in fp32: ``l2`` squared error, or pseudo-Huber / smooth-L1 with a per-sample threshold (B,)."""
    diff = prediction.float() - target.float()
    if loss_type == "l2":
        return diff**2
    if threshold is None:
        raise ValueError(f"loss type {loss_type!r} needs a threshold")
    c = threshold.to(diff.device, diff.dtype).view(-1, *([1] * (diff.ndim - 1)))  # (B, 1, 1, 1)
    robust = torch.sqrt(diff**2 + c**2) - c
    if loss_type == "huber":
        return 2 * c * robust
    if loss_type == "smooth_l1":
        return 2 * robust
    raise ValueError(f"`training.loss_type` must be l2, huber or smooth_l1, got {loss_type!r}")
