"""Adapter files: export (kohya and diffusers/PEFT formats, sd-scripts metadata), import, self-check.

``export_adapter`` writes what a run produces (kohya/LyCORIS keys for every adapter kind in
``trainer/networks/``) and self-checks each file (``verify``: per-module ΔW, then diffusers or a merge); ``load_adapter_weights`` starts a run from an existing file (``network.init_from``);
``convert_adapter`` rewrites a file in the other format.
"""

import importlib
from typing import Any

# Names resolve on first use (PEP 562), so ``trainer.export.keys`` — torch-free — can be imported by the
# pre-flight check without loading torch through the writers.
_WHERE = {
    "DIFFUSERS": "formats", "KOHYA": "formats", "AdapterFile": "formats", "AdapterFileError": "formats",
    "diffusers_state_dict": "formats", "kohya_state_dict": "formats", "read_adapter_file": "formats",
    "LoraModule": "keys", "adapter_modules": "keys",
    "AdapterMismatchError": "loader", "LoadedAdapter": "loader", "load_adapter_weights": "loader",
    "TrainingMetadata": "metadata",
    "Verification": "verify", "verify_adapter": "verify",
    "ExportResult": "writer", "convert_adapter": "writer", "export_adapter": "writer", "export_paths": "writer",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = [
    "DIFFUSERS",
    "KOHYA",
    "AdapterFile",
    "AdapterFileError",
    "AdapterMismatchError",
    "ExportResult",
    "LoadedAdapter",
    "LoraModule",
    "TrainingMetadata",
    "Verification",
    "adapter_modules",
    "convert_adapter",
    "diffusers_state_dict",
    "export_adapter",
    "export_paths",
    "kohya_state_dict",
    "load_adapter_weights",
    "read_adapter_file",
    "verify_adapter",
]
