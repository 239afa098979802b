"""What the tools share: ``PATH[:WEIGHT]`` arguments, the never-overwrite rule, loading BASE, tool errors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import UserFacingError


class ToolError(UserFacingError):
    """A tool input that cannot be used (or an output check that failed), with what to do about it."""


@dataclass
class WeightedAdapter:
    path: Path
    weight: float = 1.0


_WEIGHT = re.compile(r"^(.*):(-?\d+(?:\.\d*)?(?:[eE]-?\d+)?|-?\.\d+)$")


def parse_weighted(spec: str) -> WeightedAdapter:
    """``a.safetensors`` or ``a.safetensors:0.8``; a ``:`` not followed by a number stays in the path
    (``C:\\x.safetensors``)."""
    match = _WEIGHT.match(spec)
    if match and match[1]:
        return WeightedAdapter(Path(match[1]).expanduser(), float(match[2]))
    return WeightedAdapter(Path(spec).expanduser(), 1.0)


def check_input_file(path: Path, what: str = "adapter") -> Path:
    path = Path(path)
    if not path.exists():
        raise ToolError(f"{what} file not found: {path}")
    if not path.is_file():
        raise ToolError(f"{what} {path} is a folder; pass the .safetensors file")
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        raise ToolError(f"{what} file {path} cannot be read ({err.strerror}); check its permissions") from None
    return path


def check_output(path: Path, overwrite: bool, suffix: str | None = ".safetensors") -> Path:
    """The output path, refused when it exists (without ``--overwrite``) or has the wrong suffix."""
    path = Path(path).expanduser()
    if suffix and path.suffix.lower() != suffix:
        raise ToolError(f"--out {path}: the output must be a {suffix} file (name it e.g. {path.with_suffix(suffix).name})")
    if path.exists() and not overwrite:
        raise ToolError(f"--out {path} already exists; choose another path or pass --overwrite to replace it")
    return path


def load_base(spec: str, dtype: Any = None) -> Any:
    """BASE as the trainer loads ``model.base``: ``builtin:*``, a diffusers folder or a single-file checkpoint."""
    from trainer.config import ModelConfig
    from trainer.models.loading import load_base_model

    return load_base_model(ModelConfig(base=spec), dtype=dtype)
