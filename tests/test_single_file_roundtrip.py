"""Full-size SD 1.5 and SDXL architectures with random weights, written as original-layout single files, load
offline with the right family and prediction type, and every checked tensor arrives where it belongs.

The files are described on the meta device and streamed to disk one tensor at a time in fp16, so writing
needs almost no memory; loading holds one fp16 model (about 2 GB for SD 1.5, 7 GB for SDXL).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from test_single_file_layout import clip_to_original, open_clip_to_original, unet_to_original, vae_to_original

from trainer.config import ModelConfig
from trainer.models.loading import load_base_model
from trainer.models.single_file import CONFIGS

pytestmark = pytest.mark.slow


def _meta_state(family: str) -> dict[str, torch.Tensor]:
    """The original-layout keys and shapes of a full-size ``family`` model, without allocating it."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = CONFIGS / family
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root, subfolder="vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(root, subfolder="text_encoder"))
        state = {**unet_to_original(unet.state_dict(), unet.config), **vae_to_original(vae.state_dict(), vae.config)}
        if family == "sdxl":
            te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root, subfolder="text_encoder_2"))
            state.update(clip_to_original(te.state_dict(), "conditioner.embedders.0.transformer."))
            state.update(open_clip_to_original(te2.state_dict(), "conditioner.embedders.1.model."))
        else:
            state.update(clip_to_original(te.state_dict(), "cond_stage_model.transformer."))
    return {k: v for k, v in state.items() if "position_ids" not in k}


def _write_streaming(path: Path, shapes: dict[str, torch.Tensor], keep: set[str]) -> dict[str, torch.Tensor]:
    """Write a safetensors file tensor by tensor (the format: u64 header size, JSON header, raw data)."""
    header, offset = {}, 0
    for key, meta in shapes.items():
        n = meta.numel() * 2
        header[key] = {"dtype": "F16", "shape": list(meta.shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    kept = {}
    with path.open("wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for i, (key, meta) in enumerate(shapes.items()):
            g = torch.Generator().manual_seed(i)
            value = (torch.randn(meta.shape, generator=g) * 0.05).to(torch.float16)
            f.write(value.numpy().tobytes())
            if key in keep:
                kept[key] = value
    return kept


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("single-file loading tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_full_size_sd15_single_file(tmp_path, no_network):
    shapes = _meta_state("sd1")
    keep = {U + "input_blocks.0.0.weight", U + "output_blocks.5.2.conv.weight", "first_stage_model.decoder.mid.attn_1.q.weight",
            "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight"}
    path = tmp_path / "sd15.safetensors"
    kept = _write_streaming(path, shapes, keep)
    del shapes
    model = load_base_model(ModelConfig(base=str(path)), dtype=torch.float16)
    assert (model.family, model.prediction_type, model.source) == ("sd1", "epsilon", "file")
    assert model.vae_scale_factor == 8 and model.latent_scale == pytest.approx(0.18215)
    assert model.tokenizer("a photo of a cat").input_ids[:3] == [49406, 320, 1125], "the real CLIP vocabulary"
    eq = torch.testing.assert_close
    eq(model.unet.conv_in.weight, kept[U + "input_blocks.0.0.weight"], rtol=0, atol=0)
    eq(model.unet.up_blocks[1].upsamplers[0].conv.weight, kept[U + "output_blocks.5.2.conv.weight"], rtol=0, atol=0)
    eq(model.vae.decoder.mid_block.attentions[0].to_q.weight, kept["first_stage_model.decoder.mid.attn_1.q.weight"][:, :, 0, 0], rtol=0, atol=0)
    fc2 = kept["cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight"]
    eq(model.text_encoder.get_parameter(_te_name(model.text_encoder, "encoder.layers.11.mlp.fc2.weight")), fc2, rtol=0, atol=0)


def test_full_size_sdxl_vpred_single_file(tmp_path, no_network):
    shapes = _meta_state("sdxl")
    shapes["v_pred"] = torch.empty(0, device="meta")  # the marker v-prediction SDXL checkpoints carry
    te2 = "conditioner.embedders.1.model."
    keep = {U + "label_emb.0.0.weight", te2 + "transformer.resblocks.31.attn.in_proj_weight", te2 + "text_projection"}
    path = tmp_path / "sdxl.safetensors"
    kept = _write_streaming(path, shapes, keep)
    del shapes
    model = load_base_model(ModelConfig(base=str(path)), dtype=torch.float16)
    assert (model.family, model.prediction_type) == ("sdxl", "v_prediction"), model.extra
    assert model.extra["prediction_type_source"] == "checkpoint key `v_pred`"
    assert model.latent_scale == pytest.approx(0.13025)
    assert [t.pad_token for t in model.tokenizers] == ["<|endoftext|>", "!"]
    eq = torch.testing.assert_close
    eq(model.unet.add_embedding.linear_1.weight, kept[U + "label_emb.0.0.weight"], rtol=0, atol=0)
    q = model.text_encoders[1].get_parameter(_te_name(model.text_encoders[1], "encoder.layers.31.self_attn.q_proj.weight"))
    eq(q, kept[te2 + "transformer.resblocks.31.attn.in_proj_weight"][:1280], rtol=0, atol=0)
    eq(model.text_encoders[1].text_projection.weight, kept[te2 + "text_projection"].T, rtol=0, atol=0)


U = "model.diffusion_model."


def _te_name(module: torch.nn.Module, name: str) -> str:
    """transformers >= 5.6 flattened CLIPTextModel; CLIPTextModelWithProjection still nests ``text_model``."""
    return name if hasattr(module, "encoder") else "text_model." + name
