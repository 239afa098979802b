"""LoHa (LyCORIS ``loha``): PEFT's ``LoHaConfig``, written with LyCORIS's ``hada_*`` keys.

``ΔW = alpha / rank · (w1_a @ w1_b) ⊙ (w2_a @ w2_b)``, reshaped to the weight; w1_a, w2_a are (out, r),
w1_b, w2_b are (r, in·kh·kw). PEFT's ``LoHaLayer`` stores exactly these four matrices under the same
names and shapes as LyCORIS's ``LohaModule`` (``hada_w1_a`` …) and scales by alpha / r as LyCORIS and
ComfyUI (``comfy/weight_adapter/loha.py``, scale ``alpha / w1b.shape[0]``) do, so the file is the
layer's parameters as they are. Tucker (``hada_t1``/``hada_t2``, PEFT ``use_effective_conv2d``) is not
used: conv layers take the flattened form, which every client reads.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.networks import suffixes
from trainer.networks.base import AdapterKind, FileModule, LayerPlan, scale_of
from trainer.networks.lora import _exact

PARTS = suffixes.LOHA


class LohaKind(AdapterKind):
    name = "loha"
    known_suffixes, marker_suffixes = suffixes.KINDS["loha"]

    def owns_layer(self, layer: Any) -> bool:
        from peft.tuners.loha import LoHaLayer

        return isinstance(layer, LoHaLayer)

    def peft_config(self, settings: Any, targets: list[str], plans: dict[str, LayerPlan]) -> Any:
        from peft import LoHaConfig

        rank, alpha = settings.rank, settings.alpha
        return LoHaConfig(
            r=rank,
            alpha=alpha,
            target_modules=targets,
            rank_pattern={_exact(n): p.rank for n, p in plans.items() if p.rank != rank},
            alpha_pattern={_exact(n): p.alpha for n, p in plans.items() if p.alpha != alpha},
            use_effective_conv2d=False,
            init_weights=True,  # w2_b = 0: identity at init (PEFT; LyCORIS zeroes w2_a instead)
        )

    def file_parts(self, layer: Any, adapter: str) -> tuple[dict[str, torch.Tensor], float]:
        parts = {name: getattr(layer, name)[adapter].detach() for name in PARTS}
        rank = int(parts["hada_w1_b"].shape[0])
        return parts, float(layer.scaling[adapter]) * rank

    def linear_delta(self, parts: dict[str, torch.Tensor], alpha: float | None, shape: torch.Size) -> torch.Tensor:
        w1 = parts["hada_w1_a"].float() @ parts["hada_w1_b"].float()  # (out, in·k·k)
        w2 = parts["hada_w2_a"].float() @ parts["hada_w2_b"].float()
        return (scale_of(alpha, self.file_rank(parts)) * w1 * w2).reshape(shape)

    def accumulation(self, parts: dict[str, torch.Tensor]) -> int:
        return 2 * self.file_rank(parts)

    def delta(self, parts: dict[str, torch.Tensor], alpha: float | None, base: torch.Tensor) -> torch.Tensor:
        return self.linear_delta(parts, alpha, base.shape)

    def missing_parts(self, parts: dict[str, torch.Tensor]) -> list[str]:
        return sorted(suffixes.needed(self.name, set(parts)) - set(parts))

    def file_rank(self, parts: dict[str, torch.Tensor]) -> int:
        return int(parts["hada_w1_b"].shape[0])

    def load(self, layer: Any, adapter: str, module: FileModule) -> None:
        ratio = scale_of(module.alpha, self.file_rank(module.parts)) / float(layer.scaling[adapter])
        with torch.no_grad():
            for name in PARTS:
                value = module.parts[name].float() * (ratio if name == "hada_w1_a" else 1.0)
                getattr(layer, name)[adapter].copy_(value)


KIND = LohaKind()
