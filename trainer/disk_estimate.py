"""How much disk a run will write into its run folder, from the config and the model's configs alone.

What ``train.py`` writes (see its ``make_checkpoint`` / ``finish`` and ``checkpoint.save_checkpoint``):
- each checkpoint: the LoRA weights in fp32 (``lora_state.safetensors``), the optimizer state
  (``training_state.pt``: AdamW keeps two fp32 moments per weight, 8-bit AdamW two bytes, Prodigy four
  fp32 tensors) and the adapter file(s) in ``export.dtype``; ``checkpoint.keep_last`` are kept, and a new
  one is complete before the oldest goes, so one more exists for a moment;
- the final adapter file(s), previews (PNG, bounded by the raw RGB size), the disk latent cache (fp32
  latents, ``latent_channels`` x (side / VAE factor)^2 per image) and the event log.

The LoRA size is counted from the UNet / text-encoder ``config.json`` the way PEFT places LoRA on the
diffusers modules: r x (in + out) weights per adapted layer (a test checks it against a real injection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trainer.config import Config
from trainer.network import text_encoder_target_modules, unet_target_modules

# Optimizer state per LoRA weight (Adafactor's factored moments are far smaller; 4 bounds them for LoRA's thin matrices).
OPTIMIZER_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16, "lion": 4, "adafactor": 4, "adamw_schedulefree": 8}
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
EVENT_BYTES = 300  # one step event line in events.jsonl plus its log line, generously


@dataclass
class DiskEstimate:
    """Bytes per kind of file a run writes; ``total`` is what must fit."""

    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        shown = [f"{name} {mb(size)} MB" for name, size in self.parts.items() if size >= 1e6]
        return ", ".join(shown) or "all small"


def mb(size: float) -> str:
    return f"{size / 1e6:,.0f}" if size >= 1e6 else f"{size / 1e6:.1f}"


def unet_lora_weights(unet: dict[str, Any], targets: list[str], rank: int, full: bool = False) -> int:
    """LoRA weights PEFT adds to a ``UNet2DConditionModel`` with this config for these target names; with
    ``full`` the weights of the targeted layers themselves (``rank`` 1), the most any adapter kind stores."""
    channels = list(unet["block_out_channels"])
    levels = len(channels)
    cross = unet["cross_attention_dim"]
    per_block = _per_level(unet.get("layers_per_block", 2), levels)
    depth = _per_level(unet.get("transformer_layers_per_block", 1), levels)
    up_depth = _per_level(unet.get("reverse_transformer_layers_per_block") or list(reversed(depth)), levels)
    total = 0
    for i, kind in enumerate(unet["down_block_types"]):
        if "CrossAttn" in kind:
            total += per_block[i] * _transformer(channels[i], cross, depth[i], targets, full)
    for i, kind in enumerate(unet["up_block_types"]):
        if "CrossAttn" in kind:
            total += (list(reversed(per_block))[i] + 1) * _transformer(channels[levels - 1 - i], cross, up_depth[i], targets, full)
    if unet.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn":
        total += _transformer(channels[-1], cross, depth[-1], targets, full)
    return total * rank


def _per_level(value: Any, levels: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [int(value)] * levels


def _transformer(c: int, cross: int, depth: int, targets: list[str], full: bool = False) -> int:
    """in + out (``full``: in × out) summed over the targeted layers of one Transformer2DModel of ``depth``
    blocks, width c."""
    size = (lambda i, o: i * o) if full else (lambda i, o: i + o)
    block = {  # one BasicTransformerBlock: self-attention, cross-attention (k/v read the text), GEGLU MLP
        "to_q": 2 * size(c, c), "to_k": size(c, c) + size(cross, c), "to_v": size(c, c) + size(cross, c),
        "to_out.0": 2 * size(c, c), "ff.net.0.proj": size(c, 8 * c), "ff.net.2": size(4 * c, c),
    }
    outer = {"proj_in": size(c, c), "proj_out": size(c, c)}  # one per Transformer2DModel
    return sum(depth * block.get(t, 0) + outer.get(t, 0) for t in targets)


def text_encoder_lora_weights(config: dict[str, Any], targets: list[str], rank: int, full: bool = False) -> int:
    h, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    if full:
        sizes = {"q_proj": h * h, "k_proj": h * h, "v_proj": h * h, "out_proj": h * h, "fc1": h * inner, "fc2": inner * h}
    else:
        sizes = {"q_proj": 2 * h, "k_proj": 2 * h, "v_proj": 2 * h, "out_proj": 2 * h, "fc1": h + inner, "fc2": inner + h}
    return layers * sum(sizes.get(t, 0) for t in targets) * rank


def lora_weights(cfg: Config, configs: dict[str, dict[str, Any]]) -> int:
    """Adapter weights of the run's network, for the components whose config is known (0 for the rest).

    Counted as LoRA at ``network.rank`` on the targets, then by type: LoHa stores two such pairs; a LoKr
    at most its whole Kronecker factors (a LoKr of rank 10000 is far below rank × (in + out)); a DoRA
    written whole (``export.dora_layout = "full"``) adds the targeted layers' own size. Convolutions
    (LoCon, ``conv_rank``) are not counted: an estimate for the free-space check, not a file size.
    """
    net = cfg.network
    lora, full = 0, 0
    if "unet" in configs:
        lora += unet_lora_weights(configs["unet"], unet_target_modules(net), net.rank)
        full += unet_lora_weights(configs["unet"], unet_target_modules(net), 1, full=True)
    if net.train_text_encoder:
        for name in ("text_encoder", "text_encoder_2"):
            if name in configs:
                lora += text_encoder_lora_weights(configs[name], text_encoder_target_modules(net), net.rank)
                full += text_encoder_lora_weights(configs[name], text_encoder_target_modules(net), 1, full=True)
    if net.type == "loha":
        return 2 * lora
    if net.type == "lokr":
        # Whole factors hold about in·out / factor² (w2) plus factor² (w1); factor -1 splits near √ and is
        # smaller still, so 1/64 (factor 8) bounds it.
        return min(lora, full // (net.lokr_factor**2 if net.lokr_factor > 0 else 64))
    if net.use_dora and cfg.export.dora_layout == "full":
        return lora + full
    return lora


def total_steps(cfg: Config, items_per_epoch: int) -> int:
    """``train.py``'s run length: ``max_steps``, else epochs x optimizer steps per epoch."""
    tr = cfg.training
    if tr.max_steps:
        return tr.max_steps
    batches = math.ceil(items_per_epoch / max(tr.batch_size, 1))
    return tr.epochs * math.ceil(batches / max(tr.gradient_accumulation_steps, 1))


def estimate_run_disk(cfg: Config, configs: dict[str, dict[str, Any]], num_images: int, items_per_epoch: int) -> DiskEstimate:
    """Bytes the run will write into its run folder (see the module doc)."""
    weights = lora_weights(cfg, configs)
    formats = 2 if cfg.export.format == "both" else 1
    adapter = weights * DTYPE_BYTES[cfg.export.dtype] * formats
    steps = total_steps(cfg, items_per_epoch)
    every = cfg.checkpoint.every_n_steps
    saved = (steps // every if every else 0) + (0 if every and steps % every == 0 else 1)
    validating = bool(cfg.validation.fraction or cfg.validation.path.strip())
    kept = min(saved, cfg.checkpoint.keep_last + 1 + int(validating))  # the best-validation one is kept too
    ema = 4 if cfg.training.ema_decay else 0  # the fp32 average beside the weights
    checkpoint = weights * (4 + ema + OPTIMIZER_BYTES.get(cfg.optimizer.name, 8)) + adapter
    smp, res = cfg.sampling, cfg.dataset.resolution
    previews = len(smp.prompts) * ((steps // smp.every_n_steps if smp.every_n_steps else 0) + int(smp.at_end) + int(smp.at_start))
    parts = {
        "checkpoints": kept * checkpoint,
        "adapter": adapter,
        "previews": previews * (smp.width or res) * (smp.height or res) * 3,
        "latent cache": _latent_cache(cfg, configs.get("vae"), num_images),
        "logs": steps // max(cfg.training.log_every, 1) * EVENT_BYTES,
    }
    return DiskEstimate(parts)


def _latent_cache(cfg: Config, vae: dict[str, Any] | None, num_images: int) -> int:
    ds = cfg.dataset
    if ds.cache_latents != "disk" or ds.crop == "random" or ds.flip:  # train.py caches only fixed pixels
        return 0
    vae = vae or {}
    factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    side = ds.resolution // factor
    return num_images * int(vae.get("latent_channels", 4)) * side * side * 4
