"""Low-rank math of resize / combine / extract: SVD of ΔW, sd-scripts' rank rules, the energy kept.

``resize_lora.py`` of sd-scripts multiplies ``up @ down`` back into ΔW and runs a full SVD; the same
singular values and vectors come from the factors alone (``factored_svd``: QR of each factor, SVD of
the small r×r core), which is exact and costs O((out + in)·r²) instead of an SVD of out×in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_SV = 1e-6  # sd-scripts' resize_lora.py: below this the module is treated as zero (rank 1 kept)
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


@dataclass
class LowRank:
    """ΔW ≈ up @ down (no separate scale), ``sv`` every singular value of the matrix it approximates."""

    up: torch.Tensor  # (out, r)
    down: torch.Tensor  # (r, in)
    sv: torch.Tensor  # (k,) descending

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class Energy:
    """How much of a module's ΔW a rank-``rank`` truncation keeps (sd-scripts' resize report, plus energy)."""

    name: str
    rank_in: int
    rank: int
    energy: float  # Σ_{i≤r} σ² / Σ σ²: the fraction of ‖ΔW‖_F² kept
    fro_retained: float  # sqrt of ``energy``: sd-scripts' "fro retained"
    sum_retained: float  # Σ_{i≤r} σ / Σ σ: sd-scripts' "sum(S) retained"


def factored_svd(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of ``up @ down`` (fp32, thin: at most r columns) without forming the product."""
    up, down = up.float(), down.float()
    q_up, r_up = torch.linalg.qr(up)  # (out, k), (k, r)
    q_down, r_down = torch.linalg.qr(down.T)  # (in, k'), (k', r)
    u_core, s, vh_core = torch.linalg.svd(r_up @ r_down.T, full_matrices=False)
    return q_up @ u_core, s, vh_core @ q_down.T


def dynamic_rank(sv: torch.Tensor, method: str, param: float) -> int:
    """The rank sd-scripts' ``rank_resize`` picks (``index_sv_*`` + 1) for ``--dynamic METHOD --param X``."""
    n = len(sv)
    if method == "sv_ratio":  # keep σ > σ_max / X
        index = int(torch.sum(sv > sv[0] / param).item()) - 1
    elif method == "sv_cumulative":  # smallest rank whose Σσ reaches fraction X
        index = int(torch.searchsorted(torch.cumsum(sv, 0) / sv.sum(), torch.tensor(param, dtype=sv.dtype)))
    elif method == "sv_fro":  # smallest rank whose sqrt(Σσ²) reaches fraction X of ‖ΔW‖_F
        sq = sv.pow(2)
        index = int(torch.searchsorted(torch.cumsum(sq, 0) / sq.sum(), torch.tensor(param**2, dtype=sv.dtype)))
    else:
        raise ValueError(f"unknown dynamic method {method!r}")
    return max(0, min(index, n - 1)) + 1


def truncate(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> LowRank:
    """Rank-``rank`` truncation, the singular values folded into ``up`` as sd-scripts does (``U @ diag(S)``)."""
    rank = max(1, min(rank, len(s)))
    return LowRank(up=u[:, :rank] * s[:rank], down=vh[:rank], sv=s)


def energy(name: str, sv: torch.Tensor, rank_in: int, rank: int) -> Energy:
    sq = sv.double().pow(2)
    total, total_sum = float(sq.sum()), float(sv.double().abs().sum())
    kept = float(sq[:rank].sum()) / total if total > 0 else 1.0
    summed = float(sv.double().abs()[:rank].sum()) / total_sum if total_sum > 0 else 1.0
    return Energy(name, rank_in, rank, kept, kept**0.5, summed)


def overall_energy(rows: list[Energy], svs: list[torch.Tensor]) -> float:
    """Σ kept σ² / Σ σ² over all modules: the fraction of the adapter's total ‖ΔW‖_F² kept."""
    kept = sum(float(sv.double().pow(2)[: row.rank].sum()) for row, sv in zip(rows, svs, strict=True))
    total = sum(float(sv.double().pow(2).sum()) for sv in svs)
    return kept / total if total > 0 else 1.0


def energy_table(rows: list[Energy]) -> str:
    """One line per module, as sd-scripts' ``--verbose`` resize prints, plus the energy kept."""
    width = max([len(r.name) for r in rows] + [6])
    lines = [f"{'module':{width}}  rank  energy kept  fro retained  sum(S) retained"]
    for r in rows:
        lines.append(
            f"{r.name:{width}}  {r.rank_in:>2}→{r.rank:<2} {r.energy:>10.2%}  {r.fro_retained:>12.2%}  {r.sum_retained:>15.2%}"
        )
    return "\n".join(lines)
