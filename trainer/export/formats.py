"""The two adapter file formats: building their state dicts, and reading either back into ``LoraModule``s.

- kohya (sd-scripts, ComfyUI, AUTOMATIC1111): ``NAME.lora_down.weight`` (= PEFT lora_A), ``NAME.lora_up.weight``
  (= lora_B) and a 0-dim ``NAME.alpha`` per module; the update is ``alpha / rank · up @ down``.
- diffusers/PEFT: ``COMPONENT.PATH.lora_A.weight`` / ``lora_B.weight``. PEFT keys carry no alpha, so the
  LoraConfig of each component goes into the ``lora_adapter_metadata`` header entry, exactly where
  diffusers' own ``save_lora_weights`` puts it and ``load_lora_weights`` reads it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.errors import UserFacingError
from trainer.export.keys import (
    TEXT_MODEL_CHILDREN,
    AdaptedLayer,
    KohyaNaming,
    LoraModule,
    adapted_layers,
    adapter_modules,
    canonical_path,
)

KOHYA = "kohya"
DIFFUSERS = "diffusers"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY; spelled out so reading needs no diffusers import.
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
# Kinds whose layers are written as plain ``lora_down``/``lora_up`` (AdaLoRA and VeRA: see their modules).
PLAIN_LORA_KINDS = ("lora", "adalora", "vera")


class AdapterFileError(UserFacingError):
    """An adapter file that cannot be read or does not fit the model, with what to do about it."""


def to_dtype(dtype: Any) -> torch.dtype:
    """``fp16``/``bf16``/``fp32`` (``export.dtype``) or a torch dtype."""
    return DTYPES[dtype] if isinstance(dtype, str) else dtype


def kohya_state_dict(
    model: Any, alpha: float | None = None, dtype: Any = torch.float16, dora_layout: str = "magnitude"
) -> dict[str, torch.Tensor]:
    """The model's adapter, any kind, under sd-scripts' / LyCORIS's key names (see ``kohya_layer_tensors``);
    with ``dora_layout = "full"`` each DoRA layer is written as its whole ΔW (``networks/full.py``)."""
    layers = adapted_layers(model)
    if dora_layout == "full":
        from trainer.networks import kind

        full = kind("full")
        for layer in layers:
            if "dora_scale" in layer.parts:
                layer.kind = full.name
                layer.parts, layer.alpha = full.file_parts(layer.layer, "default")
    return kohya_layer_tensors(layers, KohyaNaming.for_model(model), alpha, dtype)


def kohya_layer_tensors(
    layers: list[AdaptedLayer], naming: KohyaNaming, alpha: float | None = None, dtype: Any = torch.float16
) -> dict[str, torch.Tensor]:
    """``NAME.SUFFIX`` for each of a layer's file tensors (``lora_down.weight``, ``hada_w1_a``, ``lokr_w1``…,
    as its kind writes them) plus a scalar ``NAME.alpha``, weights in ``dtype``, alpha in fp32.

    ``alpha`` (``network.alpha``), when given, is written instead of each plain LoRA module's own, the ratio
    folded into ``lora_up`` (see ``kohya_tensors``); LoHa, LoKr and DoRA modules keep their own.
    """
    dtype = to_dtype(dtype)
    out: dict[str, torch.Tensor] = {}
    for layer in layers:
        name = naming.name(layer.component, layer.path)
        parts, written = dict(layer.parts), layer.alpha
        plain = layer.kind in PLAIN_LORA_KINDS and "dora_scale" not in parts
        if plain and alpha is not None:
            written = float(alpha)
            if written != layer.alpha:
                parts["lora_up.weight"] = parts["lora_up.weight"].float() * (layer.alpha / written)
        for suffix, tensor in parts.items():
            out[f"{name}.{suffix}"] = tensor.to("cpu", dtype).contiguous()
        if layer.kind != "full":  # a whole ΔW has no scale (LyCORIS writes no alpha for it)
            out[f"{name}.alpha"] = torch.tensor(written, dtype=torch.float32)
    return out


def kohya_tensors(
    modules: list[LoraModule], naming: KohyaNaming, alpha: float | None = None, dtype: Any = torch.float16
) -> dict[str, torch.Tensor]:
    """Kohya keys, weights in ``dtype``, a scalar alpha on every module.

    ``alpha`` is the value written (``network.alpha``); when it differs from a module's own, the ratio
    is folded into ``lora_up`` so the file still reproduces the model. Alpha is stored as fp32:
    loaders read it with ``.item()``, and fp16/bf16 would round alphas such as 0.3.
    """
    dtype = to_dtype(dtype)
    out: dict[str, torch.Tensor] = {}
    for m in modules:
        name = naming.name(m.component, m.path)
        written = m.alpha if alpha is None else float(alpha)
        up = m.up.float() * (m.alpha / written) if written != m.alpha else m.up
        out[f"{name}.lora_down.weight"] = m.down.to("cpu", dtype).contiguous()
        out[f"{name}.lora_up.weight"] = up.to("cpu", dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(written, dtype=torch.float32)
    return out


def diffusers_state_dict(model: Any, dtype: Any = torch.float32) -> dict[str, torch.Tensor]:
    """The model's adapter under PEFT keys (see ``diffusers_tensors``)."""
    return diffusers_tensors(adapter_modules(model), dtype)


def diffusers_tensors(modules: list[LoraModule], dtype: Any = torch.float32) -> dict[str, torch.Tensor]:
    """PEFT keys prefixed by the pipeline component, as diffusers' ``save_lora_weights`` writes them.

    Text-encoder paths keep ``text_model.`` so that diffusers with transformers 4 finds them too;
    diffusers with transformers 5 strips it when loading.
    """
    dtype = to_dtype(dtype)
    out: dict[str, torch.Tensor] = {}
    for m in modules:
        out[f"{m.component}.{m.path}.lora_A.weight"] = m.down.to("cpu", dtype).contiguous()
        out[f"{m.component}.{m.path}.lora_B.weight"] = m.up.to("cpu", dtype).contiguous()
    return out


def diffusers_adapter_metadata(modules: list[LoraModule]) -> dict[str, str]:
    """The ``lora_adapter_metadata`` header entry: each component's LoraConfig kwargs.

    Targets are the full module paths without ``text_model.``: PEFT matches a target by equality or
    by suffix, so they hit the same layers with transformers 4 and 5. Layers whose rank or alpha differ
    from the component's most common one (LoCon's convolutions, block-wise settings) go into PEFT's
    ``rank_pattern`` / ``alpha_pattern``, keyed by the escaped path (PEFT matches ``(.*\\.)?(key)$``).
    """
    packed: dict[str, Any] = {}
    for component in dict.fromkeys(m.component for m in modules):
        mods = [m for m in modules if m.component == component]
        rank = Counter(m.rank for m in mods).most_common(1)[0][0]
        alpha = Counter(m.alpha for m in mods).most_common(1)[0][0]
        values = {
            "r": rank,
            "lora_alpha": alpha,
            "target_modules": sorted(m.path.removeprefix("text_model.") for m in mods),
            "lora_dropout": 0.0,
            "init_lora_weights": True,
            "rank_pattern": {_pattern(m.path): m.rank for m in mods if m.rank != rank},
            "alpha_pattern": {_pattern(m.path): m.alpha for m in mods if m.alpha != alpha},
        }
        packed.update({f"{component}.{k}": v for k, v in values.items()})
    return {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)}


def _pattern(path: str) -> str:
    return re.escape(path.removeprefix("text_model."))


def _pattern_value(patterns: dict[str, Any], path: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key`` rule: the first pattern matching ``(.*\\.)?(pattern)$``."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class AdapterFile:
    """An adapter file parsed into modules; kohya modules are still unresolved (``component`` empty)."""

    path: Path
    format: str
    modules: dict[str, LoraModule]  # by file module name (kohya name, or COMPONENT.PATH)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.modules.values())).down.dtype


def read_adapter_file(path: Path) -> AdapterFile:
    """Open a kohya- or diffusers-format ``.safetensors`` adapter; errors name the file and the keys."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise AdapterFileError(f"{path}: adapters are read from .safetensors files only")
    try:
        tensors = load_file(str(path))
        metadata = _header_metadata(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterFileError(f"{path}: not a readable .safetensors file ({err})") from None
    if any(k.endswith(".lora_down.weight") for k in tensors):
        return AdapterFile(path, KOHYA, _kohya_modules(path, tensors), metadata)
    if any(k.endswith(".lora_A.weight") for k in tensors):
        return AdapterFile(path, DIFFUSERS, _diffusers_modules(path, tensors, metadata), metadata)
    raise AdapterFileError(
        f"{path}: no LoRA weights found (expected kohya `.lora_down.weight` or PEFT `.lora_A.weight` keys); "
        f"first keys: {', '.join(list(tensors)[:3]) or 'none'}"
    )


def _header_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def group_by_module(tensors: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Kohya/LyCORIS keys ``<module>.<part>`` as {module: {part: value}} (``lora_down.weight``, ``alpha``, …)."""
    groups: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, suffix = key.partition(".")
        groups.setdefault(name, {})[suffix] = value
    return groups


def _kohya_modules(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, LoraModule]:
    groups = group_by_module(tensors)
    modules, problems = {}, []
    for name, parts in groups.items():
        extra = sorted(set(parts) - {"lora_down.weight", "lora_up.weight", "alpha"})
        if extra or "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            problems.append(f"{name} ({', '.join(sorted(parts))})")
            continue
        down = parts["lora_down.weight"]
        # sd-scripts: a module without alpha uses alpha = rank (scale 1).
        alpha = float(parts["alpha"].item()) if "alpha" in parts else float(down.shape[0])
        modules[name] = LoraModule(component="", path=name, down=down, up=parts["lora_up.weight"], alpha=alpha)
    if problems:
        raise AdapterFileError(
            f"{path}: not a plain LoRA (LoHa, LoKr, DoRA or incomplete modules have no diffusers/PEFT form; "
            "init_from, sample and the self-check read them as kohya/LyCORIS files): "
            f"{'; '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}"
        )
    return modules


def _diffusers_modules(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, LoraModule]:
    configs = _component_configs(path, metadata)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            if key.endswith(f".{part}.weight"):
                pairs.setdefault(key.removesuffix(f".{part}.weight"), {})[part] = value
                break
        else:
            raise AdapterFileError(f"{path}: unexpected key {key!r} in a diffusers/PEFT LoRA file")
    modules = {}
    for name, parts in pairs.items():
        component, _, module = name.partition(".")
        if len(parts) != 2 or not module:
            raise AdapterFileError(f"{path}: module {name!r} lacks lora_A or lora_B, or has no component prefix")
        if component.startswith("text_encoder") and module.split(".", 1)[0] in TEXT_MODEL_CHILDREN:
            module = f"text_model.{module}"
        rank = int(parts["lora_A"].shape[0])
        config = configs.get(component, {})
        # Without metadata diffusers loads PEFT keys with alpha = rank; do the same.
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", rank)))
        modules[f"{component}.{module}"] = LoraModule(component, module, parts["lora_A"], parts["lora_B"], alpha)
    return modules


def _component_configs(path: Path, metadata: dict[str, str]) -> dict[str, dict[str, Any]]:
    raw = metadata.get(LORA_ADAPTER_METADATA_KEY)
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError:
        raise AdapterFileError(f"{path}: header entry {LORA_ADAPTER_METADATA_KEY!r} is not valid JSON") from None
    configs: dict[str, dict[str, Any]] = {}
    for key, value in packed.items():
        component, _, name = key.partition(".")
        configs.setdefault(component, {})[name] = value
    return configs


def resolve_modules(adapter: AdapterFile, model: Any) -> tuple[list[LoraModule], list[str]]:
    """Attach each file module to a (component, path) of ``model``; returns (resolved, unknown names).

    Kohya names cannot be split back at ``_`` unambiguously (``to_q`` vs ``to.q``), so they are looked
    up in a table built from the model's own layers (every ``KohyaNaming.spellings`` of each).
    """
    table = layer_table(model)
    known = set(table.values())
    resolved, unknown = [], []
    for name, m in adapter.modules.items():
        if adapter.format == KOHYA:
            hit = table.get(name)
        else:
            hit = (m.component, m.path) if (m.component, m.path) in known else None
        if hit is None:
            unknown.append(name)
            continue
        resolved.append(LoraModule(hit[0], hit[1], m.down, m.up, m.alpha))
    return resolved, unknown


def layer_table(model: Any) -> dict[str, tuple[str, str]]:
    """Kohya name -> (component, canonical path) for every Linear/Conv2d layer of the model."""
    naming = KohyaNaming.for_model(model)
    table: dict[str, tuple[str, str]] = {}
    for component, module in model.component_modules().items():
        for name, layer in module.named_modules():
            parts = name.split(".")
            if "base_layer" in parts or any(p.startswith("lora_") for p in parts):
                continue
            base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
            if not isinstance(base, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            path = canonical_path(component, module, name)
            for key in naming.spellings(component, path):
                table[key] = (component, path)
    return table
