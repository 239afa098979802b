"""Adapter files as the sampler takes them: opened enough to check them, and the base model they belong to.

Read before any model is loaded, so that a wrong file (a full checkpoint, a truncated download, a LoRA with
half its up-weights) is refused in a second with its name, not after a model load and a diffusers warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UserFacingError

DEFAULT_BASE = "builtin:tiny-sd"
BASE_METADATA_KEY = "ss_sd_model_name"  # sd-scripts' key for the base model a LoRA was trained on
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes in a folder
# One key per adapted layer in each format diffusers reads: kohya, PEFT, and diffusers' older one.
_LORA_DOWN_KEY = re.compile(r"(\.lora_down\.weight|\.lora_A(\.[^.]+)?\.weight|\.lora\.down\.weight)$")
_LORA_UP_KEY = re.compile(r"(\.lora_up\.weight|\.lora_B(\.[^.]+)?\.weight|\.lora\.up\.weight)$")
# Keys only LyCORIS kinds (and DoRA, and whole-ΔW "diff" modules) have: diffusers cannot load those for SD.
_MERGE_ONLY_KEY = re.compile(r"\.(hada_w1_a|lokr_w1|lokr_w1_a|lokr_w2|lokr_w2_a|dora_scale|diff)$")


@dataclass
class AdapterFile:
    """An adapter file opened enough to check it: its path, metadata and number of adapted layers."""

    path: Path
    metadata: dict[str, str]
    num_lora_layers: int
    merged: bool = False  # LoHa/LoKr/DoRA: applied by merging ΔW (see ``adapter_switching``)


def open_adapter(path: Path) -> AdapterFile:
    """Check that ``path`` is a readable safetensors file holding LoRA weights."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir() and (path / DIFFUSERS_FILE).is_file():
        path = path / DIFFUSERS_FILE
    if not path.is_file():
        raise UserFacingError(f"adapter file not found: {path}")
    if path.suffix.lower() != ".safetensors":
        raise UserFacingError(
            f"adapter {path} is not a .safetensors file; export the adapter as .safetensors"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            keys = list(handle.keys())
    except Exception as err:  # safetensors raises its own error type or OSError for a damaged header
        raise UserFacingError(
            f"adapter {path} is not a valid safetensors file ({err}); is the file complete?"
        ) from None
    lycoris = _merge_only_modules(keys)
    if lycoris:
        return AdapterFile(path=path, metadata=metadata, num_lora_layers=lycoris, merged=True)
    num_layers = sum(1 for k in keys if _LORA_DOWN_KEY.search(k))
    if not num_layers:
        raise UserFacingError(
            f"adapter {path} holds no LoRA weights (no lora_down / lora_A / hada_ / lokr_ keys among its "
            f"{len(keys)} tensors); is it a full checkpoint rather than an adapter?"
        )
    num_up = sum(1 for k in keys if _LORA_UP_KEY.search(k))
    if num_up != num_layers:
        raise UserFacingError(
            f"adapter {path} is incomplete: {num_layers} lora_down/lora_A but {num_up} lora_up/lora_B tensors; "
            "export it again"
        )
    return AdapterFile(path=path, metadata=metadata, num_lora_layers=num_layers)


def _merge_only_modules(keys: list[str]) -> int:
    """How many modules the file has when any is LoHa, LoKr, DoRA or a whole ΔW; 0 otherwise."""
    if not any(_MERGE_ONLY_KEY.search(k) for k in keys):
        return 0
    return len({k.partition(".")[0] for k in keys if not k.endswith(".alpha")})


def adapter_clip_skip(metadata: dict[str, str], family: str) -> int:
    """The clip skip an adapter was trained with (``ss_clip_skip``, as sd-scripts writes it); 1 when absent.

    Sampling with the same text-encoder layer the adapter learnt against is what A1111's "CLIP skip" setting
    is for; SDXL ignores it (its encoders always give the penultimate layer)."""
    try:
        value = int(metadata.get("ss_clip_skip", "1"))
    except ValueError:  # sd-scripts writes "None" when it was not set
        return 1
    return value if value > 1 and family != "sdxl" else 1


def default_base(adapter: AdapterFile) -> str:
    """The base model to use when ``--base`` is not given.

    First the run folder's ``config.toml`` (an adapter in a run folder or its checkpoints), which has
    the full model path; then ``ss_sd_model_name``, which sd-scripts writes as a bare name; else the
    builtin model.
    """
    from trainer.models.loading import ModelLoadError, resolve_model_source

    from_run = _run_config_base(adapter.path)
    if from_run:
        return from_run
    recorded = adapter.metadata.get(BASE_METADATA_KEY, "").strip()
    if not recorded:
        return DEFAULT_BASE
    try:
        resolve_model_source(recorded)
    except ModelLoadError as err:
        raise UserFacingError(
            f"adapter {adapter.path.name} was trained on {recorded!r} ({BASE_METADATA_KEY}), which is not "
            f"available here ({err}); pass --base with that model's folder or file"
        ) from None
    return recorded


def _run_config_base(adapter_path: Path) -> str | None:
    import tomllib

    from trainer.run_folder import CONFIG_FILE

    # run_dir/NAME.safetensors or run_dir/checkpoints/STEP/NAME.safetensors
    for folder in list(adapter_path.resolve().parents)[:3]:
        config = folder / CONFIG_FILE
        if config.is_file():
            try:
                base = tomllib.loads(config.read_text(encoding="utf-8")).get("model", {}).get("base")
            except (tomllib.TOMLDecodeError, UnicodeDecodeError, AttributeError):
                return None
            return base if isinstance(base, str) and base.strip() else None
    return None
