"""Write the adapter file(s) a run produces, atomically, and check each one after writing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.atomic import write_with
from trainer.config import Config
from trainer.errors import UserFacingError
from trainer.export.formats import (
    DIFFUSERS,
    KOHYA,
    LORA_ADAPTER_METADATA_KEY,
    diffusers_adapter_metadata,
    diffusers_state_dict,
    diffusers_tensors,
    kohya_state_dict,
    kohya_tensors,
    to_dtype,
)
from trainer.export.keys import adapted_layers, adapter_modules
from trainer.export.metadata import TrainingMetadata, safetensors_hashes, training_metadata

# Types trained with a PEFT method no client reads: their run also keeps the native PEFT form (``peft_native``).
NATIVE_PEFT_TYPES = ("adalora", "vera")


@dataclass
class ExportResult:
    """One written adapter file and the outcome of its self-check (``verified`` None: not checked)."""

    path: Path
    format: str
    keys: int
    verified: bool | None
    max_abs_diff: float | None
    message: str


def export_paths(cfg: Config, out_dir: Path) -> dict[str, Path]:
    """Format -> file: ``NAME.safetensors`` (kohya/LyCORIS) and/or ``NAME_diffusers.safetensors``."""
    from trainer.networks.settings import diffusers_blockers

    out_dir = Path(out_dir)
    paths = {KOHYA: out_dir / f"{cfg.run.name}.safetensors", DIFFUSERS: out_dir / f"{cfg.run.name}_diffusers.safetensors"}
    if cfg.export.format == "both":
        # LoHa, LoKr, DoRA, block-wise: the kohya/LyCORIS file only (pre-flight says so: ``export_warnings``).
        return {KOHYA: paths[KOHYA]} if diffusers_blockers(cfg.network) else paths
    return {cfg.export.format: paths[cfg.export.format]}


def export_adapter(
    model: Any, cfg: Config, out_dir: Path, *, metadata: TrainingMetadata, verify: bool
) -> list[ExportResult]:
    """Write the adapter in ``cfg.export.format`` and ``cfg.export.dtype``; with ``verify``, self-check each file."""
    if not adapted_layers(model):
        raise UserFacingError("nothing to export: the model carries no adapter (inject_lora was not called)")
    header = training_metadata(cfg, model, metadata)
    dtype = to_dtype(cfg.export.dtype)
    results = []
    check_model, note = _check_model(model, cfg) if verify else (model, "")
    for fmt, path in export_paths(cfg, out_dir).items():
        if fmt == KOHYA:
            tensors = kohya_state_dict(model, alpha=_written_alpha(cfg), dtype=dtype, dora_layout=cfg.export.dora_layout)
            file_meta = dict(header)
        else:
            tensors = diffusers_state_dict(model, dtype=dtype)
            file_meta = {**header, **diffusers_adapter_metadata(adapter_modules(model))}
        write_safetensors(path, tensors, file_meta)
        result = ExportResult(path, fmt, len(tensors), None, None, "written; not verified")
        if verify:
            _self_check(result, check_model)
            result.message += note
        results.append(result)
    if cfg.network.type in NATIVE_PEFT_TYPES:
        from trainer.export.peft_native import write_peft_folder

        folder = write_peft_folder(model, out_dir, cfg.run.name)
        results.append(ExportResult(folder, "peft", 0, None, None, "native PEFT adapter (adapter_config.json + weights)"))
    return results


def _check_model(model: Any, cfg: Config) -> tuple[Any, str]:
    """What the self-check compares a file with. A quantized base (``model.quantize``): the adapter on the
    original base, which is what every client applies the file to, and a note of how far that is from the
    quantized model the run trained and previewed (``models/quantize.py``)."""
    if cfg.model.quantize == "none":
        return model, ""
    from trainer.models.quantize import adapter_on_original_base, quantization_gap

    twin = adapter_on_original_base(model, cfg)
    gap = quantization_gap(model, twin)
    return twin, (
        f"; checked on the original (unquantized) base, as clients apply it: UNet output there differs from the "
        f"{cfg.model.quantize} model's by {gap['gap']:.3g} (quantization alone {gap['base_gap']:.3g}, adapter effect "
        f"{gap['adapter_effect']:.3g})"
    )


def _written_alpha(cfg: Config) -> float | None:
    """``network.alpha`` written exactly as configured for plain LoRA; None (each module's effective alpha,
    scaling · rank) where that differs from the setting: rsLoRA and per-block alphas."""
    net = cfg.network
    if net.type in ("adalora", "vera"):
        return float(net.rank)  # one alpha for the file, each module's own scale folded into lora_up (adalora.py)
    if net.rslora or net.block_alphas.strip() or net.conv_block_alphas.strip() or net.type not in ("lora", "locon"):
        return None
    if net.type == "locon" and (net.conv_alpha or net.alpha) != net.alpha:
        return None
    return net.alpha


def _self_check(result: ExportResult, model: Any) -> None:
    """Record the self-check in ``result``; the file is already written, so a crash of the check itself
    is recorded as a failed check (with its error) instead of losing the finished run."""
    from trainer.export.verify import verify_adapter

    try:
        check = verify_adapter(result.path, model)
    except Exception as err:  # the check runs diffusers/PEFT code paths that raise many types
        result.verified, result.message = False, f"self-check could not run: {type(err).__name__}: {err}"
        return
    result.verified, result.max_abs_diff, result.message = check.verified, check.max_abs_diff, check.message


def write_safetensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Atomic safetensors write with sd-scripts' ``sshs_*`` hashes added to the header."""
    from safetensors.torch import save_file

    header = {**metadata, **safetensors_hashes(tensors, metadata)}
    write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def convert_adapter(in_path: Path, out_path: Path, to_format: str, model: Any, dtype: Any = None) -> ExportResult:
    """Rewrite an adapter file in the other format, keeping its header; ``dtype`` defaults to the file's.

    ``model`` is the base model the adapter was made for (with or without an adapter injected): kohya
    names are resolved against its layers, so a file for another base is refused, not mangled.
    """
    from trainer.export.formats import read_adapter_file, resolve_modules
    from trainer.export.keys import KohyaNaming
    from trainer.export.loader import AdapterMismatchError

    if to_format not in (KOHYA, DIFFUSERS):
        raise UserFacingError(f"unknown adapter format {to_format!r}; use {KOHYA!r} or {DIFFUSERS!r}")
    source = read_adapter_file(Path(in_path))
    modules, unknown = resolve_modules(source, model)
    if unknown:
        raise AdapterMismatchError(
            f"{in_path}: {len(unknown)} module(s) match no layer of base model {model.name_or_path!r}, "
            f"e.g. {unknown[0]}; pass the base model the adapter was trained on"
        )
    dtype = to_dtype(dtype) if dtype is not None else source.dtype
    header = {k: v for k, v in source.metadata.items() if not k.startswith("sshs_") and k != LORA_ADAPTER_METADATA_KEY}
    if to_format == KOHYA:
        tensors = kohya_tensors(modules, KohyaNaming.for_model(model), dtype=dtype)
    else:
        tensors = diffusers_tensors(modules, dtype=dtype)
        header.update(diffusers_adapter_metadata(modules))
    write_safetensors(Path(out_path), tensors, header)
    return ExportResult(Path(out_path), to_format, len(tensors), None, None, f"converted from {source.format}")
