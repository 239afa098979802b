"""SDXL kohya files name every UNet layer in ONE layout, sd-scripts' sgm/LDM one, and diffusers applies all of it.

diffusers' ``_maybe_map_sgm_blocks_to_diffusers`` drops every sgm key of a file that also holds
diffusers-layout keys (``down_blocks``/``mid_block``/``up_blocks``), so one conv layer left in the diffusers
spelling silently loses every attention layer. ComfyUI looks up the LDM weight paths themselves
(``comfy/lora.py`` ``model_lora_keys_unet``).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_export import export, lora_params
from test_single_file_layout import unet_to_original

from trainer.config import UNET_TARGET_PRESETS, Config, ModelConfig
from trainer.export import load_adapter_weights, read_adapter_file, verify_adapter
from trainer.export.formats import resolve_modules
from trainer.export.keys import KohyaNaming
from trainer.models.loading import load_base_model
from trainer.network import ADAPTER_NAME, inject_lora

RESNET = ["conv1", "conv2", "conv_shortcut", "time_emb_proj"]
# Every Linear/Conv2d of an SDXL UNet that LoRA can wrap: ``conv`` is the down/upsamplers' conv.
EVERY_LAYER = [*UNET_TARGET_PRESETS["kohya"], *RESNET, "conv", "conv_in", "conv_out", "time_embedding.linear_1",
               "time_embedding.linear_2", "add_embedding.linear_1", "add_embedding.linear_2"]
TARGETS = {
    **{name: (name, []) for name in UNET_TARGET_PRESETS},
    "custom-resnets": ("custom", RESNET),
    "custom-attention-and-resnets": ("custom", [*UNET_TARGET_PRESETS["attention"], *RESNET]),
    "custom-every-layer": ("custom", EVERY_LAYER),
}
SGM_ROOTS = ("input_blocks_", "middle_block_", "output_blocks_", "time_embed_", "label_emb_", "out_")
DIFFUSERS_BLOCKS = ("down_blocks", "mid_block", "up_blocks")


@pytest.fixture(scope="module")
def sdxl():
    return load_base_model(ModelConfig(base="builtin:tiny-sdxl"))


def sdxl_adapter(base, preset, modules, b_std=0.1):
    """A copy of ``base`` with rank-4 LoRA on the UNet targets and both text encoders, B ~ N(0, b_std)
    (B = 0 would make every layer look applied)."""
    model, cfg = copy.deepcopy(base), Config()
    cfg.network.rank, cfg.network.alpha, cfg.network.train_text_encoder = 4, 2.0, True
    cfg.network.unet_targets, cfg.network.unet_target_modules = preset, list(modules)
    inject_lora(model, cfg.network)
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.component_modules().values():
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, b_std)
    return model, cfg


def adapted_unet_layers(model):
    return {n: m for n, m in model.unet.named_modules() if hasattr(m, "lora_A") and ADAPTER_NAME in m.lora_A}


def delta_w(layer, adapter=ADAPTER_NAME):
    """scale · B @ A, shaped like the base weight (a k×k conv's A is (r, in, k, k), its B (out, r, 1, 1))."""
    a, b = layer.lora_A[adapter].weight.float(), layer.lora_B[adapter].weight.float()
    return (layer.scaling[adapter] * (b.flatten(1) @ a.flatten(1))).reshape(layer.get_base_layer().weight.shape)


def assert_ldm_names(model):
    """The written name of each Linear/Conv2d is its LDM weight path (what ComfyUI keys LoRAs on), taken
    from the test-side layout that test_single_file_layout checks against diffusers' single-file converter."""
    naming = KohyaNaming.for_model(model)
    layers = [n for n, m in model.unet.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    ldm = unet_to_original({f"{n}.weight": torch.empty(0) for n in layers}, model.unet.config)
    want = {n: "lora_unet_" + k.removeprefix("model.diffusion_model.").removesuffix(".weight").replace(".", "_")
            for n, k in zip(layers, ldm, strict=True)}
    got = {n: naming.name("unet", n) for n in layers}
    wrong = {n: (got[n], want[n]) for n in layers if got[n] != want[n]}
    assert not wrong, f"{len(wrong)} of {len(layers)} UNet layers misnamed (got, LDM): {list(wrong.items())[:3]}"
    return got


def test_every_sdxl_unet_layer_gets_its_ldm_path(sdxl):
    names = assert_ldm_names(sdxl)
    assert names["up_blocks.0.upsamplers.0.conv"] == "lora_unet_output_blocks_2_2_conv", "after the attention: slot 2"


def test_upsampler_of_an_up_block_without_attention_takes_slot_1():
    """Not in SDXL (its up blocks with an upsampler all have attention), but in the LDM layout it is
    ``output_blocks.N.1.conv``; the SD 1.x block order on a tiny UNet shows it."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    names = assert_ldm_names(SimpleNamespace(family="sdxl", unet=unet, component_modules=lambda: {"unet": unet}))
    assert names["up_blocks.0.upsamplers.0.conv"] == "lora_unet_output_blocks_1_1_conv"


@pytest.mark.slow
@pytest.mark.parametrize("targets", list(TARGETS), ids=list(TARGETS))
def test_one_layout_per_file_and_diffusers_applies_every_module(sdxl, tmp_path, targets):
    model, cfg = sdxl_adapter(sdxl, *TARGETS[targets])
    [result] = export(model, cfg, tmp_path, dtype="fp32")
    unet_modules = {k.split(".", 1)[0].removeprefix("lora_unet_") for k in load_file(str(result.path))
                    if k.startswith("lora_unet_")}
    trained = adapted_unet_layers(model)
    assert len(unet_modules) == len(trained), "one file module per adapted UNet layer"
    mixed = sorted(m for m in unet_modules if not m.startswith(SGM_ROOTS) or any(b in m for b in DIFFUSERS_BLOCKS))
    assert not mixed, f"{len(mixed)} of {len(unet_modules)} UNet modules not in the sgm layout, e.g. {mixed[:3]}"

    # diffusers, the way its users load it; fused, every adapted weight must move by exactly our delta W.
    from diffusers import StableDiffusionXLPipeline

    fresh = copy.deepcopy(sdxl)
    pipe = StableDiffusionXLPipeline(
        vae=fresh.vae, text_encoder=fresh.text_encoder, text_encoder_2=fresh.text_encoders[1],
        tokenizer=fresh.tokenizers[0], tokenizer_2=fresh.tokenizers[1], unet=fresh.unet,
        scheduler=fresh.noise_scheduler,
    )
    pipe.load_lora_weights(str(result.path))
    loaded = {n for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)}
    dropped, extra = sorted(set(trained) - loaded), sorted(loaded - set(trained))
    assert not dropped and not extra, f"diffusers dropped {len(dropped)} layers {dropped[:3]}, added {extra[:3]}"
    pipe.fuse_lora(components=["unet"])
    base_weights = {n: p for n, p in sdxl.unet.named_parameters()}
    for name, param in pipe.unet.named_parameters():
        if "lora_" in name:
            continue
        layer_name = name.removesuffix(".weight").replace(".base_layer", "")
        want = base_weights[name.replace(".base_layer", "")]
        if name.endswith(".weight") and layer_name in trained:
            want = want + delta_w(trained[layer_name])
        # fp32 file: only the summation order of the fused product differs.
        torch.testing.assert_close(param, want, rtol=1e-5, atol=1e-6, msg=f"fused {name} is not base + our delta W")

    # Our own reader: every module resolves, loads back bit for bit, and the self-check passes.
    adapter = read_adapter_file(result.path)
    _, unknown = resolve_modules(adapter, model)
    assert not unknown, f"our reader does not know {unknown[:3]}"
    blank, _ = sdxl_adapter(sdxl, *TARGETS[targets], b_std=0)
    load_adapter_weights(blank, result.path)
    want, got = lora_params(model), lora_params(blank)
    assert all(torch.equal(got[k], want[k]) for k in want), "the file must load back into the same network exactly"
    check = verify_adapter(result.path, model)
    assert check.verified is True, check.message


def test_reader_still_accepts_diffusers_layout_sdxl_unet_names(sdxl, tmp_path):
    """Files written before one layout per file spelled SDXL convs the diffusers way: they still load."""
    model, cfg = sdxl_adapter(sdxl, "custom", RESNET)
    [result] = export(model, cfg, tmp_path, dtype="fp32")
    naming = KohyaNaming.for_model(model)
    old = {naming.name("unet", n): f"lora_unet_{n.replace('.', '_')}" for n in adapted_unet_layers(model)}
    tensors = {old.get(k.split(".", 1)[0], k.split(".", 1)[0]) + "." + k.split(".", 1)[1]: v
               for k, v in load_file(str(result.path)).items()}
    save_file(tensors, str(tmp_path / "old.safetensors"))
    blank, _ = sdxl_adapter(sdxl, "custom", RESNET, b_std=0)
    load_adapter_weights(blank, tmp_path / "old.safetensors")
    want, got = lora_params(model), lora_params(blank)
    assert all(torch.equal(got[k], want[k]) for k in want), "diffusers-layout SDXL UNet names must still read back"
