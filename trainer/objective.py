"""The training objective as configured: how a step noises its latents and how the prediction is scored.

The pieces are the pure functions of ``diffusion_math``, ``timesteps``, ``noise`` and ``losses``; this module
puts them in the order a step uses them. With the defaults (uniform timesteps, no multires / input-perturbation
noise, plain L2) the random draws and the loss are those of the plain DDPM objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trainer.diffusion_math import min_snr_weights, sample_noise, training_target
from trainer.losses import debiased_weights, elementwise_loss, huber_threshold
from trainer.noise import perturbed_input_noise, pyramid_noise
from trainer.timesteps import TimestepRange, sample_timesteps


@dataclass
class NoisedLatents:
    """One step's draw: the noise ε (the target's noise), timesteps (B,), and the UNet's noisy input."""

    noise: torch.Tensor
    timesteps: torch.Tensor
    noisy: torch.Tensor


@dataclass
class Objective:
    scheduler: Any
    prediction_type: str
    timestep_range: TimestepRange
    training: Any  # the [training] section: noise and loss options

    @classmethod
    def from_config(cls, cfg: Any, model: Any) -> Objective:
        num = model.noise_scheduler.config.num_train_timesteps
        return cls(model.noise_scheduler, model.prediction_type, TimestepRange.from_config(cfg.training, num), cfg.training)

    def noised(self, latents: torch.Tensor) -> NoisedLatents:
        """Draw noise and timesteps for (B, C, h, w) latents; the draw order is fixed (noise, timesteps, perturbation)."""
        tr = self.training
        noise = sample_noise(latents, tr.noise_offset)
        if tr.multires_noise_iterations:
            noise = pyramid_noise(noise, tr.multires_noise_iterations, tr.multires_noise_discount)
        timesteps = sample_timesteps(latents.shape[0], self.timestep_range, latents.device)
        noisy = self.scheduler.add_noise(latents, perturbed_input_noise(noise, tr.ip_noise_gamma), timesteps)
        return NoisedLatents(noise, timesteps, noisy)

    def loss(
        self, prediction: torch.Tensor, latents: torch.Tensor, noised: NoisedLatents, sample_weights: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample loss (mean over C, h, w), times dataset, min-SNR and debiased weights, averaged over the batch."""
        tr, t = self.training, noised.timesteps
        target = training_target(self.scheduler, latents, noised.noise, t, self.prediction_type)
        threshold = None
        if tr.loss_type != "l2":
            threshold = huber_threshold(self.scheduler, t, tr.huber_schedule, tr.huber_c)
        per_element = elementwise_loss(prediction, target, tr.loss_type, threshold)
        per_sample = per_element.mean(dim=tuple(range(1, per_element.ndim)))  # (B,)
        weights = sample_weights.to(per_sample.device, per_sample.dtype)
        if tr.min_snr_gamma:
            weights = weights * min_snr_weights(self.scheduler, t, tr.min_snr_gamma, self.prediction_type)
        if tr.debiased_estimation:
            weights = weights * debiased_weights(self.scheduler, t).to(weights.device)
        return (per_sample * weights).mean()
