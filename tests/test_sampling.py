"""Previews during training: fixed-seed PNGs from the live model that leave the training run untouched."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from trainer.config import SAMPLERS, Config, ModelConfig
from trainer.models.builtin import builtin_model_path
from trainer.models.loading import load_base_model
from trainer.network import inject_lora
from trainer.sampling import generate_previews, make_scheduler


def lora_model(train_text_encoder: bool = True, seed: int = 3):
    """The builtin model with LoRA injected and B != 0, so the adapter changes the output."""
    model = load_base_model(Config().model)
    inject_lora(model, Config().network, train_text_encoder=train_text_encoder)
    torch.manual_seed(seed)
    for module in model.component_modules().values():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
    return model


@pytest.fixture(scope="module")
def model():
    return lora_model()


def preview_config(**sampling) -> Config:
    cfg = Config()
    cfg.dataset.resolution = 32  # small and fast; the tiny VAE turns it into a 16x16 latent
    cfg.dataset.trigger_word = "zxq"
    cfg.sampling.steps = 2
    cfg.sampling.prompts = ["{trigger} red circle", "plain {other} braces"]
    for key, value in sampling.items():
        setattr(cfg.sampling, key, value)
    return cfg


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def training_draws() -> list[float]:
    """A stand-in for what a training step draws: noise, timesteps, augmentations, shuffles."""
    return [
        torch.randn(3).sum().item(),
        torch.randint(0, 1000, (2,)).sum().item(),
        random.random(),
        float(np.random.rand()),
    ]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_make_scheduler_keeps_prediction_type(sampler):
    base = DDPMScheduler.from_pretrained(builtin_model_path("builtin:tiny-sd-v"), subfolder="scheduler")
    scheduler = make_scheduler(sampler, base.config)
    assert scheduler.config.prediction_type == "v_prediction", f"{sampler} lost v-prediction"
    assert scheduler.config.beta_schedule == base.config.beta_schedule
    assert make_scheduler(sampler, base).__class__ is scheduler.__class__, (
        "a scheduler works as well as its config"
    )


def test_make_scheduler_classes_and_unknown_name(model):
    names = {s: type(make_scheduler(s, model.noise_scheduler.config)).__name__ for s in SAMPLERS}
    assert names == {
        "ddim": "DDIMScheduler",
        "euler": "EulerDiscreteScheduler",
        "euler_a": "EulerAncestralDiscreteScheduler",
        "dpmpp_2m": "DPMSolverMultistepScheduler",
        "unipc": "UniPCMultistepScheduler",
    }
    assert make_scheduler("dpmpp_2m", model.noise_scheduler.config).config.algorithm_type == "dpmsolver++"
    with pytest.raises(ValueError, match="sampling.sampler"):
        make_scheduler("heun", model.noise_scheduler.config)


def test_previews_written_with_trigger_seed_and_names(model, tmp_path):
    results = generate_previews(model, preview_config(), tmp_path, 7, device="cpu")
    assert [r.prompt for r in results] == ["zxq red circle", "plain {other} braces"]
    assert [r.seed for r in results] == [1234, 1235], "prompt i uses sampling.seed + i"
    assert [r.path for r in results] == [tmp_path / "samples" / f"step_000007_{i:02d}.png" for i in range(2)]
    for r in results:
        image = Image.open(r.path)
        assert image.format == "PNG" and image.size == (32, 32), "width/height 0 means dataset.resolution"
        assert image.text["lora-studio.prompt"] == r.prompt
    assert results[0].event_fields(tmp_path) == {
        "step": 7,
        "path": "samples/step_000007_00.png",
        "prompt": "zxq red circle",
        "seed": 1234,
        "index": 0,
    }
    assert not list((tmp_path / "samples").glob(".*")), "no temporary files left behind"


def test_training_rng_unchanged_by_previews(model, tmp_path):
    # A forward hook that draws from every global generator stands in for any library code (or a
    # dropout left on) that would consume the training run's random streams during a preview.
    def draw(*_):
        torch.randn(5)
        random.random()
        np.random.rand()

    handle = model.unet.register_forward_pre_hook(draw)
    try:
        sequences = []
        for with_preview in (False, True):
            torch.manual_seed(0), random.seed(0), np.random.seed(0)
            first = training_draws()
            if with_preview:
                generate_previews(
                    model, preview_config(sampler="euler_a", prompts=["x"]), tmp_path, 1, device="cpu"
                )
            sequences.append(first + training_draws())
    finally:
        handle.remove()
    assert sequences[0] == sequences[1], "a preview shifted the training run's random numbers"


def test_modes_restored_and_eval_during_sampling(model, tmp_path):
    model.unet.train()
    model.text_encoder.eval()
    model.text_encoder.encoder.layers[0].train()  # a mixed state must come back exactly
    before = {name: m.training for name, m in model.unet.named_modules()}
    before_te = {name: m.training for name, m in model.text_encoder.named_modules()}
    seen = []
    handle = model.unet.register_forward_pre_hook(
        lambda mod, _: seen.append(mod.training or torch.is_grad_enabled())
    )
    try:
        generate_previews(model, preview_config(prompts=["x"]), tmp_path, 1, device="cpu")
    finally:
        handle.remove()
        after = {name: m.training for name, m in model.unet.named_modules()}
        after_te = {name: m.training for name, m in model.text_encoder.named_modules()}
        model.unet.eval()
        model.text_encoder.eval()
    assert seen and not any(seen), "sampling must run in eval mode without autograd"
    assert after == before and after_te == before_te, "train/eval flags not restored"
    assert all(p.grad is None for p in model.unet.parameters()), "sampling left gradients behind"


def test_same_seed_same_image_and_lora_is_live(model, tmp_path):
    cfg = preview_config(prompts=["{trigger}"], sampler="euler_a")
    first = pixels(generate_previews(model, cfg, tmp_path / "a", 1, device="cpu")[0].path)
    second = pixels(generate_previews(model, cfg, tmp_path / "b", 1, device="cpu")[0].path)
    np.testing.assert_array_equal(first, second, err_msg="same seed must give the same preview")
    cfg.sampling.seed += 1
    other_seed = pixels(generate_previews(model, cfg, tmp_path / "c", 1, device="cpu")[0].path)
    assert not np.array_equal(first, other_seed), "a different seed should give a different image"

    cfg.sampling.seed -= 1
    components = model.component_modules().values()
    for module in components:
        module.disable_adapters()
    try:
        base = pixels(generate_previews(model, cfg, tmp_path / "d", 1, device="cpu")[0].path)
    finally:
        for module in components:
            module.enable_adapters()
    # B != 0 in `model`: its previews must show the adapter, i.e. come from the live injected modules.
    assert np.abs(first.astype(int) - base.astype(int)).mean() > 1, "previews ignore the LoRA weights"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_gives_requested_size(model, tmp_path, sampler):
    cfg = preview_config(prompts=["{trigger}"], sampler=sampler, width=48, height=32)
    path = generate_previews(model, cfg, tmp_path, 0, device="cpu")[0].path
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (48, 32), f"{sampler}: got {image.size}"
    assert pixels(path).std() > 0, f"{sampler} produced a flat image"


def test_v_prediction_model_previews(tmp_path):
    model = load_base_model(ModelConfig(base="builtin:tiny-sd-v"))
    inject_lora(model, Config().network)
    result = generate_previews(
        model, preview_config(prompts=["x"], sampler="dpmpp_2m"), tmp_path, 0, device="cpu"
    )
    assert Image.open(result[0].path).size == (32, 32)


def test_sdxl_models_get_the_sdxl_pipeline(tmp_path):
    from trainer.sampling import build_pipeline

    model = load_base_model(ModelConfig(base="builtin:tiny-sdxl"))
    inject_lora(model, Config().network, train_text_encoder=True)
    pipe = build_pipeline(model, "euler")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.text_encoder_2 is model.text_encoders[1] and pipe.unet is model.unet, (
        "pipeline must share live modules"
    )
    result = generate_previews(
        model, preview_config(prompts=["{trigger}"], width=32, height=24), tmp_path, 3, device="cpu"
    )
    assert Image.open(result[0].path).size == (32, 24)
