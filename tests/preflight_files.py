"""What the pre-flight tests share: small safetensors files written from a state dict, and the errors about a key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

U = "model.diffusion_model."  # the UNet's key prefix in a single-file SD checkpoint


def _errors_about(report, key: str) -> list[str]:
    return [e for e in report.errors if key in e]


def _zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.float16)


def _file(tmp_path: Path, state: dict[str, np.ndarray], name: str = "model.safetensors", metadata=None) -> Path:
    path = tmp_path / name
    save_file(state, str(path), metadata=metadata)
    return path


def _sd1() -> dict[str, np.ndarray]:
    # The keys (and shapes) the family rules look at; conv_in (8, 4, 1, 1): 4 input channels, not inpainting.
    return {U + "input_blocks.0.0.weight": _zeros(8, 4, 1, 1), U + "output_blocks.11.0.skip_connection.weight": _zeros(1),
            "cond_stage_model.transformer.text_model.final_layer_norm.weight": _zeros(1), "first_stage_model.x": _zeros(1)}
