"""The speed levers of ``[training]``, applied to the UNet and the process before training starts.

Each lever is the field's standard one, from PyTorch or diffusers; this module only decides when it applies
and records what was applied, so a run's ``started`` event says which attention kernel ran, whether the UNet
was compiled, and so on:

- ``training.compile``: ``torch.compile`` of the UNet. ``full`` compiles the whole forward (``nn.Module.compile``,
  in place, so PEFT's module names and the state dict are unchanged); ``regional`` compiles each repeated
  transformer block once (diffusers' ``compile_repeated_blocks``: the blocks share one compiled graph, so
  warm-up takes a fraction of a full compile for most of the gain).
- ``training.channels_last``: NHWC memory format for the UNet's convolutions (cuDNN's fast layout on tensor cores).
- ``training.attention``: which scaled-dot-product-attention kernel the UNet's attention may use. diffusers'
  default processor (``AttnProcessor2_0``) calls ``F.scaled_dot_product_attention``, and torch picks a kernel per
  call; ``sdpa_kernel_in_use`` asks torch (``torch._fused_sdp_choice``) which one it picks for this model's shapes.
- ``training.allow_tf32``: TF32 matmuls and convolutions on Ampere and newer (fp32 math at tensor-core speed).
- ``training.pin_memory``: cached latents and text embeddings go to the GPU from pinned memory, asynchronously.

The fused AdamW kernel is ``optimizer.fused`` (trainer.optim).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.errors import UserFacingError

# ``training.attention`` → the torch backends allowed; "auto" lets torch choose among all of them.
ATTENTION_BACKENDS = {
    "auto": None,
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "math": "MATH",
}


@dataclass
class SpeedPlan:
    """What was applied, for the ``started`` event and the log; ``attention_context`` wraps each UNet call."""

    compile: str = "off"
    channels_last: bool = False
    attention_processors: list[str] = field(default_factory=list)
    attention_kernel: str = ""  # the SDPA kernel torch picks for this model's shapes ("" if not known)
    attention_backend: Any = None  # torch.nn.attention.SDPBackend to restrict to, or None
    tf32: bool = False
    pin_memory: bool = False

    def attention_context(self) -> Any:
        if self.attention_backend is None:
            return contextlib.nullcontext()
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel([self.attention_backend])

    def event_fields(self) -> dict[str, Any]:
        return {
            "compile": self.compile, "channels_last": self.channels_last, "attention_kernel": self.attention_kernel,
            "attention_processors": self.attention_processors, "tf32": self.tf32, "pin_memory": self.pin_memory,
        }


def apply_speed_settings(unet: torch.nn.Module, training: Any, device: torch.device, dtype: torch.dtype) -> SpeedPlan:
    """Apply ``[training]``'s levers to ``unet`` (LoRA already injected, not yet prepared by accelerate)."""
    plan = SpeedPlan(pin_memory=bool(training.pin_memory) and device.type == "cuda")
    plan.tf32 = set_tf32(training.allow_tf32, device)
    if training.channels_last:
        unet.to(memory_format=torch.channels_last)
        plan.channels_last = True
    plan.attention_processors = sorted({type(p).__name__ for p in getattr(unet, "attn_processors", {}).values()})
    plan.attention_backend = _backend(training.attention)
    plan.attention_kernel = sdpa_kernel_in_use(unet, device, dtype, plan.attention_backend)
    if training.attention != "auto" and plan.attention_kernel in ("", "ERROR"):
        raise UserFacingError(
            f"`training.attention = \"{training.attention}\"`: that attention kernel cannot run here "
            f"({device.type}, {str(dtype).replace('torch.', '')}); use \"auto\" to let torch choose"
        )
    plan.compile = compile_unet(unet, training.compile)
    return plan


def _backend(name: str) -> Any:
    if ATTENTION_BACKENDS.get(name) is None:
        return None
    from torch.nn.attention import SDPBackend

    return getattr(SDPBackend, ATTENTION_BACKENDS[name])


def set_tf32(allowed: bool, device: torch.device, capability: tuple[int, int] | None = None) -> bool:
    """TF32 for fp32 matmuls/convolutions on an Ampere+ (compute capability 8.0+) GPU; returns whether it is on."""
    if device.type != "cuda":
        return False
    major, _ = capability or torch.cuda.get_device_capability(device)
    on = bool(allowed) and major >= 8
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return on


def compile_unet(unet: torch.nn.Module, mode: str) -> str:
    """``off`` / ``full`` / ``regional`` (see the module doc); compilation itself happens at the first step."""
    if mode == "full":
        unet.compile()
    elif mode == "regional":
        if not getattr(unet, "_repeated_blocks", None) or not hasattr(unet, "compile_repeated_blocks"):
            raise UserFacingError(
                "`training.compile = \"regional\"` needs a diffusers UNet with repeated blocks; use \"full\""
            )
        unet.compile_repeated_blocks()
    return mode


def sdpa_kernel_in_use(unet: torch.nn.Module, device: torch.device, dtype: torch.dtype, backend: Any = None) -> str:
    """The SDPA kernel torch picks for the UNet's first attention layer's shapes (``FLASH_ATTENTION``, ``MATH``…)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    attn = next((m for m in unet.modules() if type(m).__name__ == "Attention" and hasattr(m, "heads")), None)
    if attn is None:
        return ""
    head_dim = attn.inner_dim // attn.heads if hasattr(attn, "inner_dim") else attn.to_q.out_features // attn.heads
    q = torch.zeros(1, attn.heads, 64, head_dim, device=device, dtype=dtype, requires_grad=True)  # (B, heads, seq, d)
    context = sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()
    try:
        with context:
            return SDPBackend(torch._fused_sdp_choice(q, q, q)).name
    except (RuntimeError, ValueError):
        return "ERROR"


def to_device(tensor: torch.Tensor, device: torch.device, pin: bool) -> torch.Tensor:
    """A host tensor to ``device``; with ``pin``, through pinned memory without waiting for the copy.

    PyTorch's caching host allocator reuses the pinned blocks and keeps each alive until its copy is done, so
    pinning per batch costs a memcpy, not an allocation.
    """
    if pin and tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
