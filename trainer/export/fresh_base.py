"""Fresh copies of a model's base components: the same classes and configs, sharing the frozen base tensors,
without any adapter layer; and a diffusers pipeline around them.

What the export check loads a file into (the path diffusers users take) and what the merge tool and its
check compare against.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch

from trainer.networks import is_adapter_tensor


def base_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A new module of the same class and config, sharing ``module``'s frozen base tensors, without LoRA.

    Built on the meta device (no allocation) and then pointed at the original tensors, so checking a
    full-size SD model costs no second copy of its weights. Nothing here writes to base weights:
    load_lora_weights adds LoRA layers beside them.
    """
    from accelerate import init_empty_weights
    from diffusers import ModelMixin

    with init_empty_weights(include_buffers=True):
        if isinstance(module, ModelMixin):
            fresh = type(module).from_config(module.config)
        else:
            fresh = type(module)(copy.deepcopy(module.config))
    tensors = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    for name, tensor in tensors:
        parts = name.split(".")
        if is_adapter_tensor(name):
            continue
        assign_tensor(fresh, ".".join(p for p in parts if p != "base_layer"), tensor.detach())
    left = [n for n, t in [*fresh.named_parameters(), *fresh.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{type(module).__name__}: could not copy base tensors {left[:3]}")
    return fresh.eval().requires_grad_(False)


def assign_tensor(root: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    if attr in owner._parameters:
        owner._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
    elif attr in owner._buffers:
        owner._buffers[attr] = tensor
    else:
        raise RuntimeError(f"{type(root).__name__} has no tensor {name!r}")


def fresh_pipeline(model: Any, fresh: dict[str, torch.nn.Module]) -> Any:
    with warnings.catch_warnings():
        # Pipelines warn (and patch a copy) about outdated scheduler configs; sampling is not checked here.
        warnings.simplefilter("ignore", FutureWarning)
        return pipeline_from(model, fresh, copy.deepcopy(model.noise_scheduler))


def pipeline_from(model: Any, fresh: dict[str, torch.nn.Module], scheduler: Any) -> Any:
    if model.family == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=fresh["text_encoder"], text_encoder_2=fresh["text_encoder_2"],
            tokenizer=model.tokenizers[0], tokenizer_2=model.tokenizers[1], unet=fresh["unet"], scheduler=scheduler,
        )
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=model.vae, text_encoder=fresh["text_encoder"], tokenizer=model.tokenizer, unet=fresh["unet"],
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
