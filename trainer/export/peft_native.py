"""The native PEFT form of an AdaLoRA or VeRA adapter: ``NAME_peft/COMPONENT/`` with ``adapter_config.json`` and
``adapter_model.safetensors``, as PEFT's ``save_pretrained`` writes them, so the run can be reloaded in PEFT.

The kohya file (``formats.py``) is what clients load; this folder keeps what the kohya file cannot: AdaLoRA's
full SVD triplets (the dropped ones with λ = 0) and VeRA's vectors. Reload a component with
``inject_adapter_in_model(config, unet)`` (VeRA: ``VeraModel(unet, config, "default")``) and
``set_peft_model_state_dict(unet, weights)``.

- AdaLoRA: PEFT's own saver trims each layer to its rank pattern only through an ``AdaLoraModel``, which a
  diffusers UNet is not, so the weights are saved at the initial rank with the dropped λ at zero (the same
  ΔW) and the config without ``rank_pattern``; the pattern itself is ``rank_pattern.json`` beside it.
- VeRA: the shared A and B are not saved (``save_projection = False``): PEFT redraws them from
  ``projection_prng_key``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.atomic import atomic_dir
from trainer.network import ADAPTER_NAME

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def peft_folder(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}_peft"


def write_peft_folder(model: Any, out_dir: Path, name: str) -> Path:
    """Write every adapted component's PEFT config and weights (fp32) under ``NAME_peft/``, atomically."""
    from safetensors.torch import save_file

    from trainer.export.keys import adapted_components

    folder = peft_folder(out_dir, name)
    with atomic_dir(folder) as tmp:
        for component, module in adapted_components(model).items():
            config = module.peft_config[ADAPTER_NAME]
            pattern = getattr(config, "rank_pattern", None)
            target = tmp / component
            target.mkdir()
            weights = {k: v.detach().to("cpu").float().contiguous() for k, v in _state_dict(module, config).items()}
            save_file(weights, str(target / WEIGHTS_FILE), metadata={"format": "pt"})
            _save_config(config, target)
            if pattern:
                (target / "rank_pattern.json").write_text(json.dumps(pattern), encoding="utf-8")
    return folder


@contextlib.contextmanager
def _without_rank_pattern(config: Any) -> Iterator[None]:
    """AdaLoRA's config with ``rank_pattern`` off for the duration (see the module docstring)."""
    pattern = getattr(config, "rank_pattern", None)
    if pattern is not None:
        config.rank_pattern = None
    try:
        yield
    finally:
        if pattern is not None:
            config.rank_pattern = pattern


def _state_dict(module: Any, config: Any) -> dict[str, Any]:
    from peft import get_peft_model_state_dict

    with _without_rank_pattern(config):
        return get_peft_model_state_dict(module, adapter_name=ADAPTER_NAME)


def _save_config(config: Any, target: Path) -> None:
    with _without_rank_pattern(config):
        config.save_pretrained(str(target))
