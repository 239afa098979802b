"""Adapter files of any format and kind resolved against a base model: which layer each module changes,
and its ΔW there (``merge``, ``extract``'s check and ``info`` use this).

Kohya/LyCORIS files go through ``export.file_modules`` (every kind: LoRA, LoCon, DoRA, LoHa, LoKr,
full) and diffusers/PEFT files through ``export.formats``; ΔW comes from the kinds' ``delta``, the same
decoder the export self-check and ``sample`` use (the formulas ComfyUI applies to these keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# ss_base_model_version prefixes -> family (``adapter_probe.VERSION_FAMILIES``, the pre-flight's rule).
from trainer.adapter_probe import VERSION_FAMILIES  # noqa: E402  (torch-free module)
from trainer.export.keys import module_path
from trainer.models.probe import FAMILY_NAMES
from trainer.networks.base import FileModule
from trainer.networks.lora import DOWN, UP
from trainer.tools.common import ToolError, check_input_file


@dataclass
class ResolvedAdapter:
    """One adapter file against one base: module by (component, canonical layer path)."""

    path: Path
    format: str  # kohya | diffusers
    modules: dict[tuple[str, str], FileModule]
    metadata: dict[str, str]
    plain_lora: bool  # LoRA/LoCon without DoRA: diffusers' load_lora_weights reads it

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.modules.values())).dtype


def file_family(metadata: dict[str, str], keys: list[str]) -> str | None:
    """The family an adapter says it is for: ``ss_base_model_version``, else two text encoders' prefixes = SDXL."""
    version = metadata.get("ss_base_model_version", "")
    family = next((fam for prefix, fam in VERSION_FAMILIES if version.startswith(prefix)), None)
    if family:
        return family
    if any(k.startswith("lora_te2_") for k in keys) or any(k.startswith("text_encoder_2.") for k in keys):
        return "sdxl"
    return None


def header_keys(path: Path) -> list[str]:
    """Tensor names of a safetensors file; ToolError naming the file when it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError, ValueError) as err:
        raise ToolError(f"{path}: not a readable .safetensors adapter file ({err})") from None


def resolve_adapter(path: Path, model: Any) -> ResolvedAdapter:
    """Every module of the file at ``path`` attached to a layer of ``model``; ToolError (naming the file and
    the base) when the file is no adapter, or modules match no layer or do not fit the layer's shape."""
    from safetensors import SafetensorError, safe_open

    from trainer.export.file_modules import is_kohya_keys, read_kohya_file, resolve_file_modules
    from trainer.export.formats import read_adapter_file, resolve_modules

    path = check_input_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys, metadata = list(handle.keys()), dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise ToolError(f"{path}: not a readable .safetensors adapter file ({err})") from None
    _check_family(path, metadata, keys, model)
    if is_kohya_keys(keys):
        file = read_kohya_file(path)
        resolved, unknown = resolve_file_modules(file, model)
        total, fmt = len(file.modules), "kohya"
        plain = file.kinds == {"lora"} and not file.has_dora
    else:
        adapter = read_adapter_file(path)  # AdapterFileError for a non-adapter file, naming its first keys
        modules, unknown = resolve_modules(adapter, model)
        resolved = {(m.component, m.path): FileModule(f"{m.component}.{m.path}", "lora", {DOWN: m.down, UP: m.up}, m.alpha)
                    for m in modules}
        total, fmt, plain = len(adapter.modules), "diffusers", True
    if unknown:
        raise ToolError(
            f"{path}: {len(unknown)} of its {total} modules match no layer of base model {model.name_or_path!r} "
            f"(e.g. {unknown[0]}); it was made for a different base model: pass the base it was trained on"
        )
    out = ResolvedAdapter(path, fmt, resolved, metadata, plain)
    for (component, canonical), module in resolved.items():
        layer_delta(out, model, component, canonical, module)  # shape check now, before anything is written
    return out


def _check_family(path: Path, metadata: dict[str, str], keys: list[str], model: Any) -> None:
    family = file_family(metadata, keys)
    if family and family != model.family:
        raise ToolError(
            f"{path} is an adapter for {FAMILY_NAMES[family]} but base model {model.name_or_path!r} is "
            f"{FAMILY_NAMES[model.family]}; pass a {FAMILY_NAMES[family]} base model, or an adapter made for this one"
        )


def base_weight(model: Any, component: str, canonical: str) -> torch.Tensor:
    owner = model.component_modules()[component]
    return owner.get_submodule(module_path(component, owner, canonical)).weight


def layer_delta(adapter: ResolvedAdapter, model: Any, component: str, canonical: str,
                module: FileModule | None = None) -> torch.Tensor:
    """ΔW of one module in fp32, shaped like the base weight; ToolError when it does not fit the layer."""
    module = module or adapter.modules[(component, canonical)]
    weight = base_weight(model, component, canonical).detach()
    try:
        delta = module.delta(weight.float())
    except (RuntimeError, ValueError, IndexError) as err:
        raise ToolError(
            f"{adapter.path}: module {module.name} does not fit layer {component}.{canonical} of base model "
            f"{model.name_or_path!r} ({str(err).splitlines()[0][:200]}); it was made for a different base model"
        ) from None
    if tuple(delta.shape) != tuple(weight.shape):
        raise ToolError(f"{adapter.path}: module {module.name} has ΔW of shape {tuple(delta.shape)} but layer "
                        f"{component}.{canonical} is {tuple(weight.shape)}; it was made for a different base model")
    return delta
