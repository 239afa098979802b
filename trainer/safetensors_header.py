"""Read a ``.safetensors`` file's header (tensor names, dtypes, shapes, metadata) without torch.

The format (https://huggingface.co/docs/safetensors): 8 bytes little-endian header length N, N bytes of
JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative
to the byte after the header) plus an optional ``"__metadata__"`` string map, then the data. Reading
only the header is what lets the pre-flight check look at multi-GB checkpoints in milliseconds, and
comparing the last data offset with the file size catches a truncated download without reading it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import UserFacingError

# safetensors' own limit (MAX_HEADER_SIZE in the Rust crate): a larger "header" means a corrupt file.
MAX_HEADER_BYTES = 100_000_000


class HeaderError(UserFacingError):
    """A file that is not a readable safetensors file; the message names the setting and the file."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]


@dataclass
class SafetensorsHeader:
    """What a safetensors header says: tensors by name, and the ``__metadata__`` strings."""

    path: Path
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    def shape(self, key: str) -> tuple[int, ...] | None:
        entry = self.tensors.get(key)
        return entry.shape if entry else None


def read_header(path: str | Path, setting: str) -> SafetensorsHeader:
    """Parse ``path``'s header; raises HeaderError naming ``setting`` (e.g. ``model.base``) and the file."""
    path = Path(path)
    where = f"`{setting}` file {path}"
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            raw = f.read(length) if length is not None and length <= min(MAX_HEADER_BYTES, size - 8) else None
    except OSError as err:
        raise HeaderError(f"{where} cannot be read ({err.strerror or err})") from None
    if raw is None:
        raise HeaderError(
            f"{where} is truncated or not a safetensors file ({size} bytes, shorter than its own header says): "
            "download it again"
        )
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("the header is not a JSON object")
        metadata = data.pop("__metadata__", None) or {}
        tensors = {name: _entry(info) for name, info in data.items()}
        data_end = max((int(info["data_offsets"][1]) for info in data.values()), default=0)
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError) as err:
        raise HeaderError(f"{where} is not a valid safetensors file (bad header: {err})") from None
    if 8 + len(raw) + data_end > size:
        raise HeaderError(
            f"{where} is truncated: its header describes {8 + len(raw) + data_end:,} bytes but the file has "
            f"{size:,}; download it again"
        )
    return SafetensorsHeader(path, tensors, {str(k): str(v) for k, v in dict(metadata).items()})


def _entry(info: dict) -> TensorEntry:
    shape = tuple(int(n) for n in info["shape"])
    if len(info["data_offsets"]) != 2:
        raise ValueError("data_offsets must be [begin, end]")
    return TensorEntry(str(info["dtype"]), shape)
