"""AdaLoRA (Zhang et al. 2023): PEFT's ``AdaLoraConfig``, written as a plain kohya LoRA with one rank per module.

PEFT's AdaLoRA layer holds an SVD-shaped update ``ΔW = P·diag(λ)·Q · s`` with P = ``lora_B`` (out, r),
λ = ``lora_E`` (r, 1), Q = ``lora_A`` (r, in·kh·kw) and s = ``scaling / (ranknum + 1e-5)`` (``scaling`` is
``lora_alpha``, ``ranknum`` the initial rank: ``SVDLinear.get_delta_weight``). The rank allocator zeroes
the λ of the triplets it drops. The file therefore keeps exactly the triplets with λ ≠ 0:

- ``lora_up`` = P[:, k]·diag(λ[k]·s) and ``lora_down`` = Q[k] (reshaped to (k, in, kh, kw) for a conv);
- ``alpha`` = k, that module's rank, so every client's alpha / rank is 1 and the scale lives in ``lora_up``;
- a module whose whole budget went elsewhere (k = 0, ΔW = 0) writes no keys.

The file itself carries one ``alpha`` for all modules, ``network.rank`` (the average rank), with each module's
k / rank folded into its ``lora_up`` (``formats.kohya_layer_tensors``), the same ΔW: diffusers 0.42 reads
per-module alphas of a kohya file through an ``alpha_pattern`` whose UNet keys match no module
(``utils/peft_utils.py: get_peft_kwargs``) and silently applies the most common alpha everywhere, so a file
with alpha = k per module loaded wrong there (seen here as a failed self-check); one alpha loads right in
every client.

The product is the same sum as PEFT's minus the zero terms, so the file's ΔW is the trained one up to fp32
rounding. Files are read back as ``lora`` (this kind marks no key suffix of its own). The budget schedule
runs in ``adalora_allocation.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.errors import UserFacingError
from trainer.networks.base import FileModule, LayerPlan
from trainer.networks.lora import DOWN, UP, LoraKind


def init_rank(settings: Any) -> int:
    """``network.adalora_init_rank``, or 1.5 × ``rank`` (PEFT's defaults 12 → 8 keep that ratio)."""
    return settings.adalora_init_rank or max(settings.rank + 1, round(1.5 * settings.rank))


class AdaLoraKind(LoraKind):
    name = "adalora"
    marker_suffixes = ()  # its files are plain LoRA files
    needs_total_steps = True

    def owns_layer(self, layer: Any) -> bool:
        from peft.tuners.adalora import AdaLoraLayer

        return isinstance(layer, AdaLoraLayer)

    def peft_config(self, settings: Any, targets: list[str], plans: dict[str, LayerPlan], total_steps: int = 0) -> Any:
        from peft import AdaLoraConfig

        total = total_steps or settings_total_steps(settings)
        return AdaLoraConfig(
            init_r=init_rank(settings),
            target_r=settings.rank,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=targets,
            tinit=settings.adalora_tinit,
            tfinal=settings.adalora_tfinal,
            deltaT=settings.adalora_delta_t,
            beta1=settings.adalora_beta1,
            beta2=settings.adalora_beta2,
            orth_reg_weight=settings.adalora_orth_reg_weight,
            total_step=total,
            init_lora_weights=True,  # λ = 0: identity at init
        )

    def file_parts(self, layer: Any, adapter: str) -> tuple[dict[str, torch.Tensor], float]:
        p = layer.lora_B[adapter].detach()  # (out, r)
        lam = layer.lora_E[adapter].detach().reshape(-1)  # (r,)
        q = layer.lora_A[adapter].detach()  # (r, in·kh·kw)
        keep = lam != 0
        rank = int(keep.sum())
        if rank == 0:
            return {}, 0.0
        scale = layer.scaling[adapter] / (layer.ranknum[adapter].detach() + 1e-5)  # PEFT's, in fp32
        up = p[:, keep] * (lam[keep] * scale)  # (out, k)
        down = q[keep]  # (k, in·kh·kw)
        weight = layer.get_base_layer().weight
        if weight.dim() == 4:
            down = down.reshape(rank, *weight.shape[1:])
            up = up.reshape(*up.shape, 1, 1)
        return {DOWN: down, UP: up}, float(rank)

    def layer_rank(self, layer: Any, adapter: str) -> int:
        return int((layer.lora_E[adapter] != 0).sum())

    def load(self, layer: Any, adapter: str, module: FileModule) -> None:
        raise UserFacingError("an AdaLoRA run cannot start from a file (`network.init_from`); see its validation")


def settings_total_steps(settings: Any) -> int:
    """A schedule length for injecting outside a training run (tests, probes): just long enough to be valid."""
    return settings.adalora_tinit + settings.adalora_tfinal + 1


KIND = AdaLoraKind()
