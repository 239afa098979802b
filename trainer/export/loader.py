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
    """Copy the file's adapter weights into ``model``'s injected adapter, rescaling for a different alpha.

    A kohya/LyCORIS file of any kind we write (LoRA, LoCon, DoRA, LoHa, LoKr) goes through the kinds'
    own ``load``; a diffusers/PEFT file is LoRA. A component the network adapts but the file does not
    cover (e.g. a text encoder trained now but not before) keeps its fresh init (ΔW = 0); see
    ``LoadedAdapter.left_at_init``.
    """
    from trainer.export.file_modules import is_kohya_keys

    path = Path(path)
    if path.suffix.lower() == ".safetensors" and path.is_file() and is_kohya_keys(_keys(path)):
        return _load_kohya(model, path)
    adapter = read_adapter_file(path)
    modules, unknown = resolve_modules(adapter, model)
    if unknown:
        raise _other_base(path, len(unknown), len(adapter.modules), unknown[0], model)
    layers = _layers_by_path(model, lora_layers)
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


def _layers_by_path(model: Any, layers_of: Any) -> dict[str, dict[str, Any]]:
    """{component: {canonical module path: adapted layer}} for the layers ``layers_of(module)`` lists."""
    return {
        c: {canonical_path(c, mod, n): layer for n, layer in layers_of(mod).items()}
        for c, mod in adapted_components(model).items()
    }


def _keys(path: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError, ValueError):
        return []  # read_adapter_file names the file and the problem


def _other_base(path: Path, unknown: int, total: int, example: str, model: Any) -> AdapterMismatchError:
    return AdapterMismatchError(
        f"{path}: {unknown} of its {total} modules match no layer of base model "
        f"{model.name_or_path!r} (e.g. {example}); it was made for a different base model"
    )


def _load_kohya(model: Any, path: Path) -> LoadedAdapter:
    """``load_adapter_weights`` for kohya/LyCORIS files: every module's kind, rank and shapes must fit."""
    from trainer.export.file_modules import read_kohya_file, resolve_file_modules
    from trainer.network import adapter_layers
    from trainer.networks import kind

    file = read_kohya_file(path)
    resolved, unknown = resolve_file_modules(file, model)
    if unknown:
        raise _other_base(path, len(unknown), len(file.modules), unknown[0], model)
    layers = _layers_by_path(model, adapter_layers)
    fits = [AdapterFit(c, p, m, layers.get(c, {}).get(p)) for (c, p), m in resolved.items()]
    _check_kohya_fit(path, fits, layers)
    for fit in fits:
        kind(fit.module.kind).load(fit.layer, ADAPTER_NAME, fit.module)
    covered = {fit.component for fit in fits}
    return LoadedAdapter(path, "kohya", len(fits), sorted(set(layers) - covered))


@dataclass
class AdapterFit:
    component: str
    path: str
    module: Any  # networks.base.FileModule
    layer: Any  # the injected PEFT layer, None when the network does not adapt this layer


def _check_kohya_fit(path: Path, fits: list[AdapterFit], layers: dict[str, dict[str, Any]]) -> None:
    from trainer.networks import kind, kind_of_layer

    outside = [f for f in fits if f.layer is None]
    if outside:
        raise AdapterMismatchError(
            f"{path}: {len(outside)} module(s) are layers this network does not adapt (e.g. "
            f"{outside[0].component}.{outside[0].path}); set `network.type` (`locon` adds the ResNet convolutions), "
            "`network.unet_targets` (`kohya` adds proj_in/proj_out/feed-forward), `network.block_dims`, "
            "`network.train_text_encoder` and `network.text_encoder_mlp` to match the file"
        )
    for f in fits:
        if f.module.kind == "full":
            kind("full").load(f.layer, ADAPTER_NAME, f.module)  # raises: a whole ΔW cannot be trained on
    file_ranks = sorted({kind(f.module.kind).file_rank(f.module.parts) for f in fits})
    net_ranks = sorted({kind_of_layer(f.layer).layer_rank(f.layer, ADAPTER_NAME) for f in fits})
    same_kind = {f.module.kind for f in fits} == {kind_of_layer(f.layer).name for f in fits}
    if same_kind and len(file_ranks) == len(net_ranks) == 1 and file_ranks != net_ranks:
        raise AdapterMismatchError(
            f"{path}: the file has rank {file_ranks[0]} but `network.rank` is {net_ranks[0]}; "
            f"set `network.rank = {file_ranks[0]}` to start from this adapter"
        )
    for f in fits:
        network_kind, file_kind = kind_of_layer(f.layer), kind(f.module.kind)
        where = f"{f.module.name} ({f.component}.{f.path})"
        if network_kind is not file_kind:
            raise AdapterMismatchError(
                f"{path}: {where} is a {file_kind.name} module but the network is {network_kind.name}; "
                f"set `network.type` to the file's type ({_type_hint(file_kind.name)})"
            )
        has_dora = network_kind.peft_tensor(f.layer, ADAPTER_NAME, "dora_scale") is not None
        if file_kind.name == "lora" and ("dora_scale" in f.module.parts) != has_dora:
            raise AdapterMismatchError(
                f"{path}: {where} {'has' if 'dora_scale' in f.module.parts else 'has no'} DoRA magnitude "
                f"(dora_scale); set `network.use_dora = {'true' if 'dora_scale' in f.module.parts else 'false'}`"
            )
        file_rank, net_rank = file_kind.file_rank(f.module.parts), network_kind.layer_rank(f.layer, ADAPTER_NAME)
        if file_rank != net_rank:
            raise AdapterMismatchError(
                f"{path}: {where} has rank {file_rank} but the network gives that layer rank {net_rank}; set "
                f"`network.rank = {file_rank}` (or `network.conv_rank` / `network.block_dims` for that layer) to start "
                "from this adapter"
            )
        for suffix, tensor in f.module.parts.items():
            target = network_kind.peft_tensor(f.layer, ADAPTER_NAME, suffix)
            if target is None or target.numel() != tensor.numel():
                shape = "absent" if target is None else tuple(target.shape)
                raise AdapterMismatchError(
                    f"{path}: {where} has {suffix} of shape {tuple(tensor.shape)}, the network {shape}; "
                    "the file was made with another rank, `network.lokr_factor` or base model"
                )
    for component in {f.component for f in fits}:
        missing = set(layers[component]) - {f.path for f in fits if f.component == component}
        if missing:
            raise AdapterMismatchError(
                f"{path}: covers only part of the {component}'s adapted layers ({len(missing)} missing, e.g. "
                f"{sorted(missing)[0]}); set `network.type`, `network.unet_targets` / `network.text_encoder_mlp` "
                "and the block settings to the file's"
            )


def _type_hint(kind_name: str) -> str:
    return {"lora": "\"lora\" or \"locon\"", "loha": "\"loha\"", "lokr": "\"lokr\""}[kind_name]


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
