"""The self-check's independent half: each module's ΔW from the file's keys alone vs the trained delta.

For every module of a kohya/LyCORIS file (any kind):

- ΔW from the file: the kind's ``delta`` (``trainer/networks/``), the formulas ComfyUI's
  ``comfy/weight_adapter/`` applies to exactly these keys, on the base weight the file is for;
- the trained delta: PEFT's own merge (``layer.merge``) of an fp32 copy of the trained layer, minus
  the base weight — what the adapted model computes, whatever PEFT does inside;
- they must agree within the rounding of the file's dtype (``AdapterKind.delta_bound``, doubled for
  margin, plus the fp32 merge's own rounding of W + ΔW). A wrong alpha, swapped factors, a
  transposed ``dora_scale`` or a missing key misses by orders of magnitude, and the message names the
  module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.export.file_modules import KohyaFile, read_kohya_file, resolve_file_modules
from trainer.export.keys import adapted_components, canonical_path
from trainer.network import ADAPTER_NAME, adapter_layers
from trainer.networks import kind
from trainer.networks.base import U32

LISTED = 5


@dataclass
class DeltaCheck:
    """Per-module comparison of a file with the trained model; ``deltas`` holds ΔW from the file by
    (component, path), for the output check that applies them."""

    problems: list[str]
    max_abs_diff: float
    modules: int
    deltas: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)


def trained_delta(layer: Any) -> torch.Tensor:
    """PEFT's merged weight minus the base weight, computed on an fp32 copy so the trained layer is untouched."""
    clone = copy.deepcopy(layer).float()
    with torch.no_grad():
        clone.merge(safe_merge=True, adapter_names=[ADAPTER_NAME])
    return clone.get_base_layer().weight.detach().float() - layer.get_base_layer().weight.detach().float()


def check_file_deltas(path: Path, model: Any, file: KohyaFile | None = None) -> DeltaCheck:
    """Compare every module of the kohya/LyCORIS file at ``path`` with ``model``'s trained adapter."""
    file = file or read_kohya_file(path)
    resolved, unknown = resolve_file_modules(file, model)
    trained = {
        (component, canonical_path(component, module, name)): layer
        for component, module in adapted_components(model).items()
        for name, layer in adapter_layers(module).items()
        if not _writes_nothing(layer)
    }
    problems = [f"{len(unknown)} module(s) match no layer of the base model, e.g. {unknown[0]}"] if unknown else []
    missing = sorted(set(trained) - set(resolved))
    if missing:
        problems.append(f"{len(missing)} trained layer(s) are missing from the file, e.g. {'.'.join(missing[0])}")
    worst, deltas = 0.0, {}
    for key, module in sorted(resolved.items()):
        where = f"{module.name} ({'.'.join(key)})"
        layer = trained.get(key)
        if layer is None:
            problems.append(f"{where}: the trained model has no adapter on this layer")
            continue
        base = layer.get_base_layer().weight.detach().float()
        module = module.on(base.device)
        adapter_kind = kind(module.kind)
        try:
            from_file = adapter_kind.delta(module.parts, module.alpha, base)
        except (RuntimeError, ValueError, IndexError) as err:  # shapes that do not fit: torch raises these
            problems.append(f"{where}: its {module.kind} tensors cannot be decoded for this layer ({_first_line(err)})")
            continue
        want = trained_delta(layer)
        err = (from_file - want).abs()
        # PEFT's merge rounds W + ΔW in fp32 (relative to |W| + |ΔW|) before W is subtracted again.
        tol = 2 * adapter_kind.delta_bound(module.parts, module.alpha, base, module.dtype) + 4 * U32 * (base.abs() + want.abs())
        worst = max(worst, err.max().item())
        deltas[key] = from_file
        if not (err <= tol).all():
            at = int((err - tol).argmax())
            problems.append(
                f"{where}: ΔW from the file differs from the trained delta by {err.flatten()[at]:.3g} "
                f"(tolerance {tol.flatten()[at]:.3g}, trained |ΔW| max {want.abs().max():.3g})"
            )
    return DeltaCheck(problems, worst, len(resolved), deltas)


def _writes_nothing(layer: Any) -> bool:
    """A layer whose kind writes no keys for it (an AdaLoRA layer with rank 0: its ΔW is exactly 0)."""
    from trainer.networks import kind_of_layer

    return not kind_of_layer(layer).file_parts(layer, ADAPTER_NAME)[0]


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
