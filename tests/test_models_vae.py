"""`model.vae`: a separate VAE folder or single file replaces the base model's own."""

from __future__ import annotations

import pytest
import torch
from test_single_file_layout import vae_to_original
from test_single_file_roundtrip import _write_streaming

from trainer.config import ModelConfig
from trainer.models.builtin import builtin_model_path
from trainer.models.loading import ModelLoadError, load_base_model
from trainer.models.single_file import CONFIGS


def test_vae_folder_replaces_the_models_vae():
    sdxl_vae = builtin_model_path("builtin:tiny-sdxl") / "vae"
    model = load_base_model(ModelConfig(base="builtin:tiny-sd", vae=str(sdxl_vae)))
    assert model.latent_scale == pytest.approx(0.13025), "constants must be read from the replacement VAE"
    assert model.extra["vae"] == str(sdxl_vae)
    assert not any(p.requires_grad for p in model.vae.parameters()), "the replacement VAE is frozen too"


def test_single_file_vae_in_original_layout(tmp_path):
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIGS / "sdxl", subfolder="vae"))
    # Stand-alone VAE files (e.g. sdxl_vae.safetensors) have no first_stage_model. prefix.
    shapes = {k.removeprefix("first_stage_model."): v for k, v in vae_to_original(vae.state_dict(), vae.config).items()}
    path = tmp_path / "sdxl_vae.safetensors"
    kept = _write_streaming(path, shapes, {"encoder.conv_in.weight"})
    model = load_base_model(ModelConfig(base="builtin:tiny-sdxl", vae=str(path)))
    assert model.vae_scale_factor == 8 and model.latent_scale == pytest.approx(0.13025)
    torch.testing.assert_close(model.vae.encoder.conv_in.weight, kept["encoder.conv_in.weight"].float(), rtol=0, atol=0)


def test_vae_that_is_not_a_vae(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "nope.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(3)}, path)
    with pytest.raises(ModelLoadError, match="model.vae"):
        load_base_model(ModelConfig(base="builtin:tiny-sd", vae=str(path)))
