"""Apply a kohya/LyCORIS file by adding each module's ΔW to the base weights, as ComfyUI and AUTOMATIC1111 do.

diffusers' ``load_lora_weights`` reads LoRA only (for SD it drops DoRA's ``dora_scale`` with a warning and
has no LoHa/LoKr reader), so ``sample`` applies those files this way: ``W ← W + strength · ΔW`` with ΔW
from the adapter kinds' ``delta`` (the same decoder the self-check compares with the trained model), and
``W`` restored exactly for the base image of ``--compare``. For DoRA, ΔW already is ``W' − W`` of the
decomposed weight, which is what ComfyUI scales by the strength too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.errors import UserFacingError
from trainer.export.file_modules import KohyaFile, read_kohya_file, resolve_file_modules
from trainer.export.keys import module_path


@dataclass
class MergedAdapter:
    """ΔW per adapted weight; ``apply(strength)`` sets W = W0 + strength·ΔW, ``remove()`` restores W0."""

    path: Path
    weights: list[torch.Tensor] = field(default_factory=list)  # the live parameters, modified in place
    originals: list[torch.Tensor] = field(default_factory=list)
    deltas: list[torch.Tensor] = field(default_factory=list)  # fp32, on the weight's device

    @property
    def layers(self) -> int:
        return len(self.weights)

    @torch.no_grad()
    def apply(self, strength: float) -> None:
        for weight, original, delta in zip(self.weights, self.originals, self.deltas, strict=True):
            weight.copy_((original.float() + strength * delta).to(weight.dtype))

    @torch.no_grad()
    def remove(self) -> None:
        for weight, original in zip(self.weights, self.originals, strict=True):
            weight.copy_(original)


def merge_adapter(model: Any, path: Path, file: KohyaFile | None = None) -> MergedAdapter:
    """Decode every module of the file at ``path`` against ``model`` (a ``BaseModel`` without adapters).

    Raises UserFacingError when a module names no layer of the model or its tensors do not fit the layer.
    """
    file = file or read_kohya_file(path)
    resolved, unknown = resolve_file_modules(file, model)
    if unknown:
        raise UserFacingError(
            f"adapter {path}: {len(unknown)} of its {len(file.modules)} modules match no layer of base model "
            f"{model.name_or_path!r} (e.g. {unknown[0]}); pass --base with the model it was trained on"
        )
    components = model.component_modules()
    merged = MergedAdapter(Path(path))
    for (component, canonical), module in resolved.items():
        owner = components[component]
        weight = owner.get_submodule(module_path(component, owner, canonical)).weight
        try:
            delta = module.delta(weight.detach().float())
        except (RuntimeError, ValueError, IndexError) as err:
            raise UserFacingError(
                f"adapter {path}: module {module.name} does not fit layer {component}.{canonical} of base model "
                f"{model.name_or_path!r} ({str(err).splitlines()[0][:200]}); pass --base with the model it was trained on"
            ) from None
        merged.weights.append(weight)
        merged.originals.append(weight.detach().clone())
        merged.deltas.append(delta)
    return merged
