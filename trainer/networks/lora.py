"""LoRA (and LoCon, DoRA, rsLoRA): PEFT's ``LoraConfig``, written as sd-scripts' ``lora_down``/``lora_up``.

- LoRA: ``ΔW = alpha / rank · up @ down`` (PEFT lora_A = kohya ``lora_down``, lora_B = ``lora_up``).
- LoCon is the same kind on convolutions: PEFT wraps a k×k Conv2d as lora_A = Conv2d(in, r, k×k) and
  lora_B = Conv2d(r, out, 1×1), exactly sd-scripts' conv ``lora_down`` / ``lora_up``; ComfyUI multiplies
  them flattened (``comfy/weight_adapter/lora.py``: ``mm(up.flatten(1), down.flatten(1)).reshape(W)``).
- rsLoRA (PEFT ``use_rslora``) scales by alpha / √rank. No client knows the flag, so the file carries the
  effective alpha (alpha·√rank): every client's alpha / rank then is PEFT's scale.
- DoRA (PEFT ``use_dora``): ``W' = m · (W + ΔW) / ‖W + ΔW‖`` with the norm per output channel (PEFT's
  ``lora_magnitude_vector``, shape (out,)). The file holds m as ``dora_scale`` of shape (out, 1[, 1, 1]):
  the output-axis orientation LyCORIS writes with ``wd_on_out`` and ComfyUI tells from the input-axis
  one by ``dora_scale.shape[0] == W.shape[0]`` (``comfy/weight_adapter/base.py: weight_decompose``).
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.networks import suffixes
from trainer.networks.base import U32, AdapterKind, FileModule, LayerPlan, rounding, scale_of

DOWN, UP, DORA = "lora_down.weight", "lora_up.weight", "dora_scale"


class LoraKind(AdapterKind):
    name = "lora"
    known_suffixes, marker_suffixes = suffixes.KINDS["lora"]

    def owns_layer(self, layer: Any) -> bool:
        from peft.tuners.lora import LoraLayer

        return isinstance(layer, LoraLayer)

    def peft_config(self, settings: Any, targets: list[str], plans: dict[str, LayerPlan]) -> Any:
        from peft import LoraConfig

        rank, alpha = settings.rank, settings.alpha
        return LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=settings.dropout,
            init_lora_weights=True,  # A ~ kaiming-uniform, B = 0: identity at init
            target_modules=targets,
            rank_pattern={_exact(n): p.rank for n, p in plans.items() if p.rank != rank},
            alpha_pattern={_exact(n): p.alpha for n, p in plans.items() if p.alpha != alpha},
            use_rslora=settings.rslora,
            use_dora=settings.use_dora,
        )

    def file_parts(self, layer: Any, adapter: str) -> tuple[dict[str, torch.Tensor], float]:
        down = layer.lora_A[adapter].weight.detach()  # (r, in) or (r, in, kh, kw)
        up = layer.lora_B[adapter].weight.detach()  # (out, r) or (out, r, 1, 1)
        parts = {DOWN: down, UP: up}
        if adapter in getattr(layer, "lora_magnitude_vector", {}):
            magnitude = layer.lora_magnitude_vector[adapter].weight.detach()  # (out,)
            base = layer.get_base_layer().weight
            parts[DORA] = magnitude.reshape(base.shape[0], *[1] * (base.dim() - 1))
        return parts, float(layer.scaling[adapter]) * int(down.shape[0])

    def linear_delta(self, parts: dict[str, torch.Tensor], alpha: float | None, shape: torch.Size) -> torch.Tensor:
        down, up = parts[DOWN].float(), parts[UP].float()
        scale = scale_of(alpha, int(down.shape[0]))
        return (scale * (up.flatten(1) @ down.flatten(1))).reshape(shape)

    def accumulation(self, parts: dict[str, torch.Tensor]) -> int:
        return int(parts[DOWN].shape[0])

    def delta(self, parts: dict[str, torch.Tensor], alpha: float | None, base: torch.Tensor) -> torch.Tensor:
        lora = self.linear_delta(parts, alpha, base.shape)
        if DORA not in parts:
            return lora
        weight = base.float()
        adapted = weight + lora
        return parts[DORA].float() / _norm(adapted, parts[DORA]) * adapted - weight

    def delta_bound(self, parts: dict[str, torch.Tensor], alpha: float | None, base: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
        lora_parts = {k: v for k, v in parts.items() if k != DORA}
        bound = super().delta_bound(lora_parts, alpha, base, dtype)
        if DORA not in parts:
            return bound
        # W' = W + L moves by `bound`; m by u|m| + h; their effect on m·W'/‖W'‖, to first order, plus the
        # fp32 rounding of the norm (one u32 per summed square) and of the final subtraction of W.
        u, h = rounding(dtype)
        weight = base.float()
        adapted = weight + self.linear_delta(parts, alpha, base.shape)
        m = parts[DORA].float().abs()
        norm = _norm(adapted, parts[DORA])
        norm_shift = _norm(bound, parts[DORA])
        fan = adapted[0].numel()
        return (
            (u * m + h) / norm * adapted.abs()
            + m / norm * bound
            + m * adapted.abs() * norm_shift / norm**2
            + (fan + 4) * U32 * m / norm * adapted.abs()
            + 2 * U32 * weight.abs()
        )

    def peft_tensor(self, layer: Any, adapter: str, suffix: str) -> torch.Tensor | None:
        tables = {DOWN: layer.lora_A, UP: layer.lora_B, DORA: getattr(layer, "lora_magnitude_vector", {})}
        table = tables.get(suffix, {})
        return table[adapter].weight if adapter in table else None

    def missing_parts(self, parts: dict[str, torch.Tensor]) -> list[str]:
        return sorted(suffixes.needed(self.name, set(parts)) - set(parts))

    def file_rank(self, parts: dict[str, torch.Tensor]) -> int:
        return int(parts[DOWN].shape[0])

    def load(self, layer: Any, adapter: str, module: FileModule) -> None:
        """Copy the factors, rescaling ``up`` for the network's own scale: (alpha_f / r) · up = scaling · up'."""
        parts = module.parts
        ratio = scale_of(module.alpha, self.file_rank(parts)) / float(layer.scaling[adapter])
        with torch.no_grad():
            layer.lora_A[adapter].weight.copy_(parts[DOWN])
            layer.lora_B[adapter].weight.copy_(parts[UP].float() * ratio)
            if DORA in parts:
                layer.lora_magnitude_vector[adapter].weight.copy_(parts[DORA].reshape(-1))


def _norm(weight: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """‖W‖ per output channel (``dora_scale`` of shape (out, 1, …)) or per input channel ((1, in, …), the
    orientation older LyCORIS files use), shaped to broadcast against W."""
    if dora_scale.shape[0] == weight.shape[0]:
        return weight.flatten(1).norm(dim=1).reshape(weight.shape[0], *[1] * (weight.dim() - 1))
    per_in = weight.transpose(0, 1).flatten(1).norm(dim=1)
    return per_in.reshape(1, weight.shape[1], *[1] * (weight.dim() - 2))


def _exact(name: str) -> str:
    """A PEFT pattern matching exactly the module ``name`` (PEFT matches ``(.*\\.)?(pattern)$``)."""
    import re

    return re.escape(name)


KIND = LoraKind()
