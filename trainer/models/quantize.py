"""A quantized frozen base (``model.quantize``): QLoRA-style storage, LoRA trained in full precision on top.

``quantize_base`` converts the UNet's Linear layers, and the text encoders' when they are not trained, in
place after the model loads (every source: builtin, folder, single file, hub), before LoRA is injected:

- ``torchao-int8``: ``torchao.quantize_(module, Int8WeightOnlyConfig())``: int8 weights with one scale per
  output row, in ``QuantizedLinear`` layers whose backward keeps the int8 weight rather than a float copy
  (see there); PEFT wraps them as ``TorchaoLoraLinear`` (merging is never needed here).
- ``bnb-int8`` / ``bnb-nf4``: bitsandbytes' ``Linear8bitLt`` (LLM.int8, ``has_fp16_weights=False``) and
  ``Linear4bit`` (``quant_type="nf4"``, compute in the training dtype), the layers diffusers'
  ``BitsAndBytesConfig`` loads into; built here from the loaded layers, because that config only reaches
  ``from_pretrained`` and our single-file loader builds models from converted state dicts. The weights
  quantize when moved to the GPU. PEFT wraps them as its bnb LoRA layers.

Convolutions stay as they are (none of the three quantizes them). The exported LoRA is ΔW alone, so a client
applies it to the *original* base weights W: it sees W + ΔW where training saw Q(W) + ΔW. The self-check of
a quantized run is therefore made on ``adapter_on_original_base`` (the file must reproduce the adapter on W),
and ``quantization_gap`` measures what the client's result differs by (README, "Quantized base").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from trainer.errors import UserFacingError
from trainer.models.quantize_rules import backend, machine_problem


def check_machine(mode: str) -> str:
    """The backend for ``mode`` here; raises UserFacingError (before any model loads) when there is none."""
    cuda = torch.cuda.is_available()
    if (problem := machine_problem(mode, cuda)) is not None:
        raise UserFacingError(problem)
    return backend(mode, cuda)


def quantize_base(model: Any, mode: str, train_text_encoder: bool, compute_dtype: torch.dtype) -> list[str]:
    """Quantize the frozen components' Linear layers in place; returns the quantized component names."""
    if mode == "none":
        return []
    kind = check_machine(mode)
    names = [n for n in model.component_modules() if n == "unet" or not train_text_encoder]
    for name in names:
        module = model.component_modules()[name]
        if kind == "torchao-int8":
            from torchao.quantization import Int8WeightOnlyConfig, quantize_

            quantize_(module, Int8WeightOnlyConfig())
            _save_quantized_for_backward(module)
        else:
            _to_bitsandbytes(module, kind, compute_dtype)
    _return_freed_memory()
    return names


def _return_freed_memory() -> None:
    """Hand the freed full-precision weights back to the OS. glibc keeps freed heap memory in the process,
    so without this the quantized run's resident memory stayed at the unquantized one's (sd15: 4.35 GB after
    quantizing against 3.47 GB trimmed). Linux/glibc only; elsewhere a no-op."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class _QuantizedLinearFunction(torch.autograd.Function):
    """``F.linear`` with a frozen quantized weight that keeps the *quantized* weight for the backward pass.

    torchao's int8 weight-only ``F.linear`` dequantizes the weight and autograd then saves that float copy
    for the input gradient, so every layer's full-precision weight is held from forward to backward: on the
    CPU a LoRA step on the int8 base peaked above the unquantized one (``bench/quantize_memory.py``). Here
    the int8 tensor (data + scales) is saved and dequantized once more in backward, one layer at a time.
    The weight is frozen, so only the input gets a gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        return grad @ weight.dequantize().to(grad.dtype), None, None  # (…, out) @ (out, in)


class QuantizedLinear(torch.nn.Linear):
    """A frozen ``nn.Linear`` whose weight is a torchao quantized tensor (PEFT wraps it as ``TorchaoLoraLinear``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QuantizedLinearFunction.apply(x, self.weight, self.bias)


def _save_quantized_for_backward(module: torch.nn.Module) -> None:
    """Replace each torchao-quantized Linear by a ``QuantizedLinear`` holding the same weight and bias."""
    for _, parent in list(module.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and hasattr(child.weight, "dequantize"):
                new = QuantizedLinear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
                new.weight, new.bias = child.weight, child.bias
                setattr(parent, name, new)


def _to_bitsandbytes(module: torch.nn.Module, kind: str, compute_dtype: torch.dtype) -> None:
    import bitsandbytes as bnb

    for _, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            bias = child.bias is not None
            data = child.weight.detach().to("cpu", torch.float16)
            if kind == "bnb-nf4":
                new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=bias, compute_dtype=compute_dtype,
                                        quant_type="nf4")
                new.weight = bnb.nn.Params4bit(data, requires_grad=False, quant_type="nf4")
            else:
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=bias, has_fp16_weights=False,
                                          threshold=6.0)
                new.weight = bnb.nn.Int8Params(data, requires_grad=False, has_fp16_weights=False)
            if bias:
                new.bias = torch.nn.Parameter(child.bias.detach().to(compute_dtype), requires_grad=False)
            setattr(parent, child_name, new.to("cuda"))  # bitsandbytes quantizes on the move to the GPU


def quantized_weight_bytes(module: torch.nn.Module) -> int:
    """Bytes the module's tensors take as stored (int8 data and scales of quantized layers counted as such)."""
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        inner = getattr(tensor, "qdata", None)
        if inner is not None:
            total += inner.numel() * inner.element_size() + tensor.scale.numel() * tensor.scale.element_size()
        else:
            total += tensor.numel() * tensor.element_size()
    return total


def adapter_on_original_base(model: Any, cfg: Any) -> Any:
    """A fresh, unquantized base (``model.quantize = "none"``) carrying a copy of ``model``'s trained adapter:
    what a client gets from the exported file. The self-check of a quantized run is made against it."""
    import dataclasses

    from trainer.checkpoint import load_lora_state, lora_state
    from trainer.models.loading import load_base_model
    from trainer.network import ADAPTER_NAME, adapter_layers, inject_lora

    plain = load_base_model(dataclasses.replace(cfg.model, quantize="none"))
    trained = {n: m for n, m in model.component_modules().items() if adapter_layers(m)}
    ranks = {(n, path): int(layer.r[ADAPTER_NAME]) for n, m in trained.items() for path, layer in adapter_layers(m).items()}
    inject_lora(plain, cfg.network, train_text_encoder="text_encoder" in trained, ranks=ranks)
    load_lora_state({n: plain.component_modules()[n] for n in trained}, lora_state(trained), "the trained model")
    return plain


def quantization_gap(model: Any, twin: Any) -> dict[str, float]:
    """UNet outputs on the self-check's fixed probe: ``gap`` = |quantized base + adapter − original base +
    adapter| (what changes for a client), ``base_gap`` = the same without the adapter (the quantization's own
    error), ``adapter_effect`` = |original + adapter − original| (the size of what was learned)."""
    from trainer.export.probe import probe_inputs, probe_outputs

    def unet_out(m: Any, adapters: bool) -> torch.Tensor:
        m.unet.enable_adapters() if adapters else m.unet.disable_adapters()
        try:
            return probe_outputs(m.component_modules(), probe_inputs(m))["unet"]
        finally:
            m.unet.enable_adapters()

    with torch.no_grad():
        quantized, quantized_base = unet_out(model, True), unet_out(model, False)
        original, original_base = unet_out(twin, True), unet_out(twin, False)
    return {
        "gap": (quantized - original).abs().max().item(),
        "base_gap": (quantized_base - original_base).abs().max().item(),
        "adapter_effect": (original - original_base).abs().max().item(),
    }
