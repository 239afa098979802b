"""Names of LoRA modules in the two file formats, and the adapter read out of the PEFT layers.

Kohya names are what sd-scripts writes (``networks/lora.py``: ``prefix + "." + module path`` with every
``.`` turned into ``_``): ``lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`` and
``lora_te_text_model_encoder_layers_0_self_attn_q_proj`` (``lora_te1_``/``lora_te2_`` with two text
encoders, as for SDXL, whose UNet sd-scripts names in the sgm layout: see ``sgm_unet_path``). ComfyUI
(``comfy/lora.py``) and AUTOMATIC1111 look these exact names up, so they must not follow the installed
transformers: transformers 5 dropped the ``text_model.`` level from ``CLIPTextModel``; we put it back. The diffusers/PEFT format uses the same module paths with
``.`` kept, prefixed by the pipeline component (``unet.``, ``text_encoder.``).

No library maps PEFT module names to kohya names for us: diffusers' ``convert_state_dict_to_kohya``
writes ``lora_te1_`` for SD 1.x and drops alpha, so the mapping is written out here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from trainer.network import ADAPTER_NAME

# First path element of the modules that live under ``text_model`` in CLIPTextModel(WithProjection).
TEXT_MODEL_CHILDREN = ("embeddings", "encoder", "final_layer_norm")


@dataclass
class LoraModule:
    """One adapted layer: ``delta W = alpha / rank · up @ down`` (kohya's and PEFT's convention)."""

    component: str  # pipeline attribute: unet, text_encoder, text_encoder_2
    path: str  # canonical module path (text encoders with ``text_model.``), e.g. text_model.encoder.layers.0.self_attn.q_proj
    down: Any  # lora_A weight, (rank, in) or (rank, in, kh, kw)
    up: Any  # lora_B weight, (out, rank) or (out, rank, 1, 1)
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def kohya_prefix(component: str, num_text_encoders: int) -> str:
    """``lora_unet``, ``lora_te`` (one text encoder) or ``lora_te1``/``lora_te2`` (two), as sd-scripts names them."""
    if component == "unet":
        return "lora_unet"
    if not component.startswith("text_encoder"):
        raise ValueError(f"no kohya prefix for component {component!r}")
    index = 1 if component == "text_encoder" else int(component.rsplit("_", 1)[1])
    return "lora_te" if num_text_encoders == 1 else f"lora_te{index}"


# sd-scripts' SDXL UNet (library/sdxl_original_unet.py) keeps the original LDM module paths. These are
# the diffusers -> LDM renames of its library/sdxl_model_util.py ``make_unet_conversion_map`` (ComfyUI's
# comfy/utils.py ``UNET_MAP_BASIC`` / ``UNET_MAP_RESNET`` hold the same), for the layers LoRA can wrap.
_SGM_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_out": "out.2",
}
_SGM_RESNET = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_BLOCK_CHILD = re.compile(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$")
_SAMPLER = re.compile(r"^(down|up)_blocks\.(\d+)\.(?:downsamplers|upsamplers)\.0\.conv$")
_MID_CHILD = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def sgm_unet_path(path: str, layers_per_block: int, plain_up_blocks: tuple[int, ...] = ()) -> str | None:
    """A diffusers UNet layer path in the LDM/sgm layout of sd-scripts' SDXL UNet; None if it has none.

    With L = layers_per_block: ``down_blocks.i.resnets.j`` / ``.attentions.j`` are ``input_blocks.{1 +
    (L+1)i + j}.0`` / ``.1``, ``down_blocks.i.downsamplers.0.conv`` is ``input_blocks.{(L+1)(i+1)}.0.op``;
    ``up_blocks.i.resnets.j`` / ``.attentions.j`` are ``output_blocks.{(L+1)i + j}.0`` / ``.1`` and the
    upsampler follows the block's last layer: ``output_blocks.{(L+1)i + L}.2.conv``, or ``.1.conv`` in an
    up block without attention (``plain_up_blocks``; SDXL has none with an upsampler). ``mid_block`` is
    ``middle_block.0`` (resnet), ``.1`` (attention), ``.2`` (resnet). Inside a resnet ``conv1``, ``conv2``,
    ``time_emb_proj``, ``conv_shortcut`` are ``in_layers.2``, ``out_layers.3``, ``emb_layers.1``,
    ``skip_connection``; see ``_SGM_TOP_LEVEL`` for the layers outside the blocks. ComfyUI looks up
    exactly these LDM paths; diffusers maps them back in ``_maybe_map_sgm_blocks_to_diffusers`` and
    ``_convert_unet_lora_key`` and drops every sgm key of a file that also holds diffusers-layout keys,
    so a file must never mix the two.
    """
    step = layers_per_block + 1
    if path in _SGM_TOP_LEVEL:
        return _SGM_TOP_LEVEL[path]
    if match := _BLOCK_CHILD.match(path):
        side, i, kind, j, rest = match[1], int(match[2]), match[3], int(match[4]), match[5]
        block = f"input_blocks.{1 + step * i + j}" if side == "down" else f"output_blocks.{step * i + j}"
        return f"{block}.1.{rest}" if kind == "attentions" else _resnet_layer(f"{block}.0", rest)
    if match := _SAMPLER.match(path):
        i = int(match[2])
        if match[1] == "down":
            return f"input_blocks.{step * (i + 1)}.0.op"
        return f"output_blocks.{step * i + layers_per_block}.{1 if i in plain_up_blocks else 2}.conv"
    if match := _MID_CHILD.match(path):
        kind, j, rest = match[1], int(match[2]), match[3]
        return f"middle_block.1.{rest}" if kind == "attentions" else _resnet_layer(f"middle_block.{2 * j}", rest)
    return None


def _resnet_layer(resnet: str, layer: str) -> str | None:
    return f"{resnet}.{_SGM_RESNET[layer]}" if layer in _SGM_RESNET else None


@dataclass(frozen=True)
class KohyaNaming:
    """How sd-scripts names a model's modules: SD 1.x/2.x use the diffusers UNet layout (sd-scripts
    trains on a diffusers-style UNet), SDXL the sgm layout of sd-scripts' own SDXL UNet, for every UNet
    layer (one layout per file: see ``sgm_unet_path``)."""

    num_text_encoders: int
    sgm_unet: bool = False
    layers_per_block: int = 2
    plain_up_blocks: tuple[int, ...] = ()  # up blocks without attention (upsampler at slot 1, not 2)

    @classmethod
    def for_model(cls, model: Any) -> KohyaNaming:
        per_block = model.unet.config.layers_per_block
        sgm = model.family == "sdxl" and isinstance(per_block, int)
        plain = tuple(i for i, block in enumerate(model.unet.up_blocks) if not getattr(block, "attentions", None))
        return cls(num_text_encoders(model), sgm, per_block if isinstance(per_block, int) else 2, plain)

    def name(self, component: str, path: str) -> str:
        """The name written to a file; ValueError for a UNet layer the sgm layout has no name for."""
        if component == "unet" and self.sgm_unet:
            sgm = sgm_unet_path(path, self.layers_per_block, self.plain_up_blocks)
            if sgm is None:
                raise ValueError(f"UNet layer {path!r} has no name in sd-scripts' SDXL (sgm) layout")
            path = sgm
        return f"{kohya_prefix(component, self.num_text_encoders)}_{path.replace('.', '_')}"

    def spellings(self, component: str, path: str) -> list[str]:
        """Every name read as this layer: the written one (if it has one), then the ``aliases``."""
        unnamed = component == "unet" and self.sgm_unet
        if unnamed and sgm_unet_path(path, self.layers_per_block, self.plain_up_blocks) is None:
            return self.aliases(component, path)
        return [self.name(component, path), *self.aliases(component, path)]

    def aliases(self, component: str, path: str) -> list[str]:
        """Other spellings accepted when reading: diffusers-layout SDXL UNet names (files that mixed the two
        layouts), and ``lora_te1_`` for a single text encoder (diffusers' ``convert_state_dict_to_kohya``
        writes that)."""
        out = []
        if component == "unet" and self.sgm_unet:
            out.append(f"lora_unet_{path.replace('.', '_')}")
        if component == "text_encoder" and self.num_text_encoders == 1:
            out.append(f"lora_te1_{path.replace('.', '_')}")
        return out


def canonical_path(component: str, module: Any, name: str) -> str:
    """The module path as transformers 4 (and so every LoRA tool) spells it."""
    flat = component.startswith("text_encoder") and not hasattr(module, "text_model")
    if flat and name.split(".", 1)[0] in TEXT_MODEL_CHILDREN:
        return f"text_model.{name}"
    return name


def module_path(component: str, module: Any, path: str) -> str:
    """Inverse of ``canonical_path`` for the installed transformers: where the layer lives in ``module``."""
    if component.startswith("text_encoder") and not hasattr(module, "text_model"):
        return path.removeprefix("text_model.")
    return path


def lora_layers(module: Any) -> dict[str, Any]:
    """PEFT LoRA layers carrying our adapter, by their path in ``module`` (plain LoRA, whose ``lora_A`` is a
    layer: AdaLoRA's SVD-shaped layers hold bare parameters there and are written through their kind)."""
    import torch

    return {
        name: layer
        for name, layer in module.named_modules()
        if ADAPTER_NAME in getattr(layer, "lora_A", {}) and isinstance(layer.lora_A[ADAPTER_NAME], torch.nn.Module)
    }


def adapted_components(model: Any) -> dict[str, Any]:
    """The components of a BaseModel that carry the adapter (of any kind)."""
    from trainer.network import adapter_layers

    return {name: mod for name, mod in model.component_modules().items() if adapter_layers(mod)}


@dataclass
class AdaptedLayer:
    """One trained layer of any kind, as it goes into a kohya/LyCORIS file: tensors by key suffix and alpha."""

    component: str
    path: str  # canonical module path, as in ``LoraModule``
    kind: str  # lora | loha | lokr
    parts: dict[str, Any]
    alpha: float
    layer: Any  # the PEFT layer itself


def adapted_layers(model: Any) -> list[AdaptedLayer]:
    """Every adapted layer of the model with the file tensors its kind writes (``networks.*.file_parts``)."""
    from trainer.network import adapter_layers
    from trainer.networks import kind_of_layer

    out = []
    for component, module in adapted_components(model).items():
        for name, layer in adapter_layers(module).items():
            kind = kind_of_layer(layer)
            parts, alpha = kind.file_parts(layer, ADAPTER_NAME)
            if not parts:  # ΔW = 0 (an AdaLoRA layer whose whole budget went elsewhere): no keys
                continue
            out.append(AdaptedLayer(component, canonical_path(component, module, name), kind.name, parts, alpha, layer))
    return out


def num_text_encoders(model: Any) -> int:
    return sum(1 for name in model.component_modules() if name.startswith("text_encoder"))


def adapter_modules(model: Any) -> list[LoraModule]:
    """Every adapted layer of the model with its weights (detached, as stored) and effective alpha.

    Alpha is read back as ``scaling · rank`` so the file reproduces whatever scale PEFT applies.
    """
    out = []
    for component, module in adapted_components(model).items():
        for name, layer in lora_layers(module).items():
            rank = layer.r[ADAPTER_NAME]
            out.append(
                LoraModule(
                    component=component,
                    path=canonical_path(component, module, name),
                    down=layer.lora_A[ADAPTER_NAME].weight.detach(),
                    up=layer.lora_B[ADAPTER_NAME].weight.detach(),
                    alpha=float(layer.scaling[ADAPTER_NAME]) * rank,
                )
            )
    return out
