"""Adapter files: export (kohya and diffusers/PEFT formats, sd-scripts metadata), import, self-check.

``export_adapter`` writes what a run produces and checks each file by loading it into a fresh
diffusers pipeline; ``load_adapter_weights`` starts a run from an existing file (``network.init_from``);
``convert_adapter`` rewrites a file in the other format.
"""

from trainer.export.formats import (
    DIFFUSERS,
    KOHYA,
    AdapterFile,
    AdapterFileError,
    diffusers_state_dict,
    kohya_state_dict,
    read_adapter_file,
)
from trainer.export.keys import LoraModule, adapter_modules
from trainer.export.loader import AdapterMismatchError, LoadedAdapter, load_adapter_weights
from trainer.export.metadata import TrainingMetadata
from trainer.export.verify import Verification, verify_adapter
from trainer.export.writer import ExportResult, convert_adapter, export_adapter, export_paths

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
