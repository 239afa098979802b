"""Optimizer and learning-rate schedule from the ``[optimizer]`` section.

Optional optimizers come from their authors' packages: Lion (``lion-pytorch``, Chen et al. 2023), Adafactor
(``transformers.optimization``, Shazeer & Stern 2018; sd-scripts' recipe ``relative_step=False,
scale_parameter=False`` unless relative steps are asked for), schedule-free AdamW (``schedulefree``, Defazio et
al. 2024) and Prodigy (``prodigyopt``, Mishchenko & Defazio 2023).
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.config import OptimizerConfig
from trainer.errors import UserFacingError
from trainer.optim_settings import optimizer_warnings, warmup_steps

__all__ = ["build_lr_scheduler", "build_optimizer", "optimizer_warnings", "warmup_steps"]


def build_optimizer(
    cfg: OptimizerConfig, unet_params: list, text_encoder_params: list, device: torch.device, total_steps: int = 0,
    unet_lr_weights: list[float] | None = None,
) -> torch.optim.Optimizer:
    """One optimizer with a parameter group per component so each keeps its own learning rate, and per UNet
    block learning-rate weight (``unet_lr_weights``, one per UNet parameter: ``network.*_lr_weight``)."""
    groups: list[dict[str, Any]] = unet_param_groups(unet_params, cfg.learning_rate, unet_lr_weights)
    if text_encoder_params:
        groups.append({"params": text_encoder_params, "lr": cfg.text_encoder_lr})
    betas = (cfg.beta1, cfg.beta2)
    if cfg.name == "adamw":
        # Fused AdamW updates every parameter in one kernel (CUDA, and the CPU since torch 2.4) instead of a
        # Python loop over tensors: a LoRA has hundreds of small tensors, so at batch 1 the loop is a visible cost.
        fused = cfg.fused and device.type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, betas=betas, eps=cfg.epsilon, weight_decay=cfg.weight_decay, fused=fused or None)
    if cfg.name == "adamw8bit":
        return _adamw_8bit(groups, cfg, device)
    if cfg.name == "prodigy":
        Prodigy = _import("prodigy", "prodigyopt", "Prodigy", "prodigyopt")
        return Prodigy(
            groups, betas=betas, eps=cfg.epsilon, weight_decay=cfg.weight_decay, d_coef=cfg.prodigy_d_coef,
            safeguard_warmup=cfg.prodigy_safeguard_warmup, use_bias_correction=cfg.prodigy_bias_correction,
        )
    if cfg.name == "lion":
        Lion = _import("lion", "lion_pytorch", "Lion", "lion-pytorch")
        return Lion(groups, betas=betas, weight_decay=cfg.weight_decay)
    if cfg.name == "adafactor":
        Adafactor = _import("adafactor", "transformers.optimization", "Adafactor", "transformers")
        if cfg.adafactor_relative_step:
            groups = [{**g, "lr": None} for g in groups]  # Adafactor refuses a fixed lr with relative steps
        return Adafactor(
            groups, lr=None, relative_step=cfg.adafactor_relative_step, scale_parameter=cfg.adafactor_relative_step,
            warmup_init=False, weight_decay=cfg.weight_decay,
        )
    if cfg.name == "adamw_schedulefree":
        AdamWScheduleFree = _import("adamw_schedulefree", "schedulefree", "AdamWScheduleFree", "schedulefree")
        optimizer = AdamWScheduleFree(
            groups, betas=betas, eps=cfg.epsilon, weight_decay=cfg.weight_decay,
            warmup_steps=warmup_steps(cfg, total_steps),
        )
        optimizer.train()  # schedule-free optimizers step only in train mode (see trainer.ema.inference_weights)
        return optimizer
    raise UserFacingError(f"`optimizer.name` {cfg.name!r} is not supported")


def _import(name: str, module: str, attr: str, package: str) -> Any:
    import importlib

    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError:
        raise UserFacingError(
            f"`optimizer.name = \"{name}\"` needs the {package} package: pip install {package} "
            "(or pip install 'lora-studio[optimizers]')"
        ) from None



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
    """diffusers' schedule factory; stepped once per optimizer step (not per process, not per micro-batch).

    Schedule-free AdamW warms up inside the optimizer, so its schedule is a plain constant one; Adafactor with
    relative steps gets transformers' ``AdafactorSchedule``, which only reports the step size Adafactor chose.
    """
    from diffusers.optimization import get_scheduler

    if cfg.name == "adafactor" and cfg.adafactor_relative_step:
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer)
    return get_scheduler(
        cfg.scheduler,
        optimizer,
        num_warmup_steps=0 if cfg.name == "adamw_schedulefree" else warmup_steps(cfg, total_steps),
        num_training_steps=total_steps,
        num_cycles=cfg.num_cycles,
        power=cfg.power,
    )


def unet_param_groups(params: list, lr: float, weights: list[float] | None) -> list[dict[str, Any]]:
    """The UNet's parameters in one group per learning-rate weight (sd-scripts' block-wise learning rates
    become parameter groups with lr × weight; the schedule then scales every group alike)."""
    if not weights or all(w == 1.0 for w in weights):
        return [{"params": params, "lr": lr}]
    by_weight: dict[float, list] = {}
    for param, weight in zip(params, weights, strict=True):
        by_weight.setdefault(weight, []).append(param)
    return [{"params": ps, "lr": lr * w} for w, ps in sorted(by_weight.items(), reverse=True)]
