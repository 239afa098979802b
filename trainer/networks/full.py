"""A layer's whole update as one tensor (LyCORIS ``full``: key ``diff``): how DoRA can be written exactly.

DoRA's update ``m · (W + ΔW) / ‖W + ΔW‖ − W`` is not low-rank, and the ``dora_scale`` layout is read
differently by each client (see ``lora.py``). ``export.dora_layout = "full"`` writes the update itself,
computed by PEFT's own merge, under ``NAME.diff``: ComfyUI (``comfy/lora.py: load_lora``, a ``diff``
patch) and AUTOMATIC1111 (``network_full.py``) add it to the weight as it is. Nothing trains as this
kind, so it is only ever read: the self-check, ``sample`` and the pre-flight know it; ``init_from`` cannot
continue training from it (the factors are gone).
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.errors import UserFacingError
from trainer.networks import suffixes
from trainer.networks.base import AdapterKind, FileModule, LayerPlan

DIFF = "diff"


class FullKind(AdapterKind):
    name = "full"
    known_suffixes, marker_suffixes = suffixes.KINDS["full"]

    def owns_layer(self, layer: Any) -> bool:
        return False  # never injected: see the module docstring

    def peft_config(self, settings: Any, targets: list[str], plans: dict[str, LayerPlan]) -> Any:
        raise UserFacingError("a full-ΔW adapter (`diff` keys) is written from DoRA, never trained as such")

    def file_parts(self, layer: Any, adapter: str) -> tuple[dict[str, torch.Tensor], float]:
        from trainer.export.delta_check import trained_delta

        return {DIFF: trained_delta(layer)}, 1.0

    def linear_delta(self, parts: dict[str, torch.Tensor], alpha: float | None, shape: torch.Size) -> torch.Tensor:
        return parts[DIFF].float().reshape(shape)

    def accumulation(self, parts: dict[str, torch.Tensor]) -> int:
        return 1

    def delta(self, parts: dict[str, torch.Tensor], alpha: float | None, base: torch.Tensor) -> torch.Tensor:
        return self.linear_delta(parts, alpha, base.shape)

    def missing_parts(self, parts: dict[str, torch.Tensor]) -> list[str]:
        return [] if DIFF in parts else [DIFF]

    def file_rank(self, parts: dict[str, torch.Tensor]) -> int:
        return 0

    def load(self, layer: Any, adapter: str, module: FileModule) -> None:
        raise UserFacingError(
            f"{module.name} holds a full ΔW (`diff`, `export.dora_layout = \"full\"`): training cannot continue from "
            "it; use the run's checkpoint (`--resume`) or a file written with `export.dora_layout = \"magnitude\"`"
        )


KIND = FullKind()
