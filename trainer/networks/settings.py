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
    for key, integer in (("block_dims", True), ("block_alphas", False), ("conv_block_dims", True), ("conv_block_alphas", False)):
        p.extend(block_list_problems(f"network.{key}", getattr(net, key), integer))
    for key in ("down_lr_weight", "mid_lr_weight", "up_lr_weight"):
        p.extend(lr_weight_problems(f"network.{key}", getattr(net, key)))
    p.extend(_export_problems(config))
    return p


def diffusers_blockers(net: Any) -> list[str]:
    """What in ``[network]`` a diffusers/PEFT file cannot hold in a form diffusers' ``load_lora_weights``
    loads: it reads LoRA ``lora_A``/``lora_B`` (per-layer ranks and alphas through PEFT's patterns), but
    no LoHa/LoKr, and DoRA's magnitudes only under keys PEFT itself writes."""
    what = []
    if net.type in ("loha", "lokr"):
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
