"""``resize``: a LoRA at a lower rank, per module the best rank-R approximation of its ΔW (sd-scripts'
``networks/resize_lora.py``), fixed (``--rank R``) or chosen per module (``--dynamic sv_ratio|sv_fro|
sv_cumulative --param X``, ``--rank`` then the cap).

Equality checked (``check_resized``), from the written file alone: each module's ΔW' has rank ≤ R and
‖ΔW − ΔW'‖²_F equals Σ_{i>R} σ_i² of the input's ΔW (Eckart–Young: only the rank-R SVD truncation
attains that), and the energy the table reports, ‖ΔW'‖²_F / ‖ΔW‖²_F, is recomputed from the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.export.formats import LoraModule
from trainer.tools.common import ToolError
from trainer.tools.lora_files import delta_shape, from_factors, module_delta, read_lora, write_lora
from trainer.tools.lowrank import (
    DYNAMIC_METHODS,
    MIN_SV,
    Energy,
    dynamic_rank,
    energy,
    factored_svd,
    overall_energy,
    truncate,
)
from trainer.tools.progress import Progress

# ‖ΔW − ΔW'‖² is compared with Σ_{i>R} σ² up to the file's rounding: relative to ‖ΔW‖², a few units of the
# stored dtype's roundoff (the factors are rounded once) plus fp32 accumulation.
CHECK_SLACK = 16


@dataclass
class ResizeResult:
    path: Path
    rows: list[Energy]
    energy: float  # over all modules
    message: str


def resize_adapter(
    source: Path, out: Path, rank: int, dynamic: str | None = None, param: float | None = None,
    dtype: str | None = None, progress: Progress | None = None,
) -> ResizeResult:
    from trainer.export.formats import to_dtype

    progress = progress or Progress(show_bar=False)
    if rank < 1:
        raise ToolError(f"--rank must be a positive integer, got {rank}")
    if dynamic is not None and dynamic not in DYNAMIC_METHODS:
        raise ToolError(f"--dynamic must be one of {', '.join(DYNAMIC_METHODS)}, got {dynamic!r}")
    if dynamic is not None and (param is None or param <= 0):
        raise ToolError(f"--dynamic {dynamic} needs --param X > 0 (sv_ratio: e.g. 2; sv_fro / sv_cumulative: e.g. 0.9)")
    adapter = read_lora(source, "resize")
    _check_rank_fits(source, adapter.modules, rank, dynamic)
    save_dtype = to_dtype(dtype) if dtype else adapter.dtype
    resized, rows, svs = {}, [], []
    for name, m in progress.stage(adapter.modules.items(), len(adapter.modules), "resizing"):
        u, s, vh = factored_svd(m.up, m.down)
        new_rank = min(rank, dynamic_rank(s, dynamic, float(param)) if dynamic else rank, m.rank)
        if s[0] <= MIN_SV:
            new_rank = 1  # a zero module keeps rank 1, as sd-scripts does
        low = truncate(u, s, vh, new_rank)
        scale = m.alpha / m.rank  # kept: new alpha = scale · new rank (sd-scripts' rank_resize)
        # low.up @ low.down truncates up @ down; alpha / rank = scale again makes it ΔW's truncation.
        resized[name] = from_factors(m, low.up, low.down, scale * low.rank)
        rows.append(energy(name, s, m.rank, low.rank))
        svs.append(s)
    metadata = _metadata(adapter.metadata, adapter.modules, rank, dynamic, param, resized)
    write_lora(out, adapter.format, resized, save_dtype, metadata)
    worst = check_resized(out, adapter.modules, rows, progress)
    total = overall_energy(rows, svs)
    message = (f"{out}: {len(rows)} modules resized, {total:.2%} of the adapter's energy (‖ΔW‖²) kept; "
               f"checked: each module's ΔW is the rank-R SVD truncation of the input's (max relative misfit {worst:.2g})")
    return ResizeResult(out, rows, total, message)


def _check_rank_fits(path: Path, modules: dict[str, LoraModule], rank: int, dynamic: str | None) -> None:
    if dynamic:
        return  # --rank is only a cap then
    too_big = [(n, min(delta_shape(m)[0], int(torch.tensor(delta_shape(m)[1:]).prod()))) for n, m in modules.items()]
    too_big = [(n, width) for n, width in too_big if rank > width]
    if too_big:
        name, width = too_big[0]
        raise ToolError(
            f"--rank {rank} is larger than module {name} of {path} allows (its ΔW has rank at most {width}); "
            f"choose --rank {width} or less"
        )
    if all(rank >= m.rank for m in modules.values()):
        ranks = sorted({m.rank for m in modules.values()})
        raise ToolError(
            f"{path} already has rank {', '.join(map(str, ranks))}: --rank {rank} would change nothing "
            "(resize only lowers the rank); choose a smaller --rank"
        )


def _metadata(meta: dict[str, str], before: dict[str, LoraModule], rank: int, dynamic: str | None,
              param: float | None, after: dict[str, LoraModule]) -> dict[str, str]:
    """sd-scripts' resize header: ``ss_network_dim`` / ``ss_network_alpha`` ("Dynamic" for a dynamic resize)
    and a line prepended to ``ss_training_comment``."""
    out = dict(meta)
    old = max(m.rank for m in before.values())
    comment = meta.get("ss_training_comment", "")
    if dynamic:
        out["ss_training_comment"] = f"Dynamic resize with {dynamic}: {param} from {old}; {comment}"
        out["ss_network_dim"] = out["ss_network_alpha"] = "Dynamic"
    else:
        out["ss_training_comment"] = f"dimension is resized from {old} to {rank}; {comment}"
        out["ss_network_dim"] = str(rank)
        out["ss_network_alpha"] = str(next(iter(after.values())).alpha)
    return out


def check_resized(out: Path, before: dict[str, LoraModule], rows: list[Energy], progress: Progress) -> float:
    """Re-read ``out`` and check every module against the Eckart–Young optimum (see the module docstring);
    ToolError naming the first module that misses. Returns the worst relative misfit."""
    written = read_lora(out).modules
    missing = sorted(set(before) - set(written))
    if missing:
        raise ToolError(f"check failed: {out} lacks {len(missing)} module(s) of the input, e.g. {missing[0]}")
    worst = 0.0
    for row in progress.stage(rows, len(rows), "checking"):
        old, new = module_delta(before[row.name]), module_delta(written[row.name])
        sv = torch.linalg.svdvals(old.double())  # independent of factored_svd: the full ΔW's spectrum
        total = float(sv.pow(2).sum())
        tail = float(sv.pow(2)[row.rank :].sum())
        misfit = float((old.double() - new.double()).pow(2).sum())
        kept = float(new.double().pow(2).sum()) / total if total > 0 else 1.0
        tol = CHECK_SLACK * _roundoff(written[row.name]) * total + 1e-12
        worst = max(worst, abs(misfit - tail) / max(total, 1e-30))
        problems = []
        if written[row.name].rank > row.rank:
            problems.append(f"rank {written[row.name].rank} > {row.rank}")
        if abs(misfit - tail) > tol:
            problems.append(f"‖ΔW − ΔW'‖² = {misfit:.4g} but the rank-{row.rank} SVD truncation leaves {tail:.4g}")
        if abs(kept - row.energy) > tol / max(total, 1e-30) + 1e-6:
            problems.append(f"energy kept is {kept:.4%}, the table says {row.energy:.4%}")
        if problems:
            raise ToolError(f"check failed for module {row.name} of {out}: {'; '.join(problems)}")
    return worst


def _roundoff(m: LoraModule) -> float:
    return torch.finfo(m.down.dtype).eps / 2 + torch.finfo(torch.float32).eps * m.rank
