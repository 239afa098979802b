"""The small, pure pieces of the diffusion training objective, each checkable by hand.

Sources: DDPM (Ho et al. 2020) for the forward process; v-prediction from Salimans & Ho 2022
("Progressive Distillation"); min-SNR weighting from Hang et al. 2023 ("Efficient Diffusion Training via
Min-SNR Weighting Strategy"); noise offset from Guttenberg 2023 ("Diffusion with Offset Noise").
"""

from __future__ import annotations

import torch
from diffusers.training_utils import compute_snr


def sample_timesteps(batch_size: int, num_train_timesteps: int, device: torch.device) -> torch.Tensor:
    """Uniform integer timesteps in [0, T) from the global RNG (saved in checkpoints for exact resume)."""
    return torch.randint(0, num_train_timesteps, (batch_size,), device=device, dtype=torch.long)


def sample_noise(latents: torch.Tensor, noise_offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise like ``latents``; with an offset, plus a per-(sample, channel) constant shift.

    The constant term lets the model learn to change an image's mean brightness, which plain
    zero-mean noise almost never asks of it.
    """
    noise = torch.randn_like(latents)
    if noise_offset:
        b, c = latents.shape[:2]
        noise = noise + noise_offset * torch.randn((b, c, 1, 1), device=latents.device, dtype=latents.dtype)
    return noise


def training_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity v = √ᾱ·ε − √(1−ᾱ)·x₀."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {prediction_type!r}; expected epsilon or v_prediction")


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights min(SNR, γ)/SNR for epsilon, min(SNR, γ)/(SNR + 1) for v-prediction.

    The v form follows diffusers' train_text_to_image.py: a v-loss equals (SNR + 1) times an x₀-loss.
    SNR is clamped away from zero so a zero-terminal-SNR schedule cannot divide by zero.
    """
    snr = compute_snr(scheduler, timesteps).clamp(min=1e-8)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def diffusion_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error in fp32, averaged per sample, then weighted and averaged over the batch."""
    per_sample = torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="none")
    per_sample = per_sample.mean(dim=tuple(range(1, per_sample.ndim)))  # (B,)
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()
