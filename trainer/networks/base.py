"""What every adapter kind owns, and the small shared pieces.

An adapter kind (``lora.py``, ``loha.py``, ``lokr.py``) answers four questions, each in one method:

- ``peft_config``: how it is injected (a PEFT config for the planned layers);
- ``file_parts``: how a trained PEFT layer becomes file tensors (LyCORIS/kohya key suffixes) and the
  ``alpha`` written beside them;
- ``delta``: how a file's tensors become ΔW for one layer, computed from the file alone with the
  formulas ComfyUI's ``comfy/weight_adapter/`` applies (the self-check's independent half);
- ``load``: how a file's tensors go back into an injected PEFT layer (``network.init_from``).

``trainer/networks/__init__.py`` registers the kinds in one table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

U32 = torch.finfo(torch.float32).eps / 2


@dataclass
class LayerPlan:
    """What one layer gets: rank and alpha (after block-wise settings) and its learning-rate weight."""

    rank: int
    alpha: float
    lr_weight: float = 1.0
    conv: bool = False  # a k×k convolution that takes `network.conv_rank`
    shape: tuple[int, ...] = ()  # the layer's weight shape: (out, in) or (out, in, kh, kw)


@dataclass
class FileModule:
    """One adapted layer as a file holds it: tensors by key suffix (``lora_down.weight``, ``hada_w1_a``…)
    and the module's ``alpha`` (None when the file has none)."""

    name: str
    kind: str
    parts: dict[str, torch.Tensor]
    alpha: float | None

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.parts.values())).dtype

    def on(self, device: torch.device) -> FileModule:
        """This module with its tensors on ``device``. A file is read onto the CPU while the layer it is checked
        against or merged into may be on a GPU: computing ΔW there (DoRA reads the base weight) or comparing
        it with the trained ΔW needs one device. Without this the first run's export check failed on CUDA."""
        return replace(self, parts={key: tensor.to(device) for key, tensor in self.parts.items()})

    def delta(self, base: torch.Tensor) -> torch.Tensor:
        """ΔW this module adds to a layer whose weight is ``base``, computed on ``base``'s device."""
        from trainer.networks import kind  # the registry imports this module

        return kind(self.kind).delta(self.on(base.device).parts, self.alpha, base)


class AdapterKind:
    """Base of the adapter kinds; see the module docstring for the four methods."""

    name = ""
    # Key suffixes that mark a file module as this kind, and every suffix the kind may write.
    marker_suffixes: tuple[str, ...] = ()
    known_suffixes: tuple[str, ...] = ()

    def owns_layer(self, layer: Any) -> bool:
        raise NotImplementedError

    def peft_config(self, settings: Any, targets: list[str], plans: dict[str, LayerPlan]) -> Any:
        raise NotImplementedError

    def file_parts(self, layer: Any, adapter: str) -> tuple[dict[str, torch.Tensor], float]:
        raise NotImplementedError

    def delta(self, parts: dict[str, torch.Tensor], alpha: float | None, base: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def delta_bound(self, parts: dict[str, torch.Tensor], alpha: float | None, base: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
        """Elementwise bound on how far ``delta`` moves when each stored value is rounded to ``dtype``.

        The kinds' updates are multilinear in their factors, so evaluating the update on |factors| bounds
        it: with |x' - x| <= u|x| + h per value (``rounding``), |D(f') - D(f)| <= D(|f|(1 + u) + h) - D(|f|),
        plus the fp32 sums' own rounding (``accumulation`` terms of u32 each) on D(|f|).
        """
        u, h = rounding(dtype)
        mags = {k: v.float().abs() for k, v in parts.items()}
        exact = self.linear_delta(mags, alpha, base.shape).abs()
        widened = self.linear_delta({k: v * (1 + u) + h for k, v in mags.items()}, alpha, base.shape).abs()
        return (widened - exact) + self.accumulation(parts) * U32 * exact

    def linear_delta(self, parts: dict[str, torch.Tensor], alpha: float | None, shape: torch.Size) -> torch.Tensor:
        """The update's multilinear part (everything but DoRA's normalisation), shaped like the weight."""
        raise NotImplementedError

    def accumulation(self, parts: dict[str, torch.Tensor]) -> int:
        """How many products one element of ``linear_delta`` sums (the fp32 rounding steps)."""
        raise NotImplementedError

    def missing_parts(self, parts: dict[str, torch.Tensor]) -> list[str]:
        """Suffixes a module of this kind needs but lacks (a damaged or partial file)."""
        raise NotImplementedError

    def load(self, layer: Any, adapter: str, module: FileModule) -> None:
        raise NotImplementedError

    def peft_tensor(self, layer: Any, adapter: str, suffix: str) -> torch.Tensor | None:
        """The PEFT parameter a file suffix goes into (None: the layer has no such part)."""
        return getattr(layer, suffix, {}).get(adapter)

    def layer_rank(self, layer: Any, adapter: str) -> int:
        return int(layer.r[adapter])

    def file_rank(self, parts: dict[str, torch.Tensor]) -> int:
        raise NotImplementedError


def rounding(dtype: torch.dtype) -> tuple[float, float]:
    """(u, h): unit roundoff of ``dtype`` and half its subnormal spacing. Rounding x to ``dtype`` moves it
    by at most u·|x| + h (h matters for the tiny factors of a briefly trained adapter in fp16)."""
    info = torch.finfo(dtype)
    return info.eps / 2, info.smallest_normal * info.eps / 2


def scale_of(alpha: float | None, rank: int) -> float:
    """kohya's and ComfyUI's rule: alpha / rank, and 1 when a module has no alpha."""
    return 1.0 if alpha is None else float(alpha) / rank
