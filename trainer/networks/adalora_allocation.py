"""AdaLoRA's budget schedule in our loop: the two things PEFT does only inside its own wrapper.

diffusers' ``add_adapter`` injects AdaLoRA layers through ``peft.inject_adapter_in_model``, which keeps the
layers and drops the ``AdaLoraModel`` that owns the ``RankAllocator``. So here, per trained component:

- ``update(step)`` runs PEFT's own ``AdaLoraModel.update_and_allocate`` (on a stand-in object holding the
  component, its config and a PEFT ``RankAllocator``) after every optimizer step and before the gradients
  are cleared, since importance is |w · ∂L/∂w| of the step's (accumulated) gradient;
- ``orthogonal_regulariser()`` is the term ``AdaLoraModel.forward`` adds only to an output with a ``.loss``
  (a diffusers UNet's has none): the mean over every P and Q of ‖PᵀP − I‖_F / ‖QQᵀ − I‖_F, times
  ``orth_reg_weight``.

``step`` counts optimizer steps done, from 1: the last step of a run with ``tfinal = 0`` is then the one
where PEFT fixes the final allocation (``global_step == total_step - tfinal``), so the total rank after
``tfinal`` is exactly the budget ``target_r`` × layers. The allocator's smoothed importance scores and the
rank pattern are training state: ``state()`` / ``load_state()`` carry them through checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.network import ADAPTER_NAME

STATE_KEY = "adalora_rank_pattern"
_SCORES = ("ipt", "exp_avg_ipt", "exp_avg_unc")


@dataclass
class _Tuner:
    """What ``AdaLoraModel.update_and_allocate`` reads from ``self``."""

    model: torch.nn.Module
    peft_config: dict[str, Any]
    rankallocator: Any
    trainable_adapter_name: str = ADAPTER_NAME


class RankAllocation:
    """The AdaLoRA budget of each trained component (UNet, text encoders)."""

    def __init__(self, components: dict[str, torch.nn.Module]):
        from peft.tuners.adalora import RankAllocator

        self.tuners = {}
        for name, module in components.items():
            config = module.peft_config[ADAPTER_NAME]
            self.tuners[name] = _Tuner(module, {ADAPTER_NAME: config}, RankAllocator(module, config, ADAPTER_NAME))
        self.weight = next(iter(self.tuners.values())).peft_config[ADAPTER_NAME].orth_reg_weight
        self._factors = [
            (p, name.split(".")[-2] == "lora_A")
            for module in components.values()
            for name, p in module.named_parameters()
            if name.endswith(f".{ADAPTER_NAME}") and name.split(".")[-2] in ("lora_A", "lora_B")
        ]

    @classmethod
    def for_components(cls, components: dict[str, torch.nn.Module]) -> RankAllocation | None:
        """The allocation of the components that carry an AdaLoRA adapter, or None when none does."""
        from peft.tuners.adalora import AdaLoraConfig

        found = {n: m for n, m in components.items()
                 if isinstance(getattr(m, "peft_config", {}).get(ADAPTER_NAME), AdaLoraConfig)}
        return cls(found) if found else None

    def update(self, step: int) -> None:
        """PEFT's ``update_and_allocate`` for every component; call after ``optimizer.step()``, before ``zero_grad``."""
        from peft.tuners.adalora import AdaLoraModel

        for tuner in self.tuners.values():
            AdaLoraModel.update_and_allocate(tuner, step)

    def orthogonal_regulariser(self) -> torch.Tensor | float:
        """``orth_reg_weight`` × mean ‖PᵀP − I‖_F / ‖QQᵀ − I‖_F (``AdaLoraModel.forward``)."""
        if not self.weight or not self._factors:
            return 0.0
        total = 0.0
        for p, is_q in self._factors:
            gram = p @ p.T if is_q else p.T @ p  # (r, r)
            total = total + torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], device=p.device, dtype=p.dtype))
        return self.weight * total / len(self._factors)

    def rank_pattern(self) -> dict[str, dict[str, list[bool]]]:
        """Per component, PEFT's rank pattern (``…lora_E.default`` -> kept triplets); empty before the first mask."""
        return {name: dict(t.peft_config[ADAPTER_NAME].rank_pattern or {}) for name, t in self.tuners.items()}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(tensors, metadata) for a checkpoint: the allocator's importance scores and the rank pattern."""
        tensors = {}
        for component, tuner in self.tuners.items():
            for score in _SCORES:
                for name, value in getattr(tuner.rankallocator, score).items():
                    tensors[f"{component}|{score}|{name}"] = value.detach().to("cpu").contiguous()
        return tensors, {STATE_KEY: json.dumps(self.rank_pattern())}

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        patterns = json.loads(metadata.get(STATE_KEY, "{}"))
        for component, tuner in self.tuners.items():
            allocator = tuner.rankallocator
            allocator.reset_ipt()
            device = next(tuner.model.parameters()).device
            for key, value in tensors.items():
                owner, score, name = key.split("|", 2)
                if owner == component:
                    getattr(allocator, score)[name] = value.to(device)
            tuner.peft_config[ADAPTER_NAME].rank_pattern = patterns.get(component) or None


STATE_FILE = "adalora_state.safetensors"


def save_allocation(allocation: RankAllocation, folder: Path) -> None:
    """Write the allocation state into a checkpoint folder being built (``checkpoint.save_checkpoint``)."""
    from safetensors.torch import save_file

    tensors, metadata = allocation.state()
    save_file(tensors, str(Path(folder) / STATE_FILE), metadata=metadata)


def restore_allocation(allocation: RankAllocation, checkpoint: Path) -> None:
    """Continue with the checkpoint's importance scores and rank pattern (the masks themselves are the zeroed
    λ in the adapter weights, restored with them)."""
    from safetensors import safe_open

    from trainer.errors import UserFacingError

    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise UserFacingError(f"checkpoint {checkpoint} has no AdaLoRA state ({STATE_FILE}): it was made with another "
                              "`network.type`; resume with the config the run started with")
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (a handle is not iterable)
        metadata = dict(handle.metadata() or {})
    allocation.load_state(tensors, metadata)
