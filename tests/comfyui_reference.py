"""Test-only: how ComfyUI finds and decodes the keys of a LoRA/LyCORIS file for SD 1.x and SDXL.

No package on PyPI carries ComfyUI's loading code (``comfy-diffusion`` is not published there), so this
reproduces, line for line in substance, the parts that decide what a file means in ComfyUI:

- ``comfy/utils.py: unet_to_diffusers`` (with ``UNET_MAP_RESNET``, ``UNET_MAP_ATTENTIONS``,
  ``TRANSFORMER_BLOCKS``, ``UNET_MAP_BASIC``): diffusers UNet paths -> LDM paths;
- ``comfy/lora.py: model_lora_keys_unet`` / ``model_lora_keys_clip`` (``LORA_CLIP_MAP``): the LoRA names it
  accepts (``lora_unet_`` + the LDM or the diffusers path with ``_``; ``lora_te_`` / ``lora_te1_`` /
  ``lora_te2_`` + the CLIP path) and the weight each one patches;
- ``comfy/lora.py: load_lora`` with ``comfy/weight_adapter/{lora,loha,lokr}.py: load`` and its ``diff``
  patch (which keys are consumed; anything else is logged "lora key not loaded") and their
  ``calculate_weight``, and
  ``comfy/weight_adapter/base.py: weight_decompose`` for DoRA.

It is written from ComfyUI's code, not from lora-studio's (``trainer/export/keys.py`` maps the other way,
with its own tables), so a test through it checks our names and math against ComfyUI's.
"""

from __future__ import annotations

from typing import Any

import torch

UNET_MAP_ATTENTIONS = {"proj_in.weight", "proj_out.weight"}
TRANSFORMER_BLOCKS = {
    "attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight", "attn1.to_out.0.weight",
    "attn2.to_q.weight", "attn2.to_k.weight", "attn2.to_v.weight", "attn2.to_out.0.weight",
    "ff.net.0.proj.weight", "ff.net.2.weight",
}
UNET_MAP_RESNET = {
    "in_layers.2.weight": "conv1.weight",
    "emb_layers.1.weight": "time_emb_proj.weight",
    "out_layers.3.weight": "conv2.weight",
    "skip_connection.weight": "conv_shortcut.weight",
}
UNET_MAP_BASIC = {
    ("label_emb.0.0.weight", "add_embedding.linear_1.weight"),
    ("label_emb.0.2.weight", "add_embedding.linear_2.weight"),
    ("input_blocks.0.0.weight", "conv_in.weight"),
    ("out.2.weight", "conv_out.weight"),
    ("time_embed.0.weight", "time_embedding.linear_1.weight"),
    ("time_embed.2.weight", "time_embedding.linear_2.weight"),
}
LORA_CLIP_MAP = {
    "mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}


def comfy_unet_config(unet: Any) -> dict[str, Any]:
    """ComfyUI's ``unet_config`` fields that ``unet_to_diffusers`` reads, for a diffusers UNet (what
    ComfyUI's model detection derives from the same weights)."""
    config = unet.config
    levels = len(config.down_block_types)
    per_block = config.layers_per_block
    depths = config.transformer_layers_per_block
    depths = [depths] * levels if isinstance(depths, int) else list(depths)
    level_depth = [depths[x] if "CrossAttn" in config.down_block_types[x] else 0 for x in range(levels)]
    return {
        "num_res_blocks": [per_block] * levels,
        "channel_mult": [1] * levels,
        "transformer_depth": [d for d in level_depth for _ in range(per_block)],
        "transformer_depth_output": [d for d in level_depth for _ in range(per_block + 1)],
        "transformer_depth_middle": depths[-1],
    }


def unet_to_diffusers(unet_config: dict[str, Any]) -> dict[str, str]:
    """``comfy/utils.py: unet_to_diffusers``, weight keys only: diffusers key -> LDM key."""
    num_res_blocks = unet_config["num_res_blocks"]
    num_blocks = len(unet_config["channel_mult"])
    transformer_depth = unet_config["transformer_depth"][:]
    transformer_depth_output = unet_config["transformer_depth_output"][:]
    out: dict[str, str] = {}
    for x in range(num_blocks):
        n = 1 + (num_res_blocks[x] + 1) * x
        for i in range(num_res_blocks[x]):
            for b in UNET_MAP_RESNET:
                out[f"down_blocks.{x}.resnets.{i}.{UNET_MAP_RESNET[b]}"] = f"input_blocks.{n}.0.{b}"
            num_transformers = transformer_depth.pop(0)
            if num_transformers > 0:
                for b in UNET_MAP_ATTENTIONS:
                    out[f"down_blocks.{x}.attentions.{i}.{b}"] = f"input_blocks.{n}.1.{b}"
                for t in range(num_transformers):
                    for b in TRANSFORMER_BLOCKS:
                        out[f"down_blocks.{x}.attentions.{i}.transformer_blocks.{t}.{b}"] = \
                            f"input_blocks.{n}.1.transformer_blocks.{t}.{b}"
            n += 1
        out[f"down_blocks.{x}.downsamplers.0.conv.weight"] = f"input_blocks.{n}.0.op.weight"
    for b in UNET_MAP_ATTENTIONS:
        out[f"mid_block.attentions.0.{b}"] = f"middle_block.1.{b}"
    for t in range(unet_config["transformer_depth_middle"]):
        for b in TRANSFORMER_BLOCKS:
            out[f"mid_block.attentions.0.transformer_blocks.{t}.{b}"] = f"middle_block.1.transformer_blocks.{t}.{b}"
    for i, n in enumerate([0, 2]):
        for b in UNET_MAP_RESNET:
            out[f"mid_block.resnets.{i}.{UNET_MAP_RESNET[b]}"] = f"middle_block.{n}.{b}"
    num_res_blocks = list(reversed(num_res_blocks))
    for x in range(num_blocks):
        n = (num_res_blocks[x] + 1) * x
        length = num_res_blocks[x] + 1
        for i in range(length):
            c = 1
            for b in UNET_MAP_RESNET:
                out[f"up_blocks.{x}.resnets.{i}.{UNET_MAP_RESNET[b]}"] = f"output_blocks.{n}.0.{b}"
            num_transformers = transformer_depth_output.pop()
            if num_transformers > 0:
                c += 1
                for b in UNET_MAP_ATTENTIONS:
                    out[f"up_blocks.{x}.attentions.{i}.{b}"] = f"output_blocks.{n}.1.{b}"
                for t in range(num_transformers):
                    for b in TRANSFORMER_BLOCKS:
                        out[f"up_blocks.{x}.attentions.{i}.transformer_blocks.{t}.{b}"] = \
                            f"output_blocks.{n}.1.transformer_blocks.{t}.{b}"
            if i == length - 1:
                out[f"up_blocks.{x}.upsamplers.0.conv.weight"] = f"output_blocks.{n}.{c}.conv.weight"
            n += 1
    for ldm, diffusers in UNET_MAP_BASIC:
        out[diffusers] = ldm
    return out


def lora_key_map(model: Any) -> dict[str, tuple[str, str]]:
    """LoRA module name ComfyUI accepts -> (component, diffusers/transformers path of the weight patched).

    UNet: ``model_lora_keys_unet`` (every LDM weight as ``lora_unet_`` + its path, and every diffusers one
    from ``unet_to_diffusers``); text encoders: ``model_lora_keys_clip`` (``lora_te_`` for SD 1.x's one,
    ``lora_te1_``/``lora_te2_`` for SDXL's clip_l/clip_g, ``LORA_CLIP_MAP`` layers only).
    """
    to_ldm = unet_to_diffusers(comfy_unet_config(model.unet))
    key_map: dict[str, tuple[str, str]] = {}
    for diffusers, ldm in to_ldm.items():
        path = diffusers.removesuffix(".weight")
        key_map["lora_unet_" + ldm.removesuffix(".weight").replace(".", "_")] = ("unet", path)
        key_map["lora_unet_" + path.replace(".", "_")] = ("unet", path)
    encoders = [n for n in model.component_modules() if n.startswith("text_encoder")]
    for component in encoders:
        layers = model.component_modules()[component].config.num_hidden_layers
        for b in range(layers):
            for c, flat in LORA_CLIP_MAP.items():
                path = f"text_model.encoder.layers.{b}.{c}"
                if len(encoders) == 1:
                    key_map[f"lora_te_text_model_encoder_layers_{b}_{flat}"] = (component, path)
                    key_map[f"lora_te1_text_model_encoder_layers_{b}_{flat}"] = (component, path)
                else:
                    prefix = "lora_te1_" if component == "text_encoder" else "lora_te2_"
                    key_map[f"{prefix}text_model_encoder_layers_{b}_{flat}"] = (component, path)
    return key_map


def load_lora(tensors: dict[str, torch.Tensor], names: list[str]) -> tuple[dict[str, tuple], set[str]]:
    """``comfy/lora.py: load_lora`` over the weight adapters: module name -> (adapter, weights), and the
    file keys it consumed (``lora key not loaded`` is logged for every other key)."""
    patches, loaded = {}, set()
    for x in names:
        alpha = tensors[f"{x}.alpha"].item() if f"{x}.alpha" in tensors else None
        if alpha is not None:
            loaded.add(f"{x}.alpha")
        dora = tensors.get(f"{x}.dora_scale")
        if dora is not None:
            loaded.add(f"{x}.dora_scale")
        if f"{x}.lora_up.weight" in tensors:
            loaded |= {f"{x}.lora_up.weight", f"{x}.lora_down.weight"}
            patches[x] = ("lora", (tensors[f"{x}.lora_up.weight"], tensors[f"{x}.lora_down.weight"], alpha, dora))
        elif f"{x}.hada_w1_a" in tensors:
            names4 = [f"{x}.hada_w1_a", f"{x}.hada_w1_b", f"{x}.hada_w2_a", f"{x}.hada_w2_b"]
            loaded |= set(names4)
            w1a, w1b, w2a, w2b = (tensors[n] for n in names4)
            patches[x] = ("loha", (w1a, w1b, alpha, w2a, w2b, dora))
        elif f"{x}.diff" in tensors:  # load_lora's "diff" patch: the weight's whole update
            loaded.add(f"{x}.diff")
            patches[x] = ("diff", (tensors[f"{x}.diff"],))
        else:
            parts = {s: tensors.get(f"{x}.{s}") for s in ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b")}
            loaded |= {f"{x}.{s}" for s, v in parts.items() if v is not None}
            if any(parts[s] is not None for s in ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w2_a")):
                patches[x] = ("lokr", (parts, alpha, dora))
    return patches, loaded


def calculate_weight(patch: tuple, weight: torch.Tensor) -> torch.Tensor:
    """The patched weight at strength 1 (``calculate_weight`` of the adapter, fp32 intermediates)."""
    kind, v = patch
    weight = weight.float().clone()
    if kind == "diff":
        return weight + v[0].float().reshape(weight.shape)
    if kind == "lora":
        mat1, mat2, alpha, dora = v
        scale = alpha / mat2.shape[0] if alpha is not None else 1.0
        diff = torch.mm(mat1.float().flatten(start_dim=1), mat2.float().flatten(start_dim=1)).reshape(weight.shape)
    elif kind == "loha":
        w1a, w1b, alpha, w2a, w2b, dora = v
        scale = alpha / w1b.shape[0] if alpha is not None else 1.0
        diff = (torch.mm(w1a.float(), w1b.float()) * torch.mm(w2a.float(), w2b.float())).reshape(weight.shape)
    else:
        parts, alpha, dora = v
        dim = None
        w1 = parts["lokr_w1"]
        if w1 is None:
            dim = parts["lokr_w1_b"].shape[0]
            w1 = torch.mm(parts["lokr_w1_a"].float(), parts["lokr_w1_b"].float())
        w2 = parts["lokr_w2"]
        if w2 is None:
            dim = parts["lokr_w2_b"].shape[0]
            w2 = torch.mm(parts["lokr_w2_a"].float(), parts["lokr_w2_b"].float())
        w1, w2 = w1.float(), w2.float()
        if len(w2.shape) == 4:
            w1 = w1.unsqueeze(2).unsqueeze(2)
        scale = alpha / dim if alpha is not None and dim is not None else 1.0
        diff = torch.kron(w1, w2).reshape(weight.shape)
    if dora is not None:
        return weight_decompose(dora.float(), weight, diff, scale)
    return weight + scale * diff


def weight_decompose(dora_scale: torch.Tensor, weight: torch.Tensor, lora_diff: torch.Tensor, alpha: float) -> torch.Tensor:
    """``comfy/weight_adapter/base.py: weight_decompose`` at strength 1, as ComfyUI has it (2026-11): the
    output-axis branch divides by the norm of the *base* weight, not of W + ΔW (Comfy-Org/ComfyUI PR
    #15458, open, changes that); the input-axis branch uses W + ΔW."""
    weight_calc = weight + alpha * lora_diff
    if dora_scale.shape[0] == weight_calc.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True).reshape(
            weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = (weight_calc.transpose(0, 1).reshape(weight_calc.shape[1], -1).norm(dim=1, keepdim=True)
                .reshape(weight_calc.shape[1], *[1] * (weight_calc.dim() - 1)).transpose(0, 1))
    norm = norm + torch.finfo(weight.dtype).eps
    return weight_calc * (dora_scale / norm)
