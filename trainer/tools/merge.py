"""``merge``: bake one or more adapters (each with a weight) into a base model, saved as a diffusers folder
or a single-file original-layout checkpoint (SD 1.x, 2.x, SDXL) that AUTOMATIC1111 and ComfyUI open.

Each adapted weight is merged in fp32, W' = W + Σ wᵢ ΔWᵢ (ΔW from the kinds' decoders, as ComfyUI
applies them), and cast to the saved dtype. Streamed: the base is loaded once (in the saved dtype, fp32
for an fp32 merge) and never modified; each merged weight is computed when the writer reaches it and
dropped after (``stream_write``), so peak memory is the base plus one layer, not two models.

Equality checked (``merge_check``): every merged weight equals PEFT's ``fuse_lora`` of the adapters
loaded through diffusers (``load_lora_weights`` + ``set_adapters`` with the weights) up to rounding to
the saved dtype, and the UNet and text-encoder outputs on fixed inputs equal that reference's within the
saved dtype's tolerance; a single file also loads back through our single-file loader and diffusers'
``from_single_file`` with the same outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.export.formats import to_dtype
from trainer.export.keys import module_path
from trainer.tools.adapter_layers import ResolvedAdapter, resolve_adapter
from trainer.tools.common import ToolError, WeightedAdapter, check_output, load_base
from trainer.tools.progress import Progress
from trainer.tools.stream_write import Lazy, write_streaming

FORMATS = ("diffusers", "single-file")
WEIGHT_FILES = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors"}
TEXT_WEIGHTS = "model.safetensors"


@dataclass
class MergeResult:
    path: Path
    format: str
    dtype: str
    layers: int
    verified: bool | None
    max_abs_diff: float | None
    message: str


@dataclass
class MergePlan:
    """The base and, per adapted layer, the adapters that change it with their weights."""

    model: Any
    adapters: list[ResolvedAdapter]
    weights: list[float]
    layers: dict[tuple[str, str], list[tuple[ResolvedAdapter, float]]]


def merge_into_base(
    base: str, inputs: list[WeightedAdapter], out: Path, fmt: str = "diffusers", dtype: str = "fp16",
    overwrite: bool = False, verify: bool = True, progress: Progress | None = None,
) -> MergeResult:
    progress = progress or Progress(show_bar=False)
    if fmt not in FORMATS:
        raise ToolError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not inputs:
        raise ToolError("merge needs at least one adapter: merge BASE ADAPTER[:WEIGHT] ... --out PATH")
    out = check_output(out, overwrite, ".safetensors" if fmt == "single-file" else None)
    save_dtype = to_dtype(dtype)
    model = load_base(base, dtype=save_dtype)
    plan = plan_merge(model, inputs)
    if fmt == "single-file":
        write_single_file(plan, out, save_dtype, progress)
    else:
        write_folder(plan, out, save_dtype, progress)
    layers = len(plan.layers)
    if not verify:
        return MergeResult(out, fmt, dtype, layers, None, None, f"{out}: {layers} layers merged; not checked (--no-verify)")
    from trainer.tools.merge_check import check_merge

    check = check_merge(plan, out, fmt, save_dtype, progress)
    if not check.ok:
        raise ToolError(f"check failed for {out}: {check.message}")
    return MergeResult(out, fmt, dtype, layers, True, check.max_abs_diff, f"{out}: {layers} layers merged; {check.message}")


def plan_merge(model: Any, inputs: list[WeightedAdapter]) -> MergePlan:
    adapters = [resolve_adapter(a.path, model) for a in inputs]
    layers: dict[tuple[str, str], list[tuple[ResolvedAdapter, float]]] = {}
    for adapter, spec in zip(adapters, inputs, strict=True):
        for key in adapter.modules:
            layers.setdefault(key, []).append((adapter, spec.weight))
    return MergePlan(model, adapters, [a.weight for a in inputs], layers)


def merged_weight(plan: MergePlan, component: str, canonical: str) -> torch.Tensor:
    """W + Σ wᵢ ΔWᵢ in fp32 for one layer."""
    from trainer.tools.adapter_layers import base_weight, layer_delta

    merged = base_weight(plan.model, component, canonical).detach().float().clone()
    for adapter, weight in plan.layers[(component, canonical)]:
        merged += weight * layer_delta(adapter, plan.model, component, canonical)
    return merged


def merged_state(plan: MergePlan, component: str) -> dict[str, Any]:
    """The component's state dict with each adapted weight replaced by a ``Lazy`` merged weight."""
    module = plan.model.component_modules()[component] if component != "vae" else plan.model.vae
    state: dict[str, Any] = dict(module.state_dict())
    for comp, canonical in plan.layers:
        if comp != component:
            continue
        key = f"{module_path(component, module, canonical)}.weight"

        def make(c: str = comp, p: str = canonical) -> torch.Tensor:
            return merged_weight(plan, c, p)

        state[key] = Lazy(tuple(state[key].shape), make)
    return state


def _components(model: Any) -> dict[str, Any]:
    return {**model.component_modules(), "vae": model.vae}


def _header(plan: MergePlan) -> dict[str, str]:
    merged = [{"file": a.path.name, "weight": w} for a, w in zip(plan.adapters, plan.weights, strict=True)]
    return {"format": "pt", "lora_studio_merged": json.dumps(merged)}


def write_configs(model: Any, folder: Path) -> None:
    """model_index.json and every component's config (and tokenizers, scheduler): a diffusers folder
    without weights, as diffusers' ``save_pretrained`` lays it out."""
    from trainer.export.fresh_base import pipeline_from

    pipe = pipeline_from(model, model.component_modules(), model.noise_scheduler)
    pipe.save_config(folder)
    for name, module in _components(model).items():
        if hasattr(module, "save_config"):
            module.save_config(folder / name)
        else:
            module.config.save_pretrained(folder / name)
    for i, tokenizer in enumerate(model.tokenizers):
        tokenizer.save_pretrained(folder / ("tokenizer" if i == 0 else f"tokenizer_{i + 1}"))
    model.noise_scheduler.save_pretrained(folder / "scheduler")


def write_folder(plan: MergePlan, out: Path, dtype: torch.dtype, progress: Progress) -> None:
    from trainer.atomic import atomic_dir

    with atomic_dir(out) as tmp:
        write_configs(plan.model, tmp)
        for name in _components(plan.model):
            weights = WEIGHT_FILES.get(name, TEXT_WEIGHTS)
            write_streaming(tmp / name / weights, merged_state(plan, name), dtype, _header(plan), progress, f"writing {name}")


def write_single_file(plan: MergePlan, out: Path, dtype: torch.dtype, progress: Progress) -> None:
    """Original (LDM) layout: ``model.diffusion_model.*``, ``first_stage_model.*`` and the text encoders under
    ``cond_stage_model.*`` (SD 1.x/2.x) or ``conditioner.embedders.{0,1}.*`` (SDXL)."""
    from trainer.models.original_layout import (
        clip_to_original,
        open_clip_to_original,
        unet_to_original,
        vae_to_original,
    )

    model = plan.model
    state = unet_to_original(merged_state(plan, "unet"), model.unet.config)
    state.update(vae_to_original(merged_state(plan, "vae"), model.vae.config))
    if model.family == "sd1":
        state.update(clip_to_original(merged_state(plan, "text_encoder"), "cond_stage_model.transformer."))
    elif model.family == "sd2":
        state.update(open_clip_to_original(_made(merged_state(plan, "text_encoder")), "cond_stage_model.model."))
    else:
        state.update(clip_to_original(merged_state(plan, "text_encoder"), "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_original(_made(merged_state(plan, "text_encoder_2")), "conditioner.embedders.1.model."))
    state = {k: v for k, v in state.items() if "position_ids" not in k}
    # Markers our loader and ComfyUI read (checkpoint_keys / single_file.py): v-prediction, zero terminal SNR.
    if model.prediction_type == "v_prediction":
        state["v_pred"] = torch.zeros(0)
    if getattr(model.noise_scheduler.config, "rescale_betas_zero_snr", False):
        state["ztsnr"] = torch.zeros(0)
    write_streaming(out, state, dtype, _header(plan), progress, "writing checkpoint")


def _made(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """OpenCLIP fuses q/k/v, so its merged weights are made up front (a text encoder, not the UNet)."""
    return {k: v.make() if isinstance(v, Lazy) else v for k, v in state.items()}
