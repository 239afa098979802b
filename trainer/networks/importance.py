"""Layer-wise rank from importance (``network.rank_allocation = "importance"``): probe, then allocate.

The probe runs the real training loss (``train.compute_loss``) on the first ``importance_probe_steps``
batches with the base model, the targets' own weights taking gradients, and sums each layer's gradient G.
What a rank-r update can take out of the loss first is the top of G's spectrum: a step along G restricted
to rank r decreases the loss by ‖G_r‖² = σ₁² + … + σ_r² (Eckart–Young; AdaLoRA and GeLoRA score ranks by
the same gradient-times-direction sensitivity). Each extra rank on a layer costs in + out parameters
(in·kh·kw + out for a convolution), so ``allocate_ranks`` hands out ranks greedily by σ²_next / cost,
every layer starting at rank 1 and capped at ``importance_max_rank`` and at the layer's own width, until
the budget of the uniform LoRA (``rank`` on every layer) is spent. PEFT then trains the result through
``rank_pattern`` (``lora.py``).

The ranks are written to ``rank_allocation.json`` in the run folder: a resumed run reads them instead of
probing again (its RNG state would differ), and the seed is set again after the probe so that it does not
shift the run's random draws.
"""

from __future__ import annotations

import heapq
import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.atomic import write_text

ALLOCATION_FILE = "rank_allocation.json"
Key = tuple[str, str]  # (component, layer path in it)


@dataclass
class Allocation:
    """Rank per layer, and the parameter budget they were fitted under."""

    ranks: dict[Key, int]
    budget: int
    spent: int


def allocate_ranks(energies: dict[Key, torch.Tensor], costs: dict[Key, int], budget: int, max_rank: int) -> Allocation:
    """Greedy by gradient energy per parameter: ``energies[k]`` are the σ² of layer k's gradient (any order),
    ``costs[k]`` its parameters per rank. Every layer gets at least rank 1; ``spent`` never exceeds ``budget``."""
    spectra = {k: torch.sort(e.double().flatten(), descending=True).values.tolist() for k, e in energies.items()}
    ranks = {k: 1 for k in spectra}
    spent = sum(costs[k] for k in spectra)
    heap = [(-s[1] / costs[k], k) for k, s in spectra.items() if len(s) > 1 and max_rank > 1]
    heapq.heapify(heap)
    while heap:
        _, k = heapq.heappop(heap)
        if spent + costs[k] > budget:
            continue  # this layer's next rank does not fit; a cheaper layer's may
        ranks[k] += 1
        spent += costs[k]
        nxt = ranks[k]
        if nxt < min(max_rank, len(spectra[k])):
            heapq.heappush(heap, (-spectra[k][nxt] / costs[k], k))
    return Allocation(ranks, budget, spent)


def importance_ranks(s: Any, plans: dict[str, Any], run_dir: Path, resume: bool) -> Allocation:
    """The saved allocation of a resumed run, or a fresh probe's (written to the run folder)."""
    path = Path(run_dir) / ALLOCATION_FILE
    costs = {(c, n): _cost(p.shape) for c, plan in plans.items() for n, p in plan.layers.items()}
    budget = sum(s.cfg.network.rank * cost for cost in costs.values())
    if resume and path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        ranks = {(c, n): int(r) for c, layers in saved["ranks"].items() for n, r in layers.items()}
        return Allocation(ranks, int(saved["budget"]), int(saved["spent"]))
    energies = probe_energies(s, plans)
    net = s.cfg.network
    allocation = allocate_ranks(energies, costs, budget, net.importance_max_rank or 4 * net.rank)
    nested: dict[str, dict[str, int]] = {}
    for (component, name), rank in allocation.ranks.items():
        nested.setdefault(component, {})[name] = rank
    write_text(path, json.dumps({"ranks": nested, "budget": allocation.budget, "spent": allocation.spent}, indent=1))
    return allocation


def probe_energies(s: Any, plans: dict[str, Any]) -> dict[Key, torch.Tensor]:
    """σ² of the summed loss gradient of every planned layer's weight over the probe's batches."""
    from trainer.speed import SpeedPlan
    from trainer.train import collate, compute_loss

    model = s.model
    modules = {c: model.component_modules()[c] for c in plans}
    weights = {(c, n): modules[c].get_submodule(n).weight for c, plan in plans.items() for n in plan.layers}
    for w in weights.values():
        w.requires_grad_(True)
    trained = {c: m for c, m in modules.items() if c != "unet"}  # text encoders run with grad (compute_loss)
    # The fields of a Session that compute_loss reads, for the base model before any adapter or cache exists.
    view = types.SimpleNamespace(model=model, device=s.device, latent_cache=None, text_cache=None, trained=trained,
                                 objective=s.objective, train_unet=model.unet, weight_dtype=s.weight_dtype, allocation=None,
                                 speed=getattr(s, "speed", None) or SpeedPlan())
    batches = _probe_batches(s)
    try:
        for indices in batches:
            loss = compute_loss(view, collate([s.dataset[i] for i in indices]))
            (loss / len(batches)).backward()
        return {k: torch.linalg.svdvals(w.grad.detach().float().flatten(1)) ** 2 for k, w in weights.items()}
    finally:
        for w in weights.values():
            w.requires_grad_(False)
            w.grad = None


def _probe_batches(s: Any) -> list[list[int]]:
    from trainer.data import epoch_batches

    batches = epoch_batches(s.dataset, s.cfg.training.batch_size, s.cfg.training.seed, 0)
    return batches[: s.cfg.network.importance_probe_steps] or batches[:1]


def _cost(shape: tuple[int, ...]) -> int:
    """Parameters one rank adds to a layer of this weight shape: a column of B and a row of A."""
    out, rest = shape[0], 1
    for size in shape[1:]:
        rest *= size
    return out + rest
