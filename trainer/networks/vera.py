"""VeRA (Kopiczko et al. 2024): PEFT's ``VeraConfig``, written as a plain kohya LoRA.

Every adapted layer shares two frozen random matrices drawn once from ``network.vera_projection_seed``:
A (r, in_max) and B (out_max, r), sliced to the layer's size; only two vectors per layer train, d (r,) and
b (out,). ``ΔW = diag(b)·B[:out]·diag(d)·A[:, :in]`` (``VeraLayer.get_delta_weight``), so the file holds

- ``lora_up`` = diag(b)·B[:out] (out, r) and ``lora_down`` = diag(d)·A[:, :in] (r, in);
- ``alpha`` = r: every client's alpha / rank is 1, VeRA has no scale of its own.

VeRA exists for Linear layers only (PEFT: ``nn.Linear`` and ``Conv1D``): convolutions in the targets are
skipped, with a note in the log (``linear_only``). PEFT refuses ``inject_adapter_in_model`` (diffusers'
``add_adapter``) for VeRA because A and B live on the tuner, so ``inject`` builds PEFT's ``VeraModel`` on
the component directly; the layers keep references to the shared matrices. Files are read back as ``lora``.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.errors import UserFacingError
from trainer.network import ADAPTER_NAME
from trainer.networks.base import FileModule, LayerPlan
from trainer.networks.lora import DOWN, UP, LoraKind


class VeraKind(LoraKind):
    name = "vera"
    marker_suffixes = ()  # its files are plain LoRA files
    linear_only = True

    def owns_layer(self, layer: Any) -> bool:
        from peft.tuners.vera import VeraLayer

        return isinstance(layer, VeraLayer)

    def peft_config(self, settings: Any, targets: list[str], plans: dict[str, LayerPlan]) -> Any:
        from peft import VeraConfig

        return VeraConfig(
            r=settings.rank,
            target_modules=targets,
            projection_prng_key=settings.vera_projection_seed,
            save_projection=False,  # A and B are redrawn from the seed (PEFT saves them only through a PeftModel)
            vera_dropout=settings.dropout,
            init_weights=True,  # b = 0: identity at init
        )

    @staticmethod
    def inject(module: torch.nn.Module, config: Any) -> None:
        from peft.tuners.vera import VeraModel

        VeraModel(module, config, ADAPTER_NAME)  # wraps the target layers in place; sets module.peft_config
        module._hf_peft_config_loaded = True  # what diffusers/transformers' add_adapter sets

    def file_parts(self, layer: Any, adapter: str) -> tuple[dict[str, torch.Tensor], float]:
        a = layer.vera_A[adapter][:, : layer.in_features].detach().float()  # (r, in)
        b = layer.vera_B[adapter][: layer.out_features, :].detach().float()  # (out, r)
        lambda_d = layer.vera_lambda_d[adapter].detach().float()  # (r,)
        lambda_b = layer.vera_lambda_b[adapter].detach().float()  # (out,)
        return {DOWN: lambda_d[:, None] * a, UP: lambda_b[:, None] * b}, float(a.shape[0])

    def layer_rank(self, layer: Any, adapter: str) -> int:
        return int(layer.r[adapter])

    def load(self, layer: Any, adapter: str, module: FileModule) -> None:
        raise UserFacingError("a VeRA run cannot start from a file (`network.init_from`); see its validation")


KIND = VeraKind()
