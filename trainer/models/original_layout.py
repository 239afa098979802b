"""Diffusers -> original ("LDM") layout: the inverse of diffusers' ``single_file_utils.convert_ldm_*``.

Used by ``merge --format single-file`` to write a checkpoint that AUTOMATIC1111 and ComfyUI open as a
model, and by tests to write real single-file checkpoints. diffusers ships only the other direction; its
``scripts/convert_diffusers_to_original_*.py`` are not importable. The mapping is written from the
original layout's naming (input_blocks / output_blocks / middle_block, resblocks with fused in_proj), and
tests/test_single_file_layout.py checks it is the exact inverse of diffusers' converters on tiny models,
key for key and bit for bit. Values are only moved (except OpenCLIP's fused q/k/v and transposed
projection, and the VAE's 1x1 attention convs), so they may be any object, e.g. a lazily merged weight.
Works on meta tensors too, so full-size files can be described without allocating them.
"""

from __future__ import annotations

import re

import torch

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2", "conv_in": "input_blocks.0.0",
             "conv_norm_out": "out.0", "conv_out": "out.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2"}


def _resnet(rest: str) -> str:
    for hf, sd in _RESNET:
        rest = re.sub(rf"^{hf}\.", f"{sd}.", rest)
    return rest


def unet_to_original(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    per = config.layers_per_block + 1  # resnets per down block + its downsampler / per up block
    up_has_attn = [t.startswith("CrossAttn") for t in config.up_block_types]
    out = {}
    for key, value in sd.items():
        name = key
        top = next((k for k in _UNET_TOP if key.startswith(k + ".")), None)
        if top:
            name = _UNET_TOP[top] + key[len(top):]
        elif m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            name = f"input_blocks.{per * i + j + 1}." + ("0." + _resnet(rest) if kind == "resnets" else "1." + rest)
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            name = f"input_blocks.{per * (int(m[1]) + 1)}.0.op.{m[2]}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            name = f"output_blocks.{per * i + j}." + ("0." + _resnet(rest) if kind == "resnets" else "1." + rest)
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
            i = int(m[1])
            name = f"output_blocks.{per * i + per - 1}.{2 if up_has_attn[i] else 1}.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            name = f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        elif key.startswith("mid_block.attentions.0."):
            name = "middle_block.1." + key[len("mid_block.attentions.0."):]
        out["model.diffusion_model." + name] = value
    return out


def vae_to_original(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    n = len(config.block_out_channels)
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in sd.items():
        name = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        name = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", name)
        name = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", name)
        name = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.block.", name)
        name = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample.", name)
        name = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", name)
        if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", name):
            name = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":
                value = value.reshape(*value.shape, 1, 1)  # original attention projections are 1x1 convs
        out["first_stage_model." + name] = value
    return out


def clip_to_original(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """CLIP-L (SD 1.x, SDXL's first encoder): the transformers layout under ``<prefix>text_model.``."""
    return {prefix + "text_model." + k.removeprefix("text_model."): v for k, v in sd.items()}


def open_clip_to_original(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP (SD 2.x, SDXL's bigG): resblocks with q/k/v fused into in_proj, ln_*, c_fc/c_proj."""
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    fixed = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding",
             "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
    out = {}
    for key, value in sd.items():
        if key in fixed:
            out[prefix + fixed[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T  # a Linear's weight is the transposed projection matrix
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.*)", key):
            layer, rest = m[1], m[2]
            if m2 := re.match(r"self_attn\.q_proj\.(weight|bias)", rest):
                parts = [sd[f"encoder.layers.{layer}.self_attn.{c}_proj.{m2[1]}"] for c in "qkv"]
                out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{m2[1]}"] = torch.cat(parts)
            elif rest.startswith(("self_attn.k_proj", "self_attn.v_proj")):
                continue
            else:
                for hf, orig in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                                 ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                    rest = rest.replace(hf, orig)
                out[f"{prefix}transformer.resblocks.{layer}.{rest}"] = value
    return out
