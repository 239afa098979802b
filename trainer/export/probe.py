"""A fixed probe input for a model's UNet and text encoders, and their outputs on it: how the export check
and the quantization check compare two versions of the same components."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

PROBE_PROMPT = "a photo of sks"




@dataclass
class Probe:
    sample: torch.Tensor  # (1, C, s, s) latents
    timestep: torch.Tensor
    hidden: torch.Tensor  # (1, 8, cross_attention_dim)
    added: dict[str, torch.Tensor] | None  # SDXL's text_embeds / time_ids
    token_ids: dict[str, torch.Tensor]  # per text encoder


def probe_inputs(model: Any) -> Probe:
    gen = torch.Generator("cpu").manual_seed(0)
    cfg = model.unet.config
    device, dtype = model.unet.device, model.unet.dtype
    size = 2 * 2 ** (len(cfg.down_block_types) - 1)  # smallest latent every down block can halve
    cross = cfg.cross_attention_dim if isinstance(cfg.cross_attention_dim, int) else cfg.cross_attention_dim[0]
    added = None
    if cfg.addition_embed_type == "text_time":
        text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        pixels = size * model.vae_scale_factor
        added = {
            "text_embeds": torch.randn(1, text_dim, generator=gen).to(device, dtype),
            "time_ids": torch.tensor([[pixels, pixels, 0, 0, pixels, pixels]], device=device, dtype=dtype),
        }
    token_ids = {}
    for i, name in enumerate(n for n in model.component_modules() if n.startswith("text_encoder")):
        tok = model.tokenizers[i]
        # Unpadded: every token passes through the adapted attention and MLP layers anyway.
        token_ids[name] = tok(PROBE_PROMPT, return_tensors="pt").input_ids.to(device)
    return Probe(
        sample=torch.randn(1, cfg.in_channels, size, size, generator=gen).to(device, dtype),
        timestep=torch.tensor([500], device=device),
        hidden=torch.randn(1, 8, cross, generator=gen).to(device, dtype),
        added=added,
        token_ids=token_ids,
    )


@torch.no_grad()
def probe_outputs(components: dict[str, Any], probe: Probe) -> dict[str, torch.Tensor]:
    kwargs = {"added_cond_kwargs": probe.added} if probe.added else {}
    out = {"unet": components["unet"](probe.sample, probe.timestep, encoder_hidden_states=probe.hidden, **kwargs).sample}
    for name, ids in probe.token_ids.items():
        out[name] = components[name](ids).last_hidden_state
    return {k: v.float().cpu() for k, v in out.items()}


@contextlib.contextmanager
def eval_mode(modules: list[torch.nn.Module]) -> Iterator[None]:
    """Switch off LoRA dropout for the probe and restore every submodule's mode afterwards."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in modes:
            m.train(training)
