"""Diffusers -> original ("LDM") layout (``trainer/models/original_layout.py``), checked here against diffusers.

diffusers ships only the other direction (``single_file_utils.convert_ldm_*``); its
``scripts/convert_diffusers_to_original_*.py`` are not importable. The mapping here is written from the
original layout's naming (input_blocks / output_blocks / middle_block, resblocks with fused in_proj), and the
tests below check it is the exact inverse of diffusers' converters on tiny models, key for key and bit for bit.
Works on meta tensors too, so full-size files can be described without allocating them.
"""

from __future__ import annotations

import torch

# The mapping lives in the trainer (``merge --format single-file`` writes checkpoints with it); these names are
# re-exported for the tests that write single files (test_single_file_roundtrip imports them from here).
from trainer.models.original_layout import (  # noqa: F401
    clip_to_original,
    open_clip_to_original,
    unet_to_original,
    vae_to_original,
)

# ---------------------------------------------------------------------------------------------
# Tests: the mapping is the exact inverse of diffusers' own converters.


def _assert_same(converted: dict, expected: dict, what: str) -> None:
    assert set(converted) == set(expected), (
        f"{what}: keys differ; missing {sorted(set(expected) - set(converted))[:5]}, "
        f"extra {sorted(set(converted) - set(expected))[:5]}"
    )
    for k, v in expected.items():
        torch.testing.assert_close(converted[k], v, rtol=0, atol=0, msg=f"{what}: {k} changed in the round trip")


def test_unet_layout_inverts_diffusers_converter():
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    for kwargs in (
        # SD 1.x-like: attention in all but the last level, three levels
        dict(block_out_channels=(32, 32, 64), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16),
        # SDXL-like: no attention at the first level, text_time add-embedding
        dict(block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
             up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16, use_linear_projection=True,
             addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=64,
             transformer_layers_per_block=(1, 2)),
    ):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(sample_size=16, layers_per_block=2, attention_head_dim=4, norm_num_groups=32, **kwargs)
        expected = unet.state_dict()
        converted = convert_ldm_unet_checkpoint(unet_to_original(expected, unet.config), unet.config)
        _assert_same(converted, expected, f"UNet {kwargs['down_block_types']}")


def test_vae_layout_inverts_diffusers_converter():
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32, latent_channels=4)
    expected = vae.state_dict()
    original = vae_to_original(expected, vae.config)
    assert "first_stage_model.decoder.up.1.upsample.conv.weight" in original, "decoder levels are numbered in reverse"
    _assert_same(convert_ldm_vae_checkpoint(original, vae.config), expected, "VAE")


def test_text_encoder_layouts_invert_diffusers_converters():
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, projection_dim=32)
    torch.manual_seed(0)
    clip = CLIPTextModel(config)
    expected = clip.state_dict()
    original = clip_to_original(expected, "cond_stage_model.transformer.")
    converted = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(original).items()}
    _assert_same(converted, {k.removeprefix("text_model."): v for k, v in expected.items()}, "CLIP-L")

    torch.manual_seed(0)
    big = CLIPTextModelWithProjection(config)
    expected = {k: v for k, v in big.state_dict().items() if "position_ids" not in k}
    original = open_clip_to_original(expected, "conditioner.embedders.1.model.")
    assert "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight" in original, "q/k/v must be fused"
    converted = convert_open_clip_checkpoint(big, original, prefix="conditioner.embedders.1.model.")
    _assert_same(converted, expected, "OpenCLIP")
