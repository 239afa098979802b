"""SDXL: loading a diffusers SDXL folder and building its two kinds of conditioning.

SDXL conditions the UNet on (a) the penultimate hidden states of both text encoders, concatenated along the
feature axis, and (b) ``added_cond_kwargs``: text_encoder_2's pooled projection plus six "micro-conditioning"
numbers per image (original size, crop top-left, target size). Both follow diffusers'
``examples/text_to_image/train_text_to_image_lora_sdxl.py`` (``encode_prompt`` and ``compute_time_ids``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from trainer.config import ModelConfig


def load_sdxl_folder(path: Path, cfg: ModelConfig, kind: str, dtype: Any = None) -> Any:
    """Load a diffusers SDXL folder (model_index.json lists ``text_encoder_2``) into a ``BaseModel``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from trainer.models.loading import assemble_base_model, in_dtype

    # Weights from .safetensors only, never an unpickled .bin (load_diffusers_model checked the folder first).
    weights = {"use_safetensors": True} | ({"variant": cfg.variant} if cfg.variant else {})
    local = {"local_files_only": True}  # ``path`` is already on disk (a hub model was downloaded before)
    tokenizers = [CLIPTokenizer.from_pretrained(path, subfolder=sub, **local) for sub in ("tokenizer", "tokenizer_2")]
    text_encoders = [
        CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **weights, **local),
        CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **weights, **local),
    ]
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **weights, **local, **in_dtype(dtype))
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **weights, **local, **in_dtype(dtype))
    # Training always adds noise the DDPM way; the folder's own scheduler (often Euler) only lends its betas.
    noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **local)
    return assemble_base_model(
        "sdxl", unet, vae, text_encoders, tokenizers, noise_scheduler, cfg, source=kind, name_or_path=cfg.base, dtype=dtype
    )


def _token_ids(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def encode_sdxl_text(model: Any, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 77, D1 + D2) penultimate hidden states of both encoders and (B, P) pooled text_encoder_2 output.

    Gradients flow when a text encoder carries a trained LoRA; call under ``torch.no_grad()`` otherwise.
    """
    hidden = []
    pooled = None
    for tokenizer, encoder in zip(model.tokenizers, model.text_encoders, strict=True):
        out = encoder(_token_ids(tokenizer, captions).to(device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])  # SDXL was trained on the penultimate layer of both
        pooled = getattr(out, "text_embeds", None)  # only CLIPTextModelWithProjection has it
    if pooled is None:
        raise ValueError("SDXL's second text encoder must be a CLIPTextModelWithProjection (it has no text_embeds)")
    return torch.cat(hidden, dim=-1), pooled


def sdxl_time_ids(original_size: Any, crop_top_left: Any, target_size: Any) -> torch.Tensor:
    """(B, 6) float micro-conditioning: original (h, w), crop (top, left), target (h, w) per image.

    Each argument is a (B, 2) tensor or a list of (a, b) pairs, in the dataset items' order (height first).
    """
    parts = [torch.as_tensor(x, dtype=torch.float32).reshape(-1, 2) for x in (original_size, crop_top_left, target_size)]
    return torch.cat(parts, dim=1)


class SdxlConditioning(NamedTuple):
    """What ``unet(noisy, t, encoder_hidden_states=..., added_cond_kwargs=...)`` needs for SDXL."""

    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor]


def encode_sdxl_prompts(
    model: Any,
    captions: list[str],
    original_sizes: Any,
    crop_top_lefts: Any,
    target_sizes: Any,
    device: torch.device,
) -> SdxlConditioning:
    """Text and micro-conditioning for one batch, ready to splat into the SDXL UNet call."""
    hidden, pooled = encode_sdxl_text(model, captions, device)
    time_ids = sdxl_time_ids(original_sizes, crop_top_lefts, target_sizes).to(device, hidden.dtype)
    return SdxlConditioning(hidden, {"text_embeds": pooled, "time_ids": time_ids})
