"""Plain LoRA files (kohya or diffusers/PEFT keys) as {module name: LoraModule}, and writing them back.

Resize and combine work module by module on ``alpha / rank · up @ down`` and need no base model: a
module is identified by its name in the file (a kohya name, or ``COMPONENT.PATH``), so the output keeps
the input's format and names. Reading is ``export.formats.read_adapter_file`` (which refuses LoHa, LoKr
and DoRA files by name: their ΔW is not a product of two factors).
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.export.formats import (
    DIFFUSERS,
    KOHYA,
    LORA_ADAPTER_METADATA_KEY,
    AdapterFile,
    LoraModule,
    diffusers_adapter_metadata,
    diffusers_tensors,
    read_adapter_file,
)
from trainer.tools.common import ToolError, check_input_file


def read_lora(path: Path, purpose: str = "this tool") -> AdapterFile:
    """A plain LoRA/LoCon file; a LoHa, LoKr or DoRA file is refused by name (its ΔW is no product of two
    factors, and it has no diffusers/PEFT form)."""
    from trainer.export.file_modules import is_kohya_keys, read_kohya_file
    from trainer.tools.adapter_layers import header_keys

    path = check_input_file(path)
    if is_kohya_keys(header_keys(path)):
        file = read_kohya_file(path)
        if file.kinds != {"lora"} or file.has_dora:
            kinds = sorted(file.kinds - {"lora"}) + (["dora"] if file.has_dora else [])
            raise ToolError(f"{path} is a {'/'.join(kinds)} adapter: {purpose} handles plain LoRA/LoCon only "
                            "(AUTOMATIC1111 and ComfyUI load this file as it is; `merge` bakes it into a base)")
    return read_adapter_file(path)


def module_delta(m: LoraModule) -> torch.Tensor:
    """ΔW = alpha / rank · up @ down in fp32, flattened to (out, in·kh·kw) for a convolution."""
    return (m.alpha / m.rank) * (m.up.float().flatten(1) @ m.down.float().flatten(1))


def delta_shape(m: LoraModule) -> tuple[int, ...]:
    """The adapted weight's shape: (out, in) or (out, in, kh, kw)."""
    return (int(m.up.shape[0]), *m.down.shape[1:])


def from_factors(like: LoraModule, up: torch.Tensor, down: torch.Tensor, alpha: float) -> LoraModule:
    """A module of ``like``'s name and layer from 2-D factors, reshaped to a convolution's form if it is one."""
    rank = int(down.shape[0])
    if like.down.dim() == 4:  # LoCon: down (r, in, kh, kw), up (out, r, 1, 1)
        down = down.reshape(rank, *like.down.shape[1:])
        up = up.reshape(up.shape[0], rank, 1, 1)
    return LoraModule(like.component, like.path, down.contiguous(), up.contiguous(), float(alpha))


def lora_tensors(fmt: str, modules: dict[str, LoraModule], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Keys of ``fmt`` for modules named as ``read_adapter_file`` names them; alpha kept in fp32."""
    out: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        if fmt == KOHYA:
            out[f"{name}.lora_down.weight"] = m.down.to(dtype).contiguous()
            out[f"{name}.lora_up.weight"] = m.up.to(dtype).contiguous()
            out[f"{name}.alpha"] = torch.tensor(m.alpha, dtype=torch.float32)
    if fmt == DIFFUSERS:
        out = diffusers_tensors(list(modules.values()), dtype)
    return out


def write_lora(path: Path, fmt: str, modules: dict[str, LoraModule], dtype: torch.dtype, metadata: dict[str, str]) -> None:
    """Atomic write with sd-scripts' hashes (``export.writer.write_safetensors``); a diffusers file also gets
    the ``lora_adapter_metadata`` entry that carries alpha and per-layer ranks for ``load_lora_weights``."""
    from trainer.export.writer import write_safetensors

    header = {k: v for k, v in metadata.items() if not k.startswith("sshs_") and k != LORA_ADAPTER_METADATA_KEY}
    if fmt == DIFFUSERS:
        header.update(diffusers_adapter_metadata(list(modules.values())))
    write_safetensors(path, lora_tensors(fmt, modules, dtype), header)
