"""``extract``: a LoRA from the difference between a fine-tuned model and its base (sd-scripts'
``networks/extract_lora_from_models.py``): per Linear and Conv2d layer of the UNet and text encoders
whose weights differ, the rank-R SVD truncation of D = W_tuned − W_base, written as kohya ``lora_down``
(Vh_R, reshaped to the layer's kernel for a convolution) and ``lora_up`` (U_R·S_R) with alpha = R (scale
1, as sd-scripts writes it).

sd-scripts clamps U and Vh at their 0.99 quantile (``--clamp_quantile``); that trades exactness for
smaller outliers, so here it is off unless ``--clamp-quantile`` is given.

Equality checked (``check_extracted``), from the written file: each module's ΔW' has rank ≤ R and
‖D − ΔW'‖²_F = Σ_{i>R} σ_i² of D (Eckart–Young: the rank-R truncation); a LoRA of rank ≤ R merged into
the base is so recovered exactly (tests/test_tools_extract.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.export.keys import KohyaNaming, LoraModule, module_path
from trainer.tools.common import ToolError, check_output, load_base
from trainer.tools.lowrank import Energy, energy, overall_energy, truncate
from trainer.tools.progress import Progress


@dataclass
class ExtractResult:
    path: Path
    rows: list[Energy] = field(default_factory=list)
    energy: float = 1.0
    skipped: int = 0  # layers that differ but have no kohya name (none in SD 1.x/2.x/SDXL UNets and CLIP)
    message: str = ""


def extract_lora(
    base: str, tuned: str, out: Path, rank: int, conv_rank: int | None = None, min_diff: float = 1e-6,
    clamp_quantile: float | None = None, dtype: str = "fp16", overwrite: bool = False,
    progress: Progress | None = None,
) -> ExtractResult:
    from trainer.export.formats import to_dtype
    from trainer.export.writer import write_safetensors

    progress = progress or Progress(show_bar=False)
    if rank < 1 or (conv_rank is not None and conv_rank < 1):
        raise ToolError(f"--rank and --conv-rank must be positive integers, got {rank} and {conv_rank}")
    out = check_output(out, overwrite)
    base_model, tuned_model = load_base(base), load_base(tuned)
    if base_model.family != tuned_model.family:
        from trainer.models.probe import FAMILY_NAMES

        raise ToolError(f"BASE {base} is {FAMILY_NAMES[base_model.family]} but TUNED {tuned} is "
                        f"{FAMILY_NAMES[tuned_model.family]}: "
                        "extract needs the fine-tune and the model it was tuned from")
    layers = changed_layers(base_model, tuned_model, min_diff)
    if not layers:
        raise ToolError(f"{tuned} and {base} have the same weights in every Linear and Conv2d layer (to --min-diff "
                        f"{min_diff}); there is nothing to extract")
    naming = KohyaNaming.for_model(base_model)
    modules, rows, svs, skipped, diffs = [], [], [], 0, {}
    for component, canonical, diff in progress.stage(layers, len(layers), "extracting"):
        try:
            name = naming.name(component, canonical)
        except ValueError:
            skipped += 1
            continue
        want = (conv_rank or rank) if diff.dim() == 4 and diff.shape[-1] > 1 else rank
        flat = diff.flatten(1)
        if want > min(flat.shape):
            raise ToolError(f"--rank {want} is larger than layer {component}.{canonical} allows (its weight is "
                            f"{tuple(diff.shape)}, so ΔW has rank at most {min(flat.shape)}); choose a smaller rank")
        u, s, vh = torch.linalg.svd(flat, full_matrices=False)
        low = truncate(u, s, vh, want)
        up, down = low.up, low.down
        if clamp_quantile is not None and clamp_quantile < 1:
            hi = torch.quantile(torch.cat([up.flatten(), down.flatten()]).abs(), clamp_quantile)
            up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
        if diff.dim() == 4:
            down = down.reshape(want, *diff.shape[1:])
            up = up.reshape(diff.shape[0], want, 1, 1)
        modules.append(LoraModule(component, canonical, down.contiguous(), up.contiguous(), float(want)))
        rows.append(energy(name, s, min(flat.shape), want))
        svs.append(s)
        diffs[name] = diff
    header = _metadata(base_model, base, tuned, rank, conv_rank)
    tensors = _kohya(modules, naming, to_dtype(dtype))
    write_safetensors(out, tensors, header)
    worst = check_extracted(out, diffs, rows, progress, exact_clamp=clamp_quantile is None or clamp_quantile >= 1)
    total = overall_energy(rows, svs)
    message = (f"{out}: {len(modules)} layers extracted at rank {rank}, {total:.2%} of the difference's energy "
               f"(‖ΔW‖²) kept; checked: each module is the rank-R SVD truncation of W_tuned − W_base "
               f"(max relative misfit {worst:.2g})")
    return ExtractResult(out, rows, total, skipped, message)


def changed_layers(base: Any, tuned: Any, min_diff: float) -> list[tuple[str, str, torch.Tensor]]:
    """(component, canonical path, D in fp32) for every Linear/Conv2d layer whose weights differ by more
    than ``min_diff`` (max |D|). Layers are those kohya names exist for (``export.formats.layer_table``)."""
    from trainer.export.formats import layer_table

    tuned_parts = tuned.component_modules()
    out = []
    for component, canonical in dict.fromkeys(layer_table(base).values()):
        owner = base.component_modules()[component]
        other = tuned_parts[component]
        name = module_path(component, owner, canonical)
        weight = owner.get_submodule(name).weight.detach().float()
        try:
            tuned_weight = other.get_submodule(module_path(component, other, canonical)).weight.detach().float()
        except AttributeError:
            raise ToolError(f"TUNED has no layer {component}.{canonical}: it is not a fine-tune of BASE") from None
        if tuned_weight.shape != weight.shape:
            raise ToolError(f"layer {component}.{canonical} is {tuple(weight.shape)} in BASE but {tuple(tuned_weight.shape)} "
                            "in TUNED: it is not a fine-tune of BASE")
        diff = tuned_weight - weight
        if diff.abs().max() > min_diff:
            out.append((component, canonical, diff))
    return out


def _kohya(modules: list[LoraModule], naming: KohyaNaming, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from trainer.export.formats import kohya_tensors

    return kohya_tensors(modules, naming, dtype=dtype)


def _metadata(model: Any, base: str, tuned: str, rank: int, conv_rank: int | None) -> dict[str, str]:
    from trainer.export.metadata import SS_NETWORK_MODULE, base_model_version

    header = {
        "ss_network_module": SS_NETWORK_MODULE,
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(rank)),
        "ss_base_model_version": base_model_version(model.family, model.prediction_type),
        "ss_training_comment": f"extracted from {Path(tuned).name} minus {Path(base).name}",
    }
    if conv_rank:
        header["ss_network_args"] = f'{{"conv_dim": "{conv_rank}", "conv_alpha": "{float(conv_rank)}"}}'
    return header


def check_extracted(out: Path, diffs: dict[str, torch.Tensor], rows: list[Energy], progress: Progress,
                    exact_clamp: bool) -> float:
    """Re-read ``out`` and check every module against Eckart–Young (see the module docstring)."""
    from trainer.tools.lora_files import module_delta, read_lora

    written = read_lora(out).modules
    worst = 0.0
    for row in progress.stage(rows, len(rows), "checking"):
        if row.name not in written:
            raise ToolError(f"check failed: {out} lacks module {row.name}")
        m = written[row.name]
        d = diffs[row.name].flatten(1).double()
        got = module_delta(m).double()
        sv = torch.linalg.svdvals(d)
        total, tail = float(sv.pow(2).sum()), float(sv.pow(2)[row.rank :].sum())
        misfit = float((d - got).pow(2).sum())
        worst = max(worst, abs(misfit - tail) / max(total, 1e-30))
        u = torch.finfo(m.down.dtype).eps / 2
        if m.rank > row.rank:
            raise ToolError(f"check failed for module {row.name} of {out}: rank {m.rank} > {row.rank}")
        if exact_clamp and abs(misfit - tail) > 16 * (u + 1e-6) * total + 1e-12:
            raise ToolError(f"check failed for module {row.name} of {out}: ‖D − ΔW'‖² = {misfit:.4g} but the rank-{row.rank} "
                            f"SVD truncation leaves {tail:.4g}")
    return worst
