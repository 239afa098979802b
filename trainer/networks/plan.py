"""Which layers get an adapter, with which rank, alpha and learning-rate weight.

UNet targets are the preset's diffusers module names (matched by suffix, as PEFT does). With
convolutions (``network.type = "locon"``, or ``network.conv_rank`` > 0 for loha/lokr) every Linear and
Conv2d inside the UNet's ResNet blocks and down/upsamplers is added, as sd-scripts' ``conv_dim`` does
(``networks/lora.py``: targets ``ResnetBlock2D``, ``Downsample2D``, ``Upsample2D``): k×k convolutions
(``conv1``, ``conv2``, the samplers' ``conv``) take ``network.conv_rank`` / ``conv_alpha``; Linear and 1×1
layers there (``time_emb_proj``, ``conv_shortcut``) take ``network.rank`` / ``alpha``, sd-scripts' rule.

Block-wise settings (``blocks.py``) then replace rank/alpha per UNet block; a rank of 0 (or a
learning-rate weight of 0) leaves the block without an adapter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.config import NetworkConfig
from trainer.errors import UserFacingError
from trainer.networks import CONV_BY_DEFAULT
from trainer.networks.base import LayerPlan
from trainer.networks.blocks import BlockLayout, layout_problem, parse_floats, parse_ints, parse_lr_weight

_CONV_CONTAINER = re.compile(r"(^|\.)(resnets\.\d+|downsamplers\.\d+|upsamplers\.\d+)\.[^.]+$")


@dataclass
class ComponentPlan:
    """The planned layers of one component, by module name (as ``named_modules`` spells it)."""

    targets: list[str]
    layers: dict[str, LayerPlan] = field(default_factory=dict)


def uses_conv(cfg: NetworkConfig) -> bool:
    return cfg.type in CONV_BY_DEFAULT or cfg.conv_rank > 0


def conv_rank_alpha(cfg: NetworkConfig) -> tuple[int, float]:
    """``conv_rank`` / ``conv_alpha``, each 0 meaning ``rank`` / ``alpha``."""
    return (cfg.conv_rank or cfg.rank), (cfg.conv_alpha or cfg.alpha)


def block_layout(model: Any) -> BlockLayout:
    config = model.unet.config
    per_block = config.layers_per_block if isinstance(config.layers_per_block, int) else 2
    return BlockLayout(sdxl=model.family == "sdxl", in_blocks=len(config.down_block_types) * (per_block + 1))


def plan_unet(model: Any, cfg: NetworkConfig, targets: list[str]) -> ComponentPlan:
    """Every UNet layer that gets an adapter; raises UserFacingError for a block list of the wrong length."""
    from trainer.export.keys import KohyaNaming, sgm_unet_path

    layout = block_layout(model)
    settings = _block_settings(cfg, layout)
    naming = KohyaNaming.for_model(model)
    conv = uses_conv(cfg)
    conv_rank, conv_alpha = conv_rank_alpha(cfg)
    plan = ComponentPlan(targets=targets)
    for name, layer in model.unet.named_modules():
        is_conv = isinstance(layer, torch.nn.Conv2d)
        if not isinstance(layer, torch.nn.Linear) and not is_conv:
            continue
        targeted = any(name == t or name.endswith("." + t) for t in targets)
        in_conv_block = conv and _CONV_CONTAINER.search(name) is not None
        if not targeted and not in_conv_block:
            continue
        kxk = is_conv and tuple(layer.kernel_size) != (1, 1)
        rank, alpha = (conv_rank, conv_alpha) if kxk else (cfg.rank, cfg.alpha)
        index = layout.index(sgm_unet_path(name, naming.layers_per_block, naming.plain_up_blocks))
        weight = 1.0
        if index is not None:
            rank, alpha, weight = settings.apply(index, kxk, rank, alpha)
        if rank > 0:
            plan.layers[name] = LayerPlan(rank=rank, alpha=alpha, lr_weight=weight, conv=kxk, shape=tuple(layer.weight.shape))
    return plan


def plan_text_encoder(module: torch.nn.Module, cfg: NetworkConfig, targets: list[str]) -> ComponentPlan:
    plan = ComponentPlan(targets=targets)
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            plan.layers[name] = LayerPlan(rank=cfg.rank, alpha=cfg.alpha, shape=tuple(layer.weight.shape))
    return plan


@dataclass
class _BlockSettings:
    dims: list[int] | None
    alphas: list[float] | None
    conv_dims: list[int] | None
    conv_alphas: list[float] | None
    lr_weights: list[float] | None

    def apply(self, index: int, kxk: bool, rank: int, alpha: float) -> tuple[int, float, float]:
        dims, alphas = (self.conv_dims, self.conv_alphas) if kxk else (self.dims, self.alphas)
        if dims is not None:
            rank = dims[index]
        if alphas is not None:
            alpha = alphas[index]
        weight = self.lr_weights[index] if self.lr_weights is not None else 1.0
        return (0 if weight == 0 else rank), alpha, weight


def _block_settings(cfg: NetworkConfig, layout: BlockLayout) -> _BlockSettings:
    values = {
        "network.block_dims": parse_ints(cfg.block_dims),
        "network.block_alphas": parse_floats(cfg.block_alphas),
        "network.conv_block_dims": parse_ints(cfg.conv_block_dims),
        "network.conv_block_alphas": parse_floats(cfg.conv_block_alphas),
    }
    mids = 3 if layout.sdxl else 1
    down = parse_lr_weight(cfg.down_lr_weight, layout.in_blocks)
    mid = parse_lr_weight(cfg.mid_lr_weight, mids)
    up = parse_lr_weight(cfg.up_lr_weight, layout.in_blocks)
    problems = [p for key, v in values.items() if (p := layout_problem(key, v, layout))]
    for key, got, want in (("network.down_lr_weight", down, layout.in_blocks), ("network.mid_lr_weight", mid, mids),
                           ("network.up_lr_weight", up, layout.in_blocks)):
        if got is not None and len(got) > want:
            problems.append(f"`{key}` has {len(got)} values but this UNet has {want} such blocks")
    if problems:
        raise UserFacingError("; ".join(problems))
    return _BlockSettings(*values.values(), layout.lr_weights(down, mid, up))
