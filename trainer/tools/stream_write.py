"""Write a safetensors file one tensor at a time, each computed when it is written.

``safetensors.torch.save_file`` serialises every tensor into one in-memory buffer before writing, which
for a merged SDXL means holding the model twice; here the header (names, dtypes, shapes: all known up
front) is written first and then each tensor's bytes, so peak memory is the model plus one tensor.
The format is the documented one: u64 header length, JSON header, raw little-endian data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.atomic import atomic_path

SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


@dataclass
class Lazy:
    """A tensor made only when it is written (a merged weight): its shape, and how to make it."""

    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]


def _out_dtype(value: Any, dtype: torch.dtype) -> torch.dtype:
    """Floating tensors are saved in ``dtype``; integer buffers keep theirs."""
    if isinstance(value, Lazy) or value.dtype.is_floating_point:
        return dtype
    return value.dtype


def write_streaming(path: Path, tensors: dict[str, Any], dtype: torch.dtype, metadata: dict[str, str],
                    progress: Any = None, what: str = "writing") -> None:
    """Atomically write ``tensors`` (torch tensors or ``Lazy``) to ``path``, floating ones cast to ``dtype``."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, value in tensors.items():
        shape = tuple(value.shape)
        out = _out_dtype(value, dtype)
        size = int(torch.Size(shape).numel()) * torch.empty((), dtype=out).element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[out], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    items = list(tensors.items())
    if progress is not None:
        items = progress.stage(items, len(items), what)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(len(blob).to_bytes(8, "little") + blob)
        for name, value in items:
            tensor = value.make() if isinstance(value, Lazy) else value
            tensor = tensor.detach().to("cpu", _out_dtype(value, dtype)).contiguous()
            if tuple(tensor.shape) != tuple(header[name]["shape"]):
                raise RuntimeError(f"{name}: made a tensor of shape {tuple(tensor.shape)}, header says {header[name]['shape']}")
            handle.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
