"""Optimizer and learning-rate schedule from the ``[optimizer]`` section."""

from __future__ import annotations

from typing import Any

import torch

from trainer.config import OptimizerConfig
from trainer.errors import UserFacingError


def build_optimizer(cfg: OptimizerConfig, unet_params: list, text_encoder_params: list, device: torch.device) -> torch.optim.Optimizer:
    """One optimizer with a parameter group per component so each keeps its own learning rate."""
    groups: list[dict[str, Any]] = [{"params": unet_params, "lr": cfg.learning_rate}]
    if text_encoder_params:
        groups.append({"params": text_encoder_params, "lr": cfg.text_encoder_lr})
    betas = (cfg.beta1, cfg.beta2)
    if cfg.name == "adamw":
        # Fused AdamW runs one kernel for all parameters; it exists for CUDA tensors only.
        fused = device.type == "cuda"
        return torch.optim.AdamW(groups, betas=betas, eps=cfg.epsilon, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.name == "adamw8bit":
        return _adamw_8bit(groups, cfg, device)
    if cfg.name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise UserFacingError("`optimizer.name = \"prodigy\"` needs the prodigyopt package: pip install prodigyopt") from None
        return Prodigy(groups, betas=betas, eps=cfg.epsilon, weight_decay=cfg.weight_decay)
    raise UserFacingError(f"`optimizer.name` {cfg.name!r} is not supported")


def _adamw_8bit(groups: list[dict[str, Any]], cfg: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    if device.type != "cuda":
        raise UserFacingError(
            "`optimizer.name = \"adamw8bit\"` needs a CUDA GPU (bitsandbytes' 8-bit optimizers run on CUDA); "
            "on this machine use `optimizer.name = \"adamw\"`"
        )
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserFacingError(
            "`optimizer.name = \"adamw8bit\"` needs bitsandbytes: pip install 'lora-studio[cuda]'"
        ) from None
    return bnb.optim.AdamW8bit(groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.epsilon, weight_decay=cfg.weight_decay)


def build_lr_scheduler(cfg: OptimizerConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """diffusers' schedule factory; stepped once per optimizer step (not per process, not per micro-batch)."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        cfg.scheduler,
        optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=total_steps,
        num_cycles=cfg.num_cycles,
        power=cfg.power,
    )
