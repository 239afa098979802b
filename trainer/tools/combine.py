"""``combine``: several LoRA files (each with a weight) as one, ΔW = Σ wᵢ ΔWᵢ per module.

Exactly, by concatenating ranks (sd-scripts' ``merge_lora.py --concat``: the factors side by side, each
``up`` scaled by wᵢ·scaleᵢ, alpha = the new rank so the file's own scale is 1), or, with ``--rank R``, as
the rank-R SVD truncation of the sum (``svd_merge_lora.py``), reporting the energy kept per module.
A module present in only some files is combined from those.

Equality checked (``check_combined``), from the written file: each module's ΔW equals Σ wᵢ ΔWᵢ (concat:
within the rounding of the saved dtype) or its rank-R truncation (as ``resize.check_resized``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.export.formats import LoraModule
from trainer.tools.common import ToolError, WeightedAdapter
from trainer.tools.lora_files import delta_shape, from_factors, module_delta, read_lora, write_lora
from trainer.tools.lowrank import Energy, energy, factored_svd, overall_energy, truncate
from trainer.tools.progress import Progress


@dataclass
class CombineResult:
    path: Path
    modules: int
    rank: int | None  # None: exact (concatenated ranks)
    rows: list[Energy] = field(default_factory=list)
    energy: float = 1.0
    message: str = ""


def combine_adapters(
    inputs: list[WeightedAdapter], out: Path, rank: int | None = None, dtype: str | None = None,
    progress: Progress | None = None,
) -> CombineResult:
    from trainer.export.formats import to_dtype

    progress = progress or Progress(show_bar=False)
    if len(inputs) < 2:
        raise ToolError("combine needs at least two adapters: combine A.safetensors[:W] B.safetensors[:W] ... --out PATH")
    if rank is not None and rank < 1:
        raise ToolError(f"--rank must be a positive integer, got {rank}")
    files = [read_lora(a.path, "combine") for a in inputs]
    formats = {f.format for f in files}
    if len(formats) > 1:
        listing = ", ".join(f"{f.path.name} ({f.format})" for f in files)
        raise ToolError(f"the adapters are in different formats ({listing}); convert them to one format first "
                        "(python -m trainer convert ... --to kohya)")
    names = list(dict.fromkeys(n for f in files for n in f.modules))
    _check_shapes(files, names)
    if rank is not None:
        _check_rank_fits(files, names, rank)
    combined, rows, svs = {}, [], []
    for name in progress.stage(names, len(names), "combining"):
        parts = [(f.modules[name], a.weight) for f, a in zip(files, inputs, strict=True) if name in f.modules]
        like = parts[0][0]
        up = torch.cat([m.up.float().flatten(1) * (w * m.alpha / m.rank) for m, w in parts], dim=1)  # (out, Σr)
        down = torch.cat([m.down.float().flatten(1) for m, _ in parts], dim=0)  # (Σr, in)
        if rank is None:
            combined[name] = from_factors(like, up, down, float(down.shape[0]))  # alpha = rank: scale 1
            continue
        u, s, vh = factored_svd(up, down)
        low = truncate(u, s, vh, rank)
        combined[name] = from_factors(like, low.up, low.down, float(low.rank))
        rows.append(energy(name, s, int(down.shape[0]), low.rank))
        svs.append(s)
    save_dtype = to_dtype(dtype) if dtype else files[0].dtype
    metadata = _metadata(files, inputs, rank, combined)
    write_lora(out, files[0].format, combined, save_dtype, metadata)
    worst = check_combined(out, files, inputs, rows, rank, progress)
    total = overall_energy(rows, svs) if rows else 1.0
    how = "exactly (ranks concatenated)" if rank is None else f"at rank {rank}, {total:.2%} of the energy (‖ΔW‖²) kept"
    message = (f"{out}: {len(inputs)} adapters combined {how} in {len(combined)} modules; checked: each module's "
               f"ΔW is {'Σ wᵢ ΔWᵢ' if rank is None else 'the rank-R SVD truncation of Σ wᵢ ΔWᵢ'} (max relative misfit {worst:.2g})")
    return CombineResult(out, len(combined), rank, rows, total, message)


def _check_shapes(files: list, names: list[str]) -> None:
    for name in names:
        shapes = {f.path.name: delta_shape(f.modules[name]) for f in files if name in f.modules}
        if len(set(shapes.values())) > 1:
            raise ToolError(f"module {name} has different shapes in the adapters ({shapes}): they were made for "
                            "different base models and cannot be combined")


def _check_rank_fits(files: list, names: list[str], rank: int) -> None:
    for name in names:
        m = next(f.modules[name] for f in files if name in f.modules)
        shape = delta_shape(m)
        width = min(shape[0], int(torch.tensor(shape[1:]).prod()))
        if rank > width:
            raise ToolError(f"--rank {rank} is larger than module {name} allows (its ΔW has rank at most {width}); "
                            f"choose --rank {width} or less")


def _metadata(files: list, inputs: list[WeightedAdapter], rank: int | None, combined: dict[str, LoraModule]) -> dict[str, str]:
    out = dict(files[0].metadata)
    listing = ", ".join(f"{a.path.name}:{a.weight:g}" for a in inputs)
    out["ss_training_comment"] = f"combined from {listing}" + ("" if rank is None else f" at rank {rank} (SVD)")
    ranks = {m.rank for m in combined.values()}
    out["ss_network_dim"] = str(ranks.pop()) if len(ranks) == 1 else "Dynamic"
    alphas = {m.alpha for m in combined.values()}
    out["ss_network_alpha"] = str(alphas.pop()) if len(alphas) == 1 else "Dynamic"
    return out


def check_combined(out: Path, files: list, inputs: list[WeightedAdapter], rows: list[Energy], rank: int | None,
                   progress: Progress) -> float:
    """Re-read ``out``; every module's ΔW against Σ wᵢ ΔWᵢ computed from the input files (see the module doc)."""
    written = read_lora(out).modules
    by_name = {r.name: r for r in rows}
    names = list(dict.fromkeys(n for f in files for n in f.modules))
    worst = 0.0
    for name in progress.stage(names, len(names), "checking"):
        if name not in written:
            raise ToolError(f"check failed: {out} lacks module {name}")
        want = sum(w.weight * module_delta(f.modules[name]).double() for f, w in zip(files, inputs, strict=True)
                   if name in f.modules)
        got = module_delta(written[name]).double()
        u = torch.finfo(written[name].down.dtype).eps / 2
        total = float(want.pow(2).sum())
        if rank is None:
            # Rounding each stored factor to the saved dtype: |Δ| ≤ ~2u·(|up||down|) elementwise, bounded by norms.
            m = written[name]
            # fp32 sums of Σr products on both sides add r·u32 each.
            sums = 2 * m.rank * torch.finfo(torch.float32).eps / 2
            bound = (2 * u + sums) * float(m.up.double().flatten(1).norm() * m.down.double().flatten(1).norm()) + 1e-12
            err = float((got - want).norm())
            worst = max(worst, err / max(total**0.5, 1e-30))
            if err > bound:
                raise ToolError(f"check failed for module {name} of {out}: ΔW differs from Σ wᵢ ΔWᵢ by {err:.3g} "
                                f"(‖·‖_F; tolerance {bound:.3g})")
            continue
        sv = torch.linalg.svdvals(want)
        row = by_name[name]
        tail = float(sv.pow(2)[row.rank :].sum())
        misfit = float((want - got).pow(2).sum())
        worst = max(worst, abs(misfit - tail) / max(total, 1e-30))
        if abs(misfit - tail) > 16 * (u + 1e-6) * total + 1e-12:
            raise ToolError(f"check failed for module {name} of {out}: ‖ΣΔW − ΔW'‖² = {misfit:.4g} but the rank-{row.rank} "
                            f"SVD truncation leaves {tail:.4g}")
    return worst
