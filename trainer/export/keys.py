"""Names of LoRA modules in the two file formats, and the adapter read out of the PEFT layers.

Kohya names are what sd-scripts writes (``networks/lora.py``: ``prefix + "." + module path`` with every
``.`` turned into ``_``): ``lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`` and
``lora_te_text_model_encoder_layers_0_self_attn_q_proj`` (``lora_te1_``/``lora_te2_`` with two text
encoders, as for SDXL, whose UNet sd-scripts names in the sgm layout: see ``KohyaNaming``). ComfyUI
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


_DOWN_ATTENTION = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.")
_UP_ATTENTION = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.")


def sgm_unet_path(path: str, layers_per_block: int) -> str:
    """A diffusers UNet attention path in the LDM/sgm layout sd-scripts' SDXL UNet uses.

    ``down_blocks.i.attentions.j`` is ``input_blocks.{1 + (L+1)i + j}.1``, ``up_blocks.i.attentions.j``
    is ``output_blocks.{(L+1)i + j}.1`` and ``mid_block.attentions.0`` is ``middle_block.1`` (L =
    layers_per_block): the inverse of diffusers' ``_maybe_map_sgm_blocks_to_diffusers``. Other layers
    keep the diffusers spelling, which ComfyUI and diffusers also accept.
    """
    step = layers_per_block + 1
    if match := _DOWN_ATTENTION.match(path):
        i, j = int(match[1]), int(match[2])
        return f"input_blocks.{1 + step * i + j}.1.{path[match.end():]}"
    if match := _UP_ATTENTION.match(path):
        i, j = int(match[1]), int(match[2])
        return f"output_blocks.{step * i + j}.1.{path[match.end():]}"
    if path.startswith("mid_block.attentions.0."):
        return "middle_block.1." + path.removeprefix("mid_block.attentions.0.")
    return path


@dataclass(frozen=True)
class KohyaNaming:
    """How sd-scripts names a model's modules: SD 1.x/2.x use the diffusers UNet layout (sd-scripts
    trains on a diffusers-style UNet), SDXL the sgm layout of sd-scripts' own SDXL UNet."""

    num_text_encoders: int
    sgm_unet: bool = False
    layers_per_block: int = 2

    @classmethod
    def for_model(cls, model: Any) -> KohyaNaming:
        per_block = model.unet.config.layers_per_block
        sgm = model.family == "sdxl" and isinstance(per_block, int)
        return cls(num_text_encoders(model), sgm, per_block if isinstance(per_block, int) else 2)

    def name(self, component: str, path: str) -> str:
        if component == "unet" and self.sgm_unet:
            path = sgm_unet_path(path, self.layers_per_block)
        return f"{kohya_prefix(component, self.num_text_encoders)}_{path.replace('.', '_')}"

    def aliases(self, component: str, path: str) -> list[str]:
        """Other spellings accepted when reading: diffusers-layout SDXL UNet names, and ``lora_te1_`` for a
        single text encoder (diffusers' ``convert_state_dict_to_kohya`` writes that)."""
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
    """PEFT LoRA layers carrying our adapter, by their path in ``module``."""
    return {
        name: layer
        for name, layer in module.named_modules()
        if hasattr(layer, "lora_A") and ADAPTER_NAME in getattr(layer, "lora_A", {})
    }


def adapted_components(model: Any) -> dict[str, Any]:
    """The components of a BaseModel that carry the adapter."""
    return {name: mod for name, mod in model.component_modules().items() if lora_layers(mod)}


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
