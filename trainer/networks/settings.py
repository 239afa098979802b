"""The ``[network]`` rules that span several settings, checked by ``config.validate`` (no torch).

Lengths of the block lists depend on the UNet and are checked when the network is planned
(``plan.py``); here every combination that no model can satisfy is refused with the field named.
"""

from __future__ import annotations

from typing import Any

from trainer.networks.blocks import block_list_problems, lr_weight_problems

LORA_ONLY = ("lora", "locon")


def network_problems(config: Any) -> list[str]:
    net = config.network
    p: list[str] = []
    if net.use_dora and net.type not in LORA_ONLY:
        p.append(f"`network.use_dora` works with `network.type` \"lora\" or \"locon\" (PEFT has DoRA for LoRA only), got {net.type!r}")
    if net.rslora and net.type not in LORA_ONLY:
        p.append(f"`network.rslora` works with `network.type` \"lora\" or \"locon\", got {net.type!r}")
    if net.conv_rank < 0:
        p.append(f"`network.conv_rank` must be 0 or a positive integer, got {net.conv_rank}")
    if net.conv_alpha < 0:
        p.append(f"`network.conv_alpha` must be 0 (same as `network.alpha`) or positive, got {net.conv_alpha}")
    if net.type == "lora" and (net.conv_rank > 0 or net.conv_block_dims.strip()):
        p.append("`network.conv_rank` / `network.conv_block_dims` adapt convolutions: set `network.type = \"locon\"` "
                 "(or \"loha\"/\"lokr\"), or leave them empty for plain LoRA")
    if net.lokr_factor == 0 or net.lokr_factor < -1:
        p.append(f"`network.lokr_factor` must be -1 (split evenly) or a positive integer, got {net.lokr_factor}")
    if net.type in ("loha", "lokr") and net.dropout > 0:
        p.append(f"`network.dropout` applies to lora/locon; PEFT's {net.type} has no dropout on its path: set it to 0")
    p.extend(_variant_problems(config))
    for key, integer in (("block_dims", True), ("block_alphas", False), ("conv_block_dims", True), ("conv_block_alphas", False)):
        p.extend(block_list_problems(f"network.{key}", getattr(net, key), integer))
    for key in ("down_lr_weight", "mid_lr_weight", "up_lr_weight"):
        p.extend(lr_weight_problems(f"network.{key}", getattr(net, key)))
    p.extend(_export_problems(config))
    return p


def _importance_problems(net: Any) -> list[str]:
    if net.rank_allocation != "importance":
        return []
    p = []
    if net.type not in LORA_ONLY:
        p.append(f"`network.rank_allocation = \"importance\"` works with `network.type` \"lora\" or \"locon\", got {net.type!r}")
    if net.block_dims.strip() or net.conv_block_dims.strip():
        p.append("`network.rank_allocation = \"importance\"` chooses every layer's rank itself: leave `network.block_dims` "
                 "and `network.conv_block_dims` empty")
    if net.importance_probe_steps < 1:
        p.append(f"`network.importance_probe_steps` must be at least 1, got {net.importance_probe_steps}")
    if net.importance_max_rank and net.importance_max_rank < net.rank:
        p.append(f"`network.importance_max_rank` must be 0 (4 × rank) or at least `network.rank` ({net.rank}), "
                 f"got {net.importance_max_rank}")
    return p


def _variant_problems(config: Any) -> list[str]:
    """AdaLoRA and VeRA: their own settings, and what they do not combine with."""
    net = config.network
    p = _importance_problems(net)
    if net.type not in ("adalora", "vera"):
        return p
    for key in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas"):
        if getattr(net, key).strip():
            why = "moves the rank between layers itself" if net.type == "adalora" else "has one shared rank"
            p.append(f"`network.{key}` does not apply to `network.type = \"{net.type}\"` (it {why}); leave it empty")
    if net.init_from:
        p.append(f"`network.init_from` cannot start a `{net.type}` run (its files are plain LoRA); leave it empty "
                 "or use `network.type = \"lora\"`")
    if net.type == "vera":
        return p
    if config.training.ema_decay:
        p.append("`training.ema_decay` does not combine with `network.type = \"adalora\"` (the EMA would average "
                 "away the rank masks); set it to 0")
    if net.adalora_init_rank and net.adalora_init_rank < net.rank:
        p.append(f"`network.adalora_init_rank` must be 0 (1.5 × rank) or at least `network.rank` ({net.rank}), "
                 f"got {net.adalora_init_rank}: AdaLoRA only takes rank away")
    if net.adalora_init_rank < 0:
        p.append(f"`network.adalora_init_rank` must be 0 or positive, got {net.adalora_init_rank}")
    for key in ("adalora_tinit", "adalora_tfinal"):
        if getattr(net, key) < 0:
            p.append(f"`network.{key}` must be 0 or a positive number of steps, got {getattr(net, key)}")
    if net.adalora_delta_t < 1:
        p.append(f"`network.adalora_delta_t` must be at least 1, got {net.adalora_delta_t}")
    for key in ("adalora_beta1", "adalora_beta2"):
        if not 0 < getattr(net, key) < 1:
            p.append(f"`network.{key}` must be between 0 and 1 (exclusive), got {getattr(net, key)}")
    if net.adalora_orth_reg_weight < 0:
        p.append(f"`network.adalora_orth_reg_weight` must be 0 or positive, got {net.adalora_orth_reg_weight}")
    steps = config.training.max_steps
    if steps and net.adalora_tinit + net.adalora_tfinal >= steps:
        p.append(schedule_problem(net, steps))
    return p


def schedule_problem(net: Any, total_steps: int) -> str:
    """PEFT's AdaLoraConfig needs a budget phase: tinit < total_steps - tfinal."""
    return (f"`network.adalora_tinit` ({net.adalora_tinit}) + `network.adalora_tfinal` ({net.adalora_tfinal}) must "
            f"be below the run's {total_steps} steps, leaving steps where the rank budget shrinks; lower them or "
            "train longer")


def diffusers_blockers(net: Any) -> list[str]:
    """What in ``[network]`` a diffusers/PEFT file cannot hold in a form diffusers' ``load_lora_weights``
    loads: it reads LoRA ``lora_A``/``lora_B`` (per-layer ranks and alphas through PEFT's patterns), but
    no LoHa/LoKr, and DoRA's magnitudes only under keys PEFT itself writes."""
    what = []
    if net.type in ("loha", "lokr", "adalora", "vera"):
        what.append(f"`network.type = \"{net.type}\"`")
    if net.use_dora:
        what.append("`network.use_dora`")
    return what


def _export_problems(config: Any) -> list[str]:
    """``export.format = "diffusers"`` alone for such a network would be a file nobody can load: refused."""
    what = diffusers_blockers(config.network)
    if config.export.format != "diffusers" or not what:
        return []
    return [
        f"`export.format = \"diffusers\"`: the diffusers/PEFT file cannot hold {' or '.join(what)} in a form "
        "diffusers loads; use `export.format = \"kohya\"` (the kohya/LyCORIS file ComfyUI and AUTOMATIC1111 read)"
    ]


def export_warnings(config: Any) -> list[str]:
    """Said before training: with ``export.format = "both"`` such a network gets the kohya/LyCORIS file only;
    a DoRA file is read exactly by LyCORIS and lora-studio only (see README, Adapter types)."""
    out = []
    what = diffusers_blockers(config.network)
    if config.export.format == "both" and what:
        out.append(
            f"`export.format = \"both\"`: only the kohya/LyCORIS file is written; diffusers cannot load "
            f"{' or '.join(what)} from a diffusers/PEFT file (ComfyUI and AUTOMATIC1111 read the kohya/LyCORIS one)"
        )
    if config.network.use_dora and config.export.dora_layout == "magnitude":
        out.append(
            "`network.use_dora`: the file holds PEFT's per-output-channel magnitudes (LyCORIS `wd_on_output`); "
            "ComfyUI (2026-11) divides them by the base weight's norm instead of the adapted one's, an error of "
            "the order of the update itself, and AUTOMATIC1111 reads only per-input-channel DoRA, so both "
            "misapply the file; lora-studio's sample and Try it apply it as trained. `export.dora_layout = \"full\"` "
            "writes each layer's whole ΔW instead, which both apply exactly"
        )
    return out
