"""The objective's pure pieces against hand-computed values."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from trainer.diffusion_math import diffusion_loss, min_snr_weights, sample_noise, training_target


def scheduler(prediction_type="epsilon"):
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type)


def test_epsilon_target_is_the_noise():
    noise = torch.randn(2, 4, 8, 8)
    assert torch.equal(training_target(scheduler(), torch.randn(2, 4, 8, 8), noise, torch.tensor([1, 500]), "epsilon"), noise)


def test_v_target_matches_definition():
    s = scheduler("v_prediction")
    x0, eps, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    a = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(training_target(s, x0, eps, t, "v_prediction"), expected)


def test_min_snr_weights_by_hand():
    s = scheduler()
    t = torch.tensor([0, 999])
    a = s.alphas_cumprod[t]
    snr = a / (1 - a)
    gamma = 5.0
    expected_eps = torch.minimum(snr, torch.tensor(gamma)) / snr
    torch.testing.assert_close(min_snr_weights(s, t, gamma, "epsilon"), expected_eps)
    expected_v = torch.minimum(snr, torch.tensor(gamma)) / (snr + 1)
    torch.testing.assert_close(min_snr_weights(s, t, gamma, "v_prediction"), expected_v)
    # Low-noise steps (huge SNR) are down-weighted, high-noise steps (SNR < gamma) keep weight 1.
    assert min_snr_weights(s, t, gamma, "epsilon")[0] < 0.01
    assert min_snr_weights(s, t, gamma, "epsilon")[1] == 1


def test_noise_offset_shifts_channel_means():
    torch.manual_seed(0)
    latents = torch.zeros(64, 4, 16, 16)
    plain = sample_noise(latents, 0.0)
    torch.manual_seed(0)
    offset = sample_noise(latents, 1.0)
    # The offset adds one constant per (sample, channel): per-channel means spread by about 1.
    assert offset.mean(dim=(2, 3)).std() > 5 * plain.mean(dim=(2, 3)).std()


def test_weighted_loss_per_sample():
    pred, target = torch.zeros(2, 1, 2, 2), torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    assert diffusion_loss(pred, target).item() == 2.5  # (1 + 4) / 2
    assert diffusion_loss(pred, target, torch.tensor([1.0, 0.0])).item() == 0.5
