"""LoKr (LyCORIS ``lokr``): PEFT's ``LoKrConfig``, written with LyCORIS's ``lokr_*`` keys.

``ΔW = s · w1 ⊗ w2`` (Kronecker product, reshaped to the weight). The weight's out/in sizes are factored
as out = a·b, in = c·d (LyCORIS's ``factorization`` with ``network.lokr_factor``; PEFT's is the same
function); w1 is (a, c), w2 is (b, d·kh·kw). Each factor is stored whole (``lokr_w1``, ``lokr_w2``) or,
when the rank is below half its larger side, as a product (``lokr_w1_a @ lokr_w1_b``,
``lokr_w2_a @ lokr_w2_b``). PEFT's ``LoKrLayer`` decides that split and the shapes exactly as LyCORIS's
``LokrModule`` does, so the factors are written as they are.

The scale is where the two differ. PEFT always uses s = alpha / r. LyCORIS, and ComfyUI reading the
file (``comfy/weight_adapter/lokr.py``), use alpha / r only when a factor is a product (r read from
``lokr_w2_b`` or ``lokr_w1_b``) and **1** when both are whole. We train as LyCORIS does (``peft_config``
gives those layers alpha = r, so PEFT's s is 1 there too), and the file still has s folded into
``lokr_w1`` and ``alpha = r`` (what LyCORIS writes then) so that a file is right whatever s was.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.networks import suffixes
from trainer.networks.base import AdapterKind, FileModule, LayerPlan
from trainer.networks.lora import _exact

W1, W2 = "lokr_w1", "lokr_w2"
W1A, W1B, W2A, W2B = "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"


class LokrKind(AdapterKind):
    name = "lokr"
    known_suffixes, marker_suffixes = suffixes.KINDS["lokr"]

    def owns_layer(self, layer: Any) -> bool:
        from peft.tuners.lokr import LoKrLayer

        return isinstance(layer, LoKrLayer)

    def peft_config(self, settings: Any, targets: list[str], plans: dict[str, LayerPlan]) -> Any:
        from peft import LoKrConfig

        rank, alpha = settings.rank, settings.alpha
        # LyCORIS trains a layer whose factors are both whole at scale 1 (alpha := rank); PEFT would use
        # alpha / rank, so recipes such as LyCORIS's "rank 10000, alpha 1, factor 8" (full-matrix LoKr) would
        # train 10000x weaker. Setting alpha = rank for exactly those layers gives LyCORIS's training.
        alphas = {n: (float(p.rank) if both_whole(p, settings.lokr_factor) else p.alpha) for n, p in plans.items()}
        return LoKrConfig(
            r=rank,
            alpha=alpha,
            target_modules=targets,
            rank_pattern={_exact(n): p.rank for n, p in plans.items() if p.rank != rank},
            alpha_pattern={_exact(n): a for n, a in alphas.items() if a != alpha},
            decompose_factor=settings.lokr_factor,
            use_effective_conv2d=False,
            init_weights=True,  # w1 (or w1_a) = 0: identity at init
        )

    def file_parts(self, layer: Any, adapter: str) -> tuple[dict[str, torch.Tensor], float]:
        parts = {}
        for name in self.known_suffixes:
            table = getattr(layer, name)
            if adapter in table:
                parts[name] = table[adapter].detach()
        scaling, rank = float(layer.scaling[adapter]), int(layer.r[adapter])
        if W1 in parts and W2 in parts:  # both whole: clients apply no scale
            parts[W1] = parts[W1] * scaling
            return parts, float(rank)
        return parts, scaling * self.file_rank(parts)

    def factors(self, parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        w1 = parts[W1].float() if W1 in parts else parts[W1A].float() @ parts[W1B].float()
        w2 = parts[W2].float() if W2 in parts else parts[W2A].float() @ parts[W2B].float()
        return w1, w2

    def scale(self, parts: dict[str, torch.Tensor], alpha: float | None) -> float:
        """ComfyUI's rule: alpha / r when a factor is a product and the file has alpha, else 1."""
        if alpha is None or (W2B not in parts and W1B not in parts):
            return 1.0
        return float(alpha) / self.file_rank(parts)

    def linear_delta(self, parts: dict[str, torch.Tensor], alpha: float | None, shape: torch.Size) -> torch.Tensor:
        w1, w2 = self.factors(parts)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return (self.scale(parts, alpha) * torch.kron(w1, w2)).reshape(shape)

    def accumulation(self, parts: dict[str, torch.Tensor]) -> int:
        return 1 + (self.file_rank(parts) if (W1B in parts or W2B in parts) else 0)

    def delta(self, parts: dict[str, torch.Tensor], alpha: float | None, base: torch.Tensor) -> torch.Tensor:
        return self.linear_delta(parts, alpha, base.shape)

    def missing_parts(self, parts: dict[str, torch.Tensor]) -> list[str]:
        return sorted(suffixes.needed(self.name, set(parts)) - set(parts))

    def file_rank(self, parts: dict[str, torch.Tensor]) -> int:
        if W2B in parts:
            return int(parts[W2B].shape[0])
        if W1B in parts:
            return int(parts[W1B].shape[0])
        return 0  # both factors whole: no rank in the file

    def layer_rank(self, layer: Any, adapter: str) -> int:
        whole = adapter in layer.lokr_w1 and adapter in layer.lokr_w2
        return 0 if whole else int(layer.r[adapter])

    def load(self, layer: Any, adapter: str, module: FileModule) -> None:
        ratio = self.scale(module.parts, module.alpha) / float(layer.scaling[adapter])
        first = W1 if W1 in module.parts else W1A
        with torch.no_grad():
            for name, value in module.parts.items():
                getattr(layer, name)[adapter].copy_(value.float() * (ratio if name == first else 1.0))


def both_whole(plan: LayerPlan, factor: int) -> bool:
    """Whether PEFT (and LyCORIS) keep both Kronecker factors of this layer whole: w1 always (we do not
    decompose both), w2 when rank >= half its larger side (``LoKrLayer.update_layer``'s ``use_w2``)."""
    from peft.tuners.lokr.layer import factorization

    out_dim, in_dim = plan.shape[0], plan.shape[1]
    _, out_k = factorization(out_dim, factor)
    _, in_n = factorization(in_dim, factor)
    return plan.rank >= max(out_k, in_n) / 2


KIND = LokrKind()
