"""A kohya/LyCORIS file of any adapter kind, read module by module (``networks.base.FileModule``).

Keys are ``MODULE.SUFFIX``: sd-scripts and LyCORIS name the module (``lora_unet_…``, ``lora_te_…``)
and the suffix says what the tensor is (``lora_down.weight``, ``hada_w1_a``, ``lokr_w1``, ``dora_scale``,
``alpha``). Each module's kind is told by its suffixes (``networks.kind_of_parts``), as ComfyUI's
``comfy/lora.py: load_lora`` tries each weight adapter's ``load`` on the module name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.export.formats import AdapterFileError, group_by_module, layer_table
from trainer.networks import kind_of_parts
from trainer.networks.base import FileModule

LISTED = 5


@dataclass
class KohyaFile:
    path: Path
    modules: dict[str, FileModule]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.modules.values())).dtype

    @property
    def kinds(self) -> set[str]:
        return {m.kind for m in self.modules.values()}

    @property
    def has_dora(self) -> bool:
        return any("dora_scale" in m.parts for m in self.modules.values())


def is_kohya_keys(keys: list[str]) -> bool:
    """Any module of a kind we read (``lora_down``, ``hada_*``, ``lokr_*``)."""
    return any(kind_of_parts(parts) is not None for parts in group_by_module(dict.fromkeys(keys)).values())


def read_kohya_file(path: Path) -> KohyaFile:
    """Every module of a kohya/LyCORIS ``.safetensors`` file; AdapterFileError names the modules that are
    of no kind we read, carry unknown keys or lack a needed one."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterFileError(f"{path}: not a readable .safetensors file ({err})") from None
    groups = group_by_module(tensors)
    modules, problems = {}, []
    for name, parts in groups.items():
        alpha = parts.pop("alpha", None)
        kind = kind_of_parts(parts)
        if kind is None:
            problems.append(f"{name}: no adapter weights of a known kind ({', '.join(sorted(parts)) or 'only alpha'})")
            continue
        unknown = sorted(set(parts) - set(kind.known_suffixes))
        missing = kind.missing_parts(parts)
        if unknown or missing:
            what = "; ".join(s for s in (f"missing {', '.join(missing)}" if missing else "",
                                         f"unexpected {', '.join(unknown)}" if unknown else "") if s)
            problems.append(f"{name} ({kind.name}): {what}")
            continue
        modules[name] = FileModule(name, kind.name, parts, None if alpha is None else float(alpha.item()))
    if problems:
        raise AdapterFileError(
            f"{path}: {len(problems)} module(s) cannot be read: {'; '.join(problems[:LISTED])}"
            f"{' ...' if len(problems) > LISTED else ''}"
        )
    if not modules:
        raise AdapterFileError(f"{path}: no adapter modules found")
    return KohyaFile(path, modules, metadata)


def resolve_file_modules(file: KohyaFile, model: Any) -> tuple[dict[tuple[str, str], FileModule], list[str]]:
    """(component, canonical path) -> module for every file module naming a layer of ``model``, and the
    names that match none (looked up as the loader does: ``formats.layer_table``)."""
    table = layer_table(model)
    resolved, unknown = {}, []
    for name, module in file.modules.items():
        hit = table.get(name)
        if hit is None:
            unknown.append(name)
        else:
            resolved[hit] = module
    return resolved, unknown
