"""Adapter kinds: one module each, registered in ``KIND_MODULES``; adding a kind is one new module here.

``network.type`` picks a kind: ``lora`` and ``locon`` (LoRA that also adapts the UNet's ResNet and
sampler convolutions) are ``lora.py``; ``loha`` and ``lokr`` the LyCORIS kinds of the same names.

Why PEFT and not ``lycoris-lora`` for LoHa/LoKr. Both were compared on what matters here:

- *Files the clients read.* LyCORIS defines the keys ComfyUI and AUTOMATIC1111 read (``hada_*``,
  ``lokr_*``); PEFT's LoHa/LoKr layers hold the same matrices under the same names and shapes (PEFT
  ported them from LyCORIS, citing its commits), so writing LyCORIS keys from PEFT is a rename plus,
  for LoKr with two whole factors, folding PEFT's scale into ``lokr_w1`` (see ``lokr.py``). Neither
  library writes diffusers-loadable LoHa/LoKr for SD.
- *Init and scaling.* Both start at ΔW = 0 (PEFT zeroes ``hada_w2_b`` / ``lokr_w1``; LyCORIS zeroes
  ``hada_w2_a`` / ``lokr_w2``); both scale by alpha / r except LyCORIS's scale 1 for whole-factor LoKr.
- *Conv layers.* Both adapt Conv2d in the flattened form clients read (and optional Tucker forms).
- *How it attaches.* LyCORIS replaces each target's ``forward`` (``apply_to``) and keeps its own
  network object; PEFT wraps layers (``base_layer`` + adapter), the mechanism diffusers and
  transformers already use for our LoRA: one injection path, one set of enable/disable/merge calls,
  one checkpoint format, and ``pipe.disable_lora()`` for base-vs-adapted previews. That decided it
  (STYLE: wrap, don't patch), with no new dependency.
- *Maintenance.* Both are maintained; PEFT is already a dependency and tested with our diffusers.
DoRA for LoHa/LoKr exists in LyCORIS only, so ``network.use_dora`` is offered for lora/locon.

This package's ``__init__`` and ``blocks`` import no torch (the config's validation uses them).
"""

from __future__ import annotations

import importlib
from typing import Any

from trainer.config import NETWORK_TYPES

__all__ = ["NETWORK_TYPES", "TYPE_KINDS", "all_kinds", "is_adapter_param", "kind", "kind_of_layer", "kind_of_parts"]
# network.type -> the module that implements it
TYPE_KINDS = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr", "adalora": "adalora", "vera": "vera"}
# AdaLoRA's PEFT layer is a LoraLayer subclass: it comes first so that it is told apart from LoRA.
KIND_MODULES = ("adalora", "vera", "lora", "loha", "lokr", "full")  # full: a written-only kind (DoRA as whole ΔW)
# PEFT's parameter prefixes of the kinds: lora_A/lora_B/lora_magnitude_vector, hada_*, lokr_*.
# VeRA trains only its scaling vectors (vera_lambda_b/_d); its shared vera_A/vera_B are frozen buffers.
ADAPTER_PARAM_PREFIXES = ("lora_", "hada_", "lokr_", "vera_lambda")
# Types that adapt the UNet's ResNet/sampler convolutions without `network.conv_rank` being set.
CONV_BY_DEFAULT = ("locon",)


def is_adapter_param(name: str) -> bool:
    """A parameter (or module path) that belongs to a PEFT adapter of any kind we train."""
    return any(part.startswith(ADAPTER_PARAM_PREFIXES) for part in name.split("."))


# Adapter tensors that do not train: AdaLoRA's rank count, VeRA's shared frozen projections.
ADAPTER_STATE_PARTS = ("ranknum", "vera_A", "vera_B")


def is_adapter_tensor(name: str) -> bool:
    """Any tensor (trained or not) that belongs to an adapter rather than to the base model."""
    return is_adapter_param(name) or any(part in ADAPTER_STATE_PARTS for part in name.split("."))


def kind(name: str) -> Any:
    """The ``AdapterKind`` of a kind name (``lora``, ``loha``, ``lokr``) or of a ``network.type``."""
    return importlib.import_module(f"trainer.networks.{TYPE_KINDS.get(name, name)}").KIND


def all_kinds() -> list[Any]:
    return [kind(name) for name in KIND_MODULES]


def kind_of_layer(layer: Any) -> Any | None:
    """The kind whose PEFT layer ``layer`` is, or None."""
    return next((k for k in all_kinds() if k.owns_layer(layer)), None)


def kind_of_parts(parts: dict[str, Any]) -> Any | None:
    """The kind a file module's key suffixes belong to, or None."""
    return next((k for k in all_kinds() if any(s in parts for s in k.marker_suffixes)), None)
