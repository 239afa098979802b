"""The exported file's self-check: diffusers' load_lora_weights on fresh base components must consume
every key and reproduce the in-training model (each test builds a pipeline and runs 3 forward passes)."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_export import export, lora_model, lora_params

from trainer.config import Config
from trainer.export import kohya_state_dict, load_adapter_weights, verify_adapter
from trainer.models.loading import load_base_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base():
    return load_base_model(Config().model)


@pytest.mark.parametrize(
    "fmt,dtype,b_std,atol",
    [
        ("kohya", "fp16", 0.1, 1e-2),
        # A briefly trained adapter: B ~ 1e-5 is mostly subnormal in fp16, where rounding is absolute.
        ("kohya", "fp16", 1e-5, 1e-4),
        ("diffusers", "fp32", 0.1, 1e-6),
        ("diffusers", "bf16", 0.1, 5e-2),
    ],
)
def test_both_formats_load_in_diffusers_and_reproduce_outputs(base, tmp_path, fmt, dtype, b_std, atol):
    model, cfg = lora_model(base, b_std=b_std)
    [result] = export(model, cfg, tmp_path, fmt=fmt, dtype=dtype, verify=True)
    assert result.verified is True, result.message
    # fp32 files reproduce the model up to float reordering; fp16 rounding leaves ~3e-4 on this model,
    # bf16 ~4e-3.
    assert result.max_abs_diff is not None and result.max_abs_diff <= atol


def test_identity_at_init_file_changes_nothing(base, tmp_path):
    model, cfg = lora_model(base, b_std=0)
    [result] = export(model, cfg, tmp_path, dtype="fp16", verify=True)
    assert result.verified is True, result.message
    assert result.max_abs_diff == 0.0, "a B = 0 adapter must leave the outputs exactly unchanged"


def test_self_check_catches_wrong_alpha_and_missing_modules(base, tmp_path):
    model, cfg = lora_model(base)
    [result] = export(model, cfg, tmp_path, dtype="fp32")
    tensors = load_file(str(result.path))

    wrong_alpha = dict(tensors, **{k: v * 2 for k, v in tensors.items() if k.endswith(".alpha")})
    save_file(wrong_alpha, str(tmp_path / "alpha.safetensors"))
    check = verify_adapter(tmp_path / "alpha.safetensors", model)
    assert check.verified is False and "differs" in check.message, check.message

    dropped = {k: v for k, v in tensors.items() if not k.startswith("lora_te_text_model_encoder_layers_3_self_attn_q_proj")}
    save_file(dropped, str(tmp_path / "dropped.safetensors"))
    check = verify_adapter(tmp_path / "dropped.safetensors", model)
    # The per-module ΔW check runs before diffusers loads the file, and names the layer the file lacks.
    assert check.verified is False and "missing from the file" in check.message, check.message
    assert "text_model.encoder.layers.3.self_attn.q_proj" in check.message, check.message


def tiny_sdxl():
    """A tiny SDXL-architecture BaseModel (two text encoders, text_time conditioning), as diffusers'
    own SDXL tests size it: the naming and pipeline paths are generic over component_modules()."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    sd1 = load_base_model(Config().model)
    tok = sd1.tokenizer
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=32,
    )
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, projection_dim=32, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    te1 = CLIPTextModel(CLIPTextConfig(**text))
    torch.manual_seed(0)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**text))
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32)
    from trainer.models.loading import assemble_base_model

    return assemble_base_model("sdxl", unet, vae, [te1, te2], [tok, copy.deepcopy(tok)], EulerDiscreteScheduler(),
                               Config().model, source="test", name_or_path="tiny-sdxl")


def test_sdxl_names_te1_te2_and_sgm_unet_and_loads_in_the_xl_pipeline(tmp_path):
    sdxl = tiny_sdxl()
    model, cfg = lora_model(sdxl)
    modules = {k.split(".", 1)[0] for k in kohya_state_dict(model, alpha=2.0)}
    for name in (
        # down_blocks.1.attentions.0 is sgm input_blocks.4.1; up_blocks.0.attentions.2 is output_blocks.2.1.
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k",
        "lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_out_0",
        "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te2_text_model_encoder_layers_1_self_attn_out_proj",
    ):
        assert name in modules, f"missing SDXL kohya module {name}"
    assert not any(m.startswith(("lora_te_", "lora_unet_down_blocks")) for m in modules)

    [result] = export(model, cfg, tmp_path, dtype="fp32", verify=True)
    assert result.verified is True, result.message

    fresh, _ = lora_model(sdxl, b_std=0)
    load_adapter_weights(fresh, result.path)
    want, got = lora_params(model), lora_params(fresh)
    assert all(torch.equal(got[k], want[k]) for k in want), "SDXL kohya file must load back exactly"


def test_file_tensors_meet_the_layer_on_its_device(base, tmp_path, monkeypatch):
    """A file is read onto the CPU; the model may be on a GPU. The default run on an H200 failed its export
    check ("Expected all tensors to be on the same device, cuda:0 and cpu"). CI has no second device, so the
    seam is ``FileModule.on``: every module's tensors go to the device of the layer they are compared with,
    before ΔW is computed, in the check, the merge and the tools alike."""
    from trainer.export.merge import merge_adapter
    from trainer.networks.base import FileModule

    moved = FileModule.on(FileModule("m", "lora", {"lora_down.weight": torch.ones(2, 3)}, 1.0), torch.device("meta"))
    assert {t.device.type for t in moved.parts.values()} == {"meta"}, "FileModule.on must move every tensor"

    calls = []
    real_on = FileModule.on
    monkeypatch.setattr(FileModule, "on", lambda self, device: calls.append((self.name, torch.device(device))) or real_on(self, device))
    model, cfg = lora_model(base)
    result = export(model, cfg, tmp_path, verify=True)[0]
    assert result.verified, result.message
    layers = {m.weight.device for m in model.unet.modules() if isinstance(m, torch.nn.Linear)}
    checked = {name for name, _ in calls}
    assert len(checked) >= 10 and {device for _, device in calls} == layers

    calls.clear()
    merge_adapter(copy.deepcopy(base), result.path)
    assert len({name for name, _ in calls}) == len(checked), "merging moves the file's tensors to each layer too"
