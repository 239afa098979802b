"""The merge's check: the merged model against the base with the adapters loaded the way users load them.

Reference: fresh fp32 copies of the base components (``export.fresh_base.base_copy``, no adapters) in a
diffusers pipeline; each plain LoRA/LoCon file goes in through ``load_lora_weights(adapter_name=…)`` and
``set_adapters`` with its weight — diffusers' own reading of the keys, independent of our decoders.
LoHa, LoKr and DoRA files, which diffusers does not read for SD, are added as ComfyUI adds them (ΔW
onto the weights). Merged: the written model loaded back through our loader (a single file also
through diffusers' ``from_single_file``), upcast to fp32. Each merged weight must equal the reference's
fused one (``fuse_lora``) up to rounding to the saved dtype; and on the export self-check's fixed inputs the
UNet and text-encoder outputs must agree within ``export.verify``'s tolerance for the saved dtype:
64·u(dtype)·(|adapter effect| + |output|), u the unit roundoff (fp16 ≈ 4.9e-4, bf16 ≈ 3.9e-3, fp32 ≈ 6e-8):
rounding W + ΔW to the saved dtype moves each weight by u·|W'|.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.errors import UserFacingError
from trainer.export.fresh_base import base_copy, pipeline_from
from trainer.export.keys import module_path
from trainer.export.probe import Probe, probe_inputs, probe_outputs
from trainer.export.verify import (
    _KEY_PROBLEM,
    _NO_KEYS_NOTICE,
    _captured_warnings,
    _compare_outputs,
)
from trainer.tools.adapter_layers import layer_delta


@dataclass
class MergeCheck:
    ok: bool
    max_abs_diff: float | None
    message: str


def check_merge(plan: Any, out: Path, fmt: str, dtype: torch.dtype, progress: Any) -> MergeCheck:
    model = plan.model
    steps = ["reference", "merged"] + (["from_single_file"] if fmt == "single-file" else [])
    stage = progress.stage(steps, len(steps), "checking")
    next(stage)
    probe = _fp32_probe(probe_inputs(model))
    fresh = {name: base_copy(m).float() for name, m in model.component_modules().items()}
    base_out = probe_outputs(fresh, probe)
    pipe, names, problems = _apply_reference(plan, fresh)
    if problems:
        return MergeCheck(False, None, "; ".join(problems[:5]))
    reference = probe_outputs(fresh, probe)
    fused = _fused_weights(plan, pipe, names, fresh)
    del fresh, pipe
    next(stage)
    with tempfile.TemporaryDirectory() as configs:
        config_dir = _config_dir(model, Path(configs))
        try:
            merged = _load_merged(out, fmt, config_dir)
        except UserFacingError as err:
            return MergeCheck(False, None, f"the written model does not load back through our loader: {err}")
        merged_out = probe_outputs(merged.component_modules(), probe)
        problems = _weight_problems(fused, merged, dtype)
        del merged
        diff, output_problems = _compare_outputs(base_out, reference, merged_out, dtype, dtype)
        problems += output_problems
        how = "our loader"
        if fmt == "single-file" and not problems:
            next(stage)
            pipe_out = probe_outputs(_from_single_file(out, model, config_dir), probe)
            diff2, problems = _compare_outputs(base_out, reference, pipe_out, dtype, dtype)
            diff, how = max(diff, diff2), "our single-file loader and diffusers' from_single_file"
    for _ in stage:
        pass
    if problems:
        return MergeCheck(False, diff, f"the merge differs from base + {reference_how(plan)}: " + "; ".join(problems[:5]))
    return MergeCheck(True, diff, f"checked: loaded back through {how}, every merged weight equals PEFT's fused one and "
                      "UNet and text-encoder outputs equal base + "
                      f"{reference_how(plan)} (max abs diff {diff:.3g}, tolerance for {str(dtype).removeprefix('torch.')})")


def reference_how(plan: Any) -> str:
    plain = [a for a in plan.adapters if a.plain_lora]
    other = [a for a in plan.adapters if not a.plain_lora]
    parts = ["adapters loaded by diffusers"] if plain else []
    if other:
        parts.append(f"{'LoHa/LoKr/DoRA ' if plain else ''}adapters added as ComfyUI does (diffusers has no reader for them)")
    return " and ".join(parts)


def _fp32_probe(probe: Probe) -> Probe:
    added = {k: v.float() for k, v in probe.added.items()} if probe.added else None
    return Probe(probe.sample.float(), probe.timestep, probe.hidden.float(), added, probe.token_ids)


def _apply_reference(plan: Any, fresh: dict[str, torch.nn.Module]) -> tuple[Any, list[str], list[str]]:
    """Load every adapter onto ``fresh`` (see the module docstring): the pipeline, the diffusers adapter names,
    and the loader's key problems, if any."""
    model = plan.model
    pipe = pipeline_from(model, fresh, model.noise_scheduler)
    names, weights, problems = [], [], []
    for i, (adapter, weight) in enumerate(zip(plan.adapters, plan.weights, strict=True)):
        if not adapter.plain_lora:
            for (component, canonical), module in adapter.modules.items():
                owner = fresh[component]
                layer = owner.get_submodule(module_path(component, owner, canonical))
                delta = layer_delta(adapter, model, component, canonical, module)
                layer.weight = torch.nn.Parameter(layer.weight.detach() + weight * delta, requires_grad=False)
            continue
        name = f"adapter_{i}"
        with _captured_warnings() as logged:
            try:
                pipe.load_lora_weights(str(adapter.path), adapter_name=name)
            except Exception as err:  # diffusers raises ValueError/KeyError/RuntimeError for files it cannot read
                return pipe, names, [f"diffusers could not load {adapter.path.name}: {type(err).__name__}: {err}"]
        problems += [f"{adapter.path.name}: loader warning: {m}" for m in logged
                     if _KEY_PROBLEM.search(m) and not m.startswith(_NO_KEYS_NOTICE)]
        names.append(name)
        weights.append(weight)
    if names:
        pipe.set_adapters(names, adapter_weights=weights)
    return pipe, names, problems


def _layer_weight(module: torch.nn.Module, component: str, canonical: str) -> torch.Tensor:
    layer = module.get_submodule(module_path(component, module, canonical))
    return (layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer).weight.detach()


def _fused_weights(plan: Any, pipe: Any, names: list[str], fresh: dict[str, torch.nn.Module]) -> dict[tuple[str, str], torch.Tensor]:
    """W + Σ wᵢ ΔWᵢ per adapted layer as PEFT fuses it (``fuse_lora`` with the ``set_adapters`` weights), fp32.

    PEFT may add into the weight in place, and ``fresh`` shares the base's tensors when the base is fp32: the
    base model is not used after this check."""
    if names:
        pipe.fuse_lora(adapter_names=names)
    return {key: _layer_weight(fresh[key[0]], *key) for key in plan.layers}


def _weight_problems(fused: dict[tuple[str, str], torch.Tensor], merged: Any, dtype: torch.dtype) -> list[str]:
    """|saved − fused| ≤ u(dtype)·|fused| (rounding to the saved dtype) + 64·u32·max|fused| (fp32 sums in
    another order): a wrong weight, alpha or layer misses by a fraction of ΔW, orders of magnitude beyond."""
    u, u32 = torch.finfo(dtype).eps / 2, torch.finfo(torch.float32).eps / 2
    components, problems = merged.component_modules(), []
    for (component, canonical), want in fused.items():
        got = _layer_weight(components[component], component, canonical).float()
        err = (got - want).abs()
        tol = u * want.abs() + 64 * u32 * want.abs().max() + 1e-12
        if (err > tol).any():
            at = int((err - tol).argmax())
            problems.append(f"{component}.{canonical}: merged weight differs from PEFT's fused weight by "
                            f"{err.flatten()[at]:.3g} (tolerance {tol.flatten()[at]:.3g})")
    return problems


def _config_dir(model: Any, tmp: Path) -> Path:
    """Component configs of the base, for loading the merged single file as this architecture (the shipped
    full-size configs would not fit a tiny builtin)."""
    from trainer.tools.merge import write_configs

    write_configs(model, tmp)
    return tmp


def _load_merged(out: Path, fmt: str, config_dir: Path) -> Any:
    from trainer.config import ModelConfig

    if fmt == "single-file":
        from trainer.models.single_file import load_single_file

        return load_single_file(out, ModelConfig(base=str(out)), dtype=torch.float32, config_dir=config_dir)
    from trainer.tools.common import load_base

    return load_base(str(out), dtype=torch.float32)


def _from_single_file(out: Path, model: Any, config_dir: Path) -> dict[str, Any]:
    """The merged file through diffusers' own ``from_single_file`` (offline: configs from ``config_dir``)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    kwargs: dict[str, Any] = {"config": str(config_dir), "local_files_only": True, "torch_dtype": torch.float32}
    if model.family == "sdxl":
        pipe = StableDiffusionXLPipeline.from_single_file(str(out), **kwargs)
        return {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    pipe = StableDiffusionPipeline.from_single_file(str(out), safety_checker=None, requires_safety_checker=False, **kwargs)
    return {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
