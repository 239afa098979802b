"""builtin:tiny-sdxl and SDXL conditioning: two encoders, pooled text_encoder_2 output, size/crop time ids."""

from __future__ import annotations

import pytest
import torch

from trainer.config import BUILTIN_MODELS, ModelConfig
from trainer.models.loading import load_base_model
from trainer.models.sdxl import encode_sdxl_prompts, encode_sdxl_text, sdxl_time_ids


@pytest.fixture(scope="module")
def sdxl():
    return load_base_model(ModelConfig(base="builtin:tiny-sdxl"))


def test_tiny_sdxl_loads_with_two_encoders(sdxl):
    assert "builtin:tiny-sdxl" in BUILTIN_MODELS, "config validation must accept the builtin"
    assert sdxl.family == "sdxl"
    assert [type(te).__name__ for te in sdxl.text_encoders] == ["CLIPTextModel", "CLIPTextModelWithProjection"]
    assert [t.pad_token for t in sdxl.tokenizers] == ["<|endoftext|>", "!"], "tokenizer_2 pads with ! as SDXL's does"
    assert set(sdxl.component_modules()) == {"unet", "text_encoder", "text_encoder_2"}
    assert sdxl.unet.config.addition_embed_type == "text_time"
    assert sdxl.latent_scale == pytest.approx(0.13025), "SDXL's VAE scaling factor is read from the VAE config"
    assert sdxl.vae_scale_factor == 2
    assert sdxl.native_resolution == 64, "32-latent UNet, VAE downsamples by 2"


def test_sdxl_text_is_both_penultimate_layers_and_pooled_te2(sdxl):
    captions = ["a photo of a cat", "sks dog"]
    with torch.no_grad():
        hidden, pooled = encode_sdxl_text(sdxl, captions, torch.device("cpu"))
        ids = [tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
               for tok in sdxl.tokenizers]
        outs = [te(i, output_hidden_states=True) for te, i in zip(sdxl.text_encoders, ids, strict=True)]
    assert hidden.shape == (2, 77, sdxl.unet.config.cross_attention_dim)
    torch.testing.assert_close(hidden, torch.cat([o.hidden_states[-2] for o in outs], -1), msg="penultimate layers, te1 then te2")
    torch.testing.assert_close(pooled, outs[1].text_embeds, msg="pooled comes from text_encoder_2's projection")


def test_time_ids_order_matches_diffusers():
    ids = sdxl_time_ids(torch.tensor([[600, 800]]), torch.tensor([[10, 20]]), torch.tensor([[512, 768]]))
    assert ids.tolist() == [[600.0, 800.0, 10.0, 20.0, 512.0, 768.0]], "original (h, w), crop (top, left), target (h, w)"
    assert sdxl_time_ids([(1, 2), (3, 4)], [(0, 0), (5, 6)], [(7, 8), (9, 9)]).shape == (2, 6)


def test_unet_forward_with_added_cond_kwargs(sdxl):
    cond = encode_sdxl_prompts(
        sdxl, ["a", "b"], torch.tensor([[64, 64], [96, 64]]), torch.tensor([[0, 0], [16, 0]]),
        torch.tensor([[64, 64], [64, 64]]), torch.device("cpu"),
    )
    hidden, added = cond  # unpacks like a tuple
    torch.manual_seed(0)
    noisy = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        out = sdxl.unet(noisy, torch.tensor([10, 500]), encoder_hidden_states=hidden, added_cond_kwargs=added).sample
        other = dict(added, time_ids=added["time_ids"] + 100)
        moved = sdxl.unet(noisy, torch.tensor([10, 500]), encoder_hidden_states=hidden, added_cond_kwargs=other).sample
    assert out.shape == noisy.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, moved), "the size/crop conditioning must reach the UNet"


def test_zero_terminal_snr_rescales_v_models_and_refuses_epsilon():
    from trainer.models.loading import ModelLoadError

    model = load_base_model(ModelConfig(base="builtin:tiny-sd-v", zero_terminal_snr=True))
    assert model.noise_scheduler.config.rescale_betas_zero_snr is True
    assert float(model.noise_scheduler.alphas_cumprod[-1]) < 1e-6, "the last step must be (almost) pure noise"
    plain = load_base_model(ModelConfig(base="builtin:tiny-sd-v"))
    assert float(plain.noise_scheduler.alphas_cumprod[-1]) > 1e-3
    with pytest.raises(ModelLoadError, match="zero_terminal_snr"):
        load_base_model(ModelConfig(base="builtin:tiny-sd", zero_terminal_snr=True))
    forced = load_base_model(ModelConfig(base="builtin:tiny-sd", zero_terminal_snr=True, prediction_type="v_prediction"))
    assert forced.prediction_type == "v_prediction"
