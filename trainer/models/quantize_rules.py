"""Which quantized base (``model.quantize``) a machine can run, decided before any model loads. No torch.

- ``nf4``: bitsandbytes 4-bit NormalFloat (QLoRA's storage type): CUDA only, bitsandbytes installed.
- ``int8``: bitsandbytes LLM.int8 when both are there (the QLoRA papers' 8-bit baseline); otherwise
  int8 weight-only through torchao (``Int8WeightOnlyConfig``), which runs on the CPU too, so CI runs the
  real code path. torchao rather than optimum-quanto: torchao is maintained with PyTorch, PEFT trains LoRA
  on its int8 weights (``peft.tuners.lora.torchao``), and it imports here with our torch; quanto is not
  installed and in maintenance mode.
- LoRA/LoCon only: PEFT wraps quantized Linear layers for LoRA; LoHa, LoKr, AdaLoRA and VeRA layers would
  read the quantized weight as if it were a float tensor.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

QUANTIZED_TYPES = ("lora", "locon")


def quantize_problems(config: Any) -> list[str]:
    """Config-only rules (``validate``)."""
    mode, net = config.model.quantize, config.network
    if mode == "none":
        return []
    p = []
    if net.type not in QUANTIZED_TYPES:
        p.append(f"`model.quantize = \"{mode}\"` works with `network.type` \"lora\" or \"locon\" (PEFT trains those on a "
                 f"quantized base), got {net.type!r}; set `model.quantize = \"none\"`")
    if net.use_dora:
        p.append(f"`model.quantize = \"{mode}\"` does not combine with `network.use_dora` (DoRA reads the base weight's "
                 "norm); turn one of them off")
    return p


def backend(mode: str, cuda: bool) -> str:
    """``none``, ``bnb-int8``, ``bnb-nf4`` or ``torchao-int8`` for this machine (see the module docstring)."""
    if mode == "none":
        return "none"
    if cuda and _installed("bitsandbytes"):
        return f"bnb-{mode}"
    return "torchao-int8" if mode == "int8" else "unavailable"


def machine_problem(mode: str, cuda: bool | None = None) -> str | None:
    """Why ``mode`` cannot run on this machine, or None. ``cuda`` None: unknown (the torch-free pre-flight
    in the UI process decides only what it can; the trainer asks again with torch before loading)."""
    if mode == "nf4":
        if not _installed("bitsandbytes"):
            return ("`model.quantize = \"nf4\"` needs bitsandbytes and a CUDA GPU (`pip install bitsandbytes`); on this "
                    "machine use \"int8\" (int8 weight-only, runs on the CPU) or \"none\"")
        if cuda is False:
            return ("`model.quantize = \"nf4\"` needs a CUDA GPU (bitsandbytes has no 4-bit CPU kernels here); use \"int8\" "
                    "(int8 weight-only, runs on the CPU) or \"none\"")
    if mode == "int8" and not _installed("torchao") and not (cuda and _installed("bitsandbytes")):
        return ("`model.quantize = \"int8\"` needs torchao (`pip install torchao`) or, on a CUDA GPU, bitsandbytes; "
                "or set it to \"none\"")
    return None


def cuda_if_known() -> bool | None:
    """torch's answer when torch is already loaded in this process, else None (no torch import here)."""
    torch = sys.modules.get("torch")
    return bool(torch.cuda.is_available()) if torch is not None else None


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
