"""Load an adapter file (kohya or diffusers format) into the PEFT layers already injected in a model.

Used by ``network.init_from``: a run starts from an existing adapter instead of B = 0. The file must
fit the network exactly (same layers, same rank); anything else stops with a message saying which
setting to change, because a half-loaded adapter would train on silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.export.formats import AdapterFileError, LoraModule, read_adapter_file, resolve_modules
from trainer.export.keys import adapted_components, canonical_path, lora_layers
from trainer.network import ADAPTER_NAME


class AdapterMismatchError(AdapterFileError):
    """The file's layers, ranks or shapes do not fit the injected network."""


@dataclass
class LoadedAdapter:
    """What was loaded; ``left_at_init`` lists adapted components the file has nothing for."""

    path: Path
    format: str
    modules: int
    left_at_init: list[str] = field(default_factory=list)


def load_adapter_weights(model: Any, path: Path) -> LoadedAdapter:
    """Copy the file's LoRA weights into ``model``'s injected adapter, rescaling for a different alpha.

    A component the network adapts but the file does not cover (e.g. a text encoder trained now but
    not before) keeps its fresh init (B = 0); see ``LoadedAdapter.left_at_init``.
    """
    path = Path(path)
    adapter = read_adapter_file(path)
    modules, unknown = resolve_modules(adapter, model)
    if unknown:
        raise AdapterMismatchError(
            f"{path}: {len(unknown)} of its {len(adapter.modules)} modules match no layer of base model "
            f"{model.name_or_path!r} (e.g. {unknown[0]}); it was made for a different base model"
        )
    layers = {
        c: {canonical_path(c, mod, n): layer for n, layer in lora_layers(mod).items()}
        for c, mod in adapted_components(model).items()
    }
    _check_fit(path, modules, layers)
    with torch.no_grad():
        for m in modules:
            layer = layers[m.component][m.path]
            # Same update with the network's own scale: (alpha_f / r) · up = scaling · up'.
            up = m.up.float() * (m.alpha / m.rank / layer.scaling[ADAPTER_NAME])
            layer.lora_A[ADAPTER_NAME].weight.copy_(m.down)
            layer.lora_B[ADAPTER_NAME].weight.copy_(up)
    covered = {m.component for m in modules}
    return LoadedAdapter(path, adapter.format, len(modules), sorted(set(layers) - covered))


def _check_fit(path: Path, modules: list[LoraModule], layers: dict[str, dict[str, Any]]) -> None:
    outside = [f"{m.component}.{m.path}" for m in modules if m.path not in layers.get(m.component, {})]
    if outside:
        raise AdapterMismatchError(
            f"{path}: {len(outside)} module(s) are layers this network does not adapt (e.g. {outside[0]}); "
            "set `network.unet_targets` (`kohya` adds proj_in/proj_out/feed-forward), "
            "`network.train_text_encoder` and `network.text_encoder_mlp` to match the file"
        )
    ranks = sorted({m.rank for m in modules})
    network_ranks = sorted({layer.r[ADAPTER_NAME] for comp in layers.values() for layer in comp.values()})
    if ranks != network_ranks:
        raise AdapterMismatchError(
            f"{path}: the file has rank {', '.join(map(str, ranks))} but `network.rank` is "
            f"{', '.join(map(str, network_ranks))}; set `network.rank = {ranks[0]}` to start from this adapter"
        )
    for m in modules:
        layer = layers[m.component][m.path]
        want = (tuple(layer.lora_A[ADAPTER_NAME].weight.shape), tuple(layer.lora_B[ADAPTER_NAME].weight.shape))
        if (tuple(m.down.shape), tuple(m.up.shape)) != want:
            raise AdapterMismatchError(
                f"{path}: {m.component}.{m.path} has shapes {tuple(m.down.shape)}/{tuple(m.up.shape)}, the "
                f"network {want[0]}/{want[1]}; the adapter was made for a different base model"
            )
    for component in {m.component for m in modules}:
        missing = set(layers[component]) - {m.path for m in modules if m.component == component}
        if missing:
            raise AdapterMismatchError(
                f"{path}: covers only part of the {component}'s adapted layers ({len(missing)} missing, e.g. "
                f"{sorted(missing)[0]}); set `network.unet_targets` / `network.text_encoder_mlp` to the file's targets"
            )
