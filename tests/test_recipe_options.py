"""Recipe options: each changes what it should, with values checkable by hand (sources in the modules' docstrings)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from trainer.config import Config, validate
from trainer.losses import debiased_weights, elementwise_loss, huber_threshold
from trainer.noise import perturbed_input_noise, pyramid_noise
from trainer.timesteps import TimestepRange, sample_timesteps


@pytest.fixture
def scheduler():
    # SD 1.x's schedule: scaled_linear betas 0.00085 -> 0.012 over 1000 steps.
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def test_logit_normal_timesteps_have_the_configured_mean_and_std_in_logit_space():
    torch.manual_seed(0)
    t = sample_timesteps(20_000, TimestepRange(0, 1000, "logit_normal", logit_mean=1.0, logit_std=0.5), torch.device("cpu"))
    u = (t.double() + 0.5) / 1000  # the centre of each integer bucket
    logit = torch.log(u / (1 - u))
    # 20k draws: the mean's standard error is 0.5/sqrt(20000) = 0.0035; flooring to integers adds < 0.01.
    assert abs(logit.mean().item() - 1.0) < 0.03 and abs(logit.std().item() - 0.5) < 0.03
    assert t.min() >= 0 and t.max() <= 999


def test_timestep_range_is_respected():
    torch.manual_seed(0)
    for sampling in ("uniform", "logit_normal"):
        t = sample_timesteps(5000, TimestepRange(200, 300, sampling), torch.device("cpu"))
        assert t.min() >= 200 and t.max() <= 299, sampling
    assert TimestepRange.from_config(Config().training, 1000) == TimestepRange(0, 1000), "max_timestep 0: the model's T"


def _band_power(noise: torch.Tensor, low: float, high: float) -> float:
    """Mean spectral power of (B, C, H, W) noise at radial frequencies in (low, high] cycles per pixel."""
    power = torch.fft.fft2(noise).abs().pow(2).mean(dim=(0, 1))  # (H, W)
    h, w = power.shape
    fy, fx = torch.meshgrid(torch.fft.fftfreq(h), torch.fft.fftfreq(w), indexing="ij")
    radius = torch.sqrt(fy**2 + fx**2)
    return power[(radius > low) & (radius <= high)].mean().item()


def test_multires_noise_moves_energy_to_low_frequencies_and_keeps_unit_std():
    torch.manual_seed(0)
    white = torch.randn(8, 4, 64, 64)
    pyramid = pyramid_noise(white, iterations=6, discount=0.3)
    assert pyramid.std().item() == pytest.approx(1.0, abs=1e-5)
    # Level i adds discount^(2i) of variance squeezed into frequencies below ~1/(2 r^i): at the lowest
    # frequencies the density roughly doubles against the finest band, where white noise is flat (ratio 1).
    ratio = {name: _band_power(n, 0, 0.02) / _band_power(n, 0.4, 1) for name, n in (("white", white), ("pyramid", pyramid))}
    assert ratio["white"] == pytest.approx(1.0, abs=0.15), ratio
    assert ratio["pyramid"] > 1.8, ratio
    assert _band_power(pyramid, 0, 0.02) > _band_power(pyramid, 0.02, 0.05) > _band_power(pyramid, 0.4, 1)


def test_input_perturbation_changes_the_input_noise_but_not_the_target():
    from trainer.objective import Objective

    cfg = Config()
    cfg.training.ip_noise_gamma = 0.5
    model = type("M", (), {})()
    model.noise_scheduler, model.prediction_type = DDPMScheduler(num_train_timesteps=1000), "epsilon"
    latents = torch.randn(2, 4, 8, 8)
    torch.manual_seed(1)
    noised = Objective.from_config(cfg, model).noised(latents)
    torch.manual_seed(1)
    noise = torch.randn_like(latents)  # the same draws in the same order: noise, timesteps, perturbation
    t = torch.randint(0, 1000, (2,))
    expected_input = noise + 0.5 * torch.randn_like(latents)
    assert torch.equal(noised.noise, noise), "the target's noise is the plain draw"
    assert torch.equal(noised.timesteps, t)
    torch.testing.assert_close(noised.noisy, model.noise_scheduler.add_noise(latents, expected_input, t))
    assert perturbed_input_noise(noise, 0.0) is noise


def test_debiased_weights_are_one_over_sqrt_snr_capped_at_1000(scheduler):
    ac = scheduler.alphas_cumprod
    t = torch.tensor([0, 500, 999])
    snr = ac[t] / (1 - ac[t])
    weights = debiased_weights(scheduler, t)
    assert snr[0] > 1000 and weights[0].item() == pytest.approx(1 / math.sqrt(1000)), "SNR(0) is capped"
    torch.testing.assert_close(weights[1:], 1 / torch.sqrt(snr[1:]))
    assert weights[2] > weights[1] > weights[0], "noisier steps weigh more"


def test_huber_threshold_schedules_by_hand(scheduler):
    t = torch.tensor([0, 500, 1000 - 1])
    assert huber_threshold(scheduler, t, "constant", 0.1).tolist() == pytest.approx([0.1] * 3)
    exp = huber_threshold(scheduler, torch.tensor([0, 500]), "exponential", 0.01).tolist()
    assert exp == pytest.approx([1.0, 0.1]), "exp(ln(c) t/T): 1 at t=0, sqrt(c) half way"
    snr = huber_threshold(scheduler, t, "snr", 0.1)
    sigma = ((1 - scheduler.alphas_cumprod[t]) / scheduler.alphas_cumprod[t]) ** 0.5
    torch.testing.assert_close(snr, 0.9 / (1 + sigma) ** 2 + 0.1)
    assert snr[0] > 0.8 and snr[2] < 0.11, "near 1 for clean steps, near c for pure noise"


@pytest.mark.parametrize(("debiased", "loss_type"), [(False, "l2"), (True, "l2"), (False, "huber"), (True, "smooth_l1")])
def test_objective_applies_the_configured_loss_and_weights(scheduler, debiased, loss_type):
    from trainer.objective import NoisedLatents, Objective

    cfg = Config()
    cfg.training.debiased_estimation, cfg.training.loss_type = debiased, loss_type
    cfg.training.huber_schedule, cfg.training.huber_c = "constant", 0.5
    model = type("M", (), {"noise_scheduler": scheduler, "prediction_type": "epsilon"})()
    noise, t = torch.zeros(2, 4, 8, 8), torch.tensor([100, 900])
    noised = NoisedLatents(noise, t, noise)
    loss = Objective.from_config(cfg, model).loss(noise + 1, noise, noised, torch.ones(2))  # |prediction - ε| = 1
    per_element = {"l2": 1.0, "huber": 2 * 0.5 * (math.sqrt(1.25) - 0.5), "smooth_l1": 2 * (math.sqrt(1.25) - 0.5)}
    weights = debiased_weights(scheduler, t) if debiased else torch.ones(2)
    assert loss.item() == pytest.approx(per_element[loss_type] * weights.mean().item(), rel=1e-6)


def test_pseudo_huber_and_smooth_l1_by_hand():
    pred, target = torch.tensor([[3.0], [0.0]]), torch.zeros(2, 1)
    c = torch.tensor([4.0, 4.0])
    # sqrt(3^2 + 4^2) - 4 = 1
    assert elementwise_loss(pred, target, "huber", c).flatten().tolist() == [8.0, 0.0]  # 2c * 1
    assert elementwise_loss(pred, target, "smooth_l1", c).flatten().tolist() == [2.0, 0.0]  # 2 * 1
    assert elementwise_loss(pred, target, "l2").flatten().tolist() == [9.0, 0.0]


def test_recipe_settings_are_validated_with_named_messages():
    cfg = Config()
    cfg.training.min_timestep, cfg.training.max_timestep = 500, 400
    cfg.training.logit_std = 0
    cfg.training.huber_c = 0
    cfg.training.ema_decay = 1.0
    cfg.training.clip_skip = 0
    cfg.optimizer.warmup_ratio, cfg.optimizer.warmup_steps = 0.1, 10
    cfg.validation.fraction, cfg.validation.path = 0.2, "/somewhere"
    cfg.checkpoint.every_n_epochs = -1
    problems = "\n".join(validate(cfg))
    for key in ("training.min_timestep", "training.logit_std", "training.huber_c", "training.ema_decay",
                "training.clip_skip", "optimizer.warmup_ratio", "validation.fraction", "checkpoint.every_n_epochs"):
        assert f"`{key}`" in problems, key
    cfg = Config()
    cfg.optimizer.name, cfg.optimizer.scheduler = "adamw_schedulefree", "cosine"
    assert any("`optimizer.scheduler` must be \"constant\"" in p for p in validate(cfg))
