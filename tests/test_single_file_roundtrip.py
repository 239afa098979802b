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
        elif family == "sd2":
            state.update(open_clip_to_original(te.state_dict(), "cond_stage_model.model."))
            # Real SD 2.x files hold OpenCLIP-H's 24th layer and its projection, which SD does not use.
            last = {k: v for k, v in state.items() if ".resblocks.22." in k}
            state.update({k.replace(".resblocks.22.", ".resblocks.23."): v for k, v in last.items()})
            state["cond_stage_model.model.text_projection"] = torch.empty(1024, 1024)
            state["cond_stage_model.model.logit_scale"] = torch.empty(())
        else:
            state.update(clip_to_original(te.state_dict(), "cond_stage_model.transformer."))
    return {k: v for k, v in state.items() if "position_ids" not in k}


def _write_streaming(
    path: Path, shapes: dict[str, torch.Tensor], keep: set[str], scale: dict[str, float] | None = None
) -> dict[str, torch.Tensor]:
    """Write a safetensors file tensor by tensor (the format: u64 header size, JSON header, raw data).

    Values are N(0, 0.05²) (``scale`` overrides the 0.05 per key), seeded by position; ``keep`` ones are returned.
    """
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
            value = (torch.randn(meta.shape, generator=g) * (scale or {}).get(key, 0.05)).to(torch.float16)
            f.write(value.numpy().tobytes())
            if key in keep:
                kept[key] = value
    return kept


@pytest.fixture
def big_file(tmp_path):
    """A path for a multi-GB checkpoint, deleted after the test rather than left in pytest's kept temp dirs."""
    path = tmp_path / "model.safetensors"
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("single-file loading tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_full_size_sd15_single_file(big_file, no_network):
    shapes = _meta_state("sd1")
    keep = {U + "input_blocks.0.0.weight", U + "output_blocks.5.2.conv.weight", "first_stage_model.decoder.mid.attn_1.q.weight",
            "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight"}
    path = big_file
    kept = _write_streaming(path, shapes, keep)
    del shapes
    model = load_base_model(ModelConfig(base=str(path)), dtype=torch.float16)
    assert (model.family, model.prediction_type, model.source) == ("sd1", "epsilon", "file")
    assert model.vae_scale_factor == 8 and model.latent_scale == pytest.approx(0.18215)
    assert model.native_resolution == 512
    assert model.tokenizer("a photo of a cat").input_ids[:3] == [49406, 320, 1125], "the real CLIP vocabulary"
    eq = torch.testing.assert_close
    eq(model.unet.conv_in.weight, kept[U + "input_blocks.0.0.weight"], rtol=0, atol=0)
    eq(model.unet.up_blocks[1].upsamplers[0].conv.weight, kept[U + "output_blocks.5.2.conv.weight"], rtol=0, atol=0)
    eq(model.vae.decoder.mid_block.attentions[0].to_q.weight, kept["first_stage_model.decoder.mid.attn_1.q.weight"][:, :, 0, 0], rtol=0, atol=0)
    fc2 = kept["cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight"]
    eq(model.text_encoder.get_parameter(_te_name(model.text_encoder, "encoder.layers.11.mlp.fc2.weight")), fc2, rtol=0, atol=0)


def test_full_size_sd21_768_v_single_file(big_file, no_network):
    from trainer.models.single_file import SD2_V_PROBE

    shapes = _meta_state("sd2")
    keep = {"cond_stage_model.model.transformer.resblocks.22.attn.in_proj_bias", SD2_V_PROBE}
    path = big_file
    # ComfyUI reads a std above 0.09 of this bias as a v-model; make this random one clearly so.
    kept = _write_streaming(path, shapes, keep, scale={SD2_V_PROBE: 0.2})
    del shapes
    model = load_base_model(ModelConfig(base=str(path)), dtype=torch.float16)
    assert (model.family, model.prediction_type) == ("sd2", "v_prediction"), model.extra
    assert "std" in model.extra["prediction_type_source"], "SD 2.x v-detection comes from ComfyUI's norm1 heuristic"
    assert model.native_resolution == 768, "v-models are 768-px models"
    assert len(model.text_encoder.encoder.layers) == 23, "SD 2.x uses OpenCLIP-H without its last layer"
    assert model.tokenizer.pad_token == "!"
    k_bias = model.text_encoder.get_parameter("encoder.layers.22.self_attn.k_proj.bias")
    torch.testing.assert_close(k_bias, kept["cond_stage_model.model.transformer.resblocks.22.attn.in_proj_bias"][1024:2048], rtol=0, atol=0)


def test_full_size_sdxl_vpred_single_file(big_file, no_network):
    shapes = _meta_state("sdxl")
    shapes["v_pred"] = torch.empty(0, device="meta")  # the marker v-prediction SDXL checkpoints carry
    te2 = "conditioner.embedders.1.model."
    keep = {U + "label_emb.0.0.weight", te2 + "transformer.resblocks.31.attn.in_proj_weight", te2 + "text_projection"}
    path = big_file
    kept = _write_streaming(path, shapes, keep)
    del shapes
    model = load_base_model(ModelConfig(base=str(path)), dtype=torch.float16)
    assert (model.family, model.prediction_type) == ("sdxl", "v_prediction"), model.extra
    assert model.extra["prediction_type_source"] == "checkpoint key `v_pred`"
    assert model.latent_scale == pytest.approx(0.13025) and model.native_resolution == 1024
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
