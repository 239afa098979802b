"""One base pipeline in memory, adapters switched and combined on it without reloading the model.

diffusers' adapter API does the switching: each LoRA file is loaded once under its own name
(``load_lora_weights(adapter_name=...)``) and ``set_adapters(names, weights)`` picks which ones act and
how strongly, so another adapter or strength costs a ``set_adapters`` call, not a model load (seconds
rather than the minute an SDXL load takes). ``disable_lora`` gives the base model exactly.
diffusers reads kohya and diffusers/PEFT LoRA files itself (kohya keys are converted on load); what is
ours is checking that a file really fits the base (diffusers only logs keys it cannot place) and the
LoHa, LoKr and DoRA files diffusers cannot load for SD: those are applied by adding their ΔW to the
weights (``export.merge``), W = W0 + Σ wᵢ·ΔWᵢ, restored to W0 exactly for the base.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.adapter_files import AdapterFile
from trainer.errors import UserFacingError

ADAPTER_NAME = "adapter"


@dataclass
class AdapterSlot:
    """One adapter held by the bench: its diffusers adapter name, or its ΔW when it is applied by merging."""

    name: str
    file: AdapterFile
    merged: Any = None  # export.merge.MergedAdapter for LoHa/LoKr/DoRA files


@dataclass
class AdapterBench:
    """A base pipeline and the adapters loaded into it; ``activate`` sets which act, and how strongly.

    ``activate({})`` (or all weights 0) is the base model, bit for bit: LoRA layers are disabled and
    merged weights restored, not multiplied by zero.
    """

    pipe: Any
    model: Any  # the BaseModel whose modules the pipeline shares (merged adapters write into them)
    base: str  # the base model's name, for error messages
    slots: dict[str, AdapterSlot] = field(default_factory=dict)

    def load(self, adapter: AdapterFile) -> str:
        """Load ``adapter`` once under a new name (returned); it stays inactive until ``activate``."""
        name = f"a{len(self.slots)}"
        while name in self.slots:  # after an unload the count can repeat a live name
            name += "_"
        if adapter.merged:
            from trainer.export.merge import merge_adapter

            self._restore_merged()  # ΔW is decoded against W0, never against another adapter's W
            slot = AdapterSlot(name, adapter, merge_adapter(self.model, adapter.path))
        else:
            load_adapter(self.pipe, adapter, self.base, strength=0.0, adapter_name=name)
            slot = AdapterSlot(name, adapter)
        self.slots[name] = slot
        self.activate({})
        return name

    def unload(self, name: str) -> None:
        """Forget one adapter (``delete_adapters`` frees its LoRA layers); the others stay loaded."""
        slot = self.slots.pop(name)
        if slot.merged is not None:
            slot.merged.remove()
        else:
            self.pipe.delete_adapters(name)

    def activate(self, weights: dict[str, float]) -> None:
        """Make exactly the adapters in ``weights`` act, each at its weight; the rest (and weight 0) are off."""
        unknown = sorted(set(weights) - set(self.slots))
        if unknown:
            raise KeyError(f"no adapter loaded as {unknown[0]!r}")
        on = {name: w for name, w in weights.items() if w != 0}
        lora = {name: w for name, w in on.items() if self.slots[name].merged is None}
        if any(slot.merged is None for slot in self.slots.values()):
            if lora:
                self.pipe.enable_lora()
                self.pipe.set_adapters(list(lora), adapter_weights=list(lora.values()))
            else:
                self.pipe.disable_lora()
        self._restore_merged()
        for name, weight in on.items():
            if self.slots[name].merged is not None:
                _add_delta(self.slots[name].merged, weight)

    def _restore_merged(self) -> None:
        for slot in self.slots.values():
            if slot.merged is not None:
                slot.merged.remove()


def _add_delta(merged: Any, weight: float) -> None:
    """W ← W + weight·ΔW in fp32 (``MergedAdapter.apply`` sets W0 + s·ΔW, which would undo another adapter)."""
    import torch

    with torch.no_grad():
        for param, delta in zip(merged.weights, merged.deltas, strict=True):
            param.copy_((param.float() + weight * delta).to(param.dtype))


def load_adapter(
    pipe: Any, adapter: AdapterFile, base: str, strength: float, adapter_name: str = ADAPTER_NAME
) -> None:
    """``load_lora_weights`` + ``set_adapters``, failing loudly when the keys do not fit the base model.

    diffusers raises on shape mismatches but only logs keys it could not place; those log records
    are caught here and, with a count of the layers that received the adapter, turned into an error.
    """
    mismatch = f"adapter {adapter.path} does not fit base model {base!r}; pass --base with the model it was trained on"
    with _library_logs() as records, warnings.catch_warnings():
        # PEFT warns on every adapter after the first that the model "will have multiple adapters": the point here.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        try:
            pipe.load_lora_weights(str(adapter.path), adapter_name=adapter_name)
        except (ValueError, RuntimeError, KeyError, IndexError) as err:
            raise UserFacingError(f"{mismatch} ({_first_line(str(err))})") from None
    placed = count_adapted_layers(pipe, adapter_name)
    if placed < adapter.num_lora_layers:
        _forget(pipe, adapter_name)
        raise UserFacingError(
            f"{mismatch}: only {placed} of its {adapter.num_lora_layers} LoRA layers match a layer of the model"
        )
    unplaced = _unplaced_keys_message(records, adapter_name)
    if unplaced:
        _forget(pipe, adapter_name)
        raise UserFacingError(f"{mismatch} ({unplaced})")
    pipe.set_adapters([adapter_name], adapter_weights=[strength])


def _forget(pipe: Any, adapter_name: str) -> None:
    """Drop a half-placed adapter so a pipeline that lives on (the bench) does not keep it."""
    with contextlib.suppress(ValueError, KeyError):  # nothing placed: nothing to delete
        pipe.delete_adapters(adapter_name)


@contextlib.contextmanager
def _library_logs() -> Iterator[list[logging.LogRecord]]:
    """Collect diffusers' and transformers' warnings instead of printing them: the ones that matter
    become our error, the rest (e.g. "no text-encoder keys") are noise for a unet-only adapter."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    saved = []
    for lib in (diffusers_logging, transformers_logging):
        saved.append((lib, lib.get_verbosity()))
        lib.set_verbosity(min(lib.get_verbosity(), logging.WARNING))
        lib.disable_default_handler()
        lib.add_handler(handler)
    try:
        yield records
    finally:
        for lib, verbosity in saved:
            lib.remove_handler(handler)
            lib.enable_default_handler()
            lib.set_verbosity(verbosity)


def _unplaced_keys_message(records: list[logging.LogRecord], adapter_name: str) -> str | None:
    """The first warning saying that keys of ``adapter_name`` were not placed, in a line; None when all were.

    diffusers warns "... led to unexpected/missing keys ..."; transformers prints a LOAD REPORT table. While
    a second adapter loads, both list the first adapter's weights as "missing" (they are not in this
    file): only missing keys of the adapter being loaded count.
    """
    own = f".{adapter_name}."
    for record in records:
        text = record.getMessage()
        if "unexpected keys" in text or ("missing keys" in text and own in text):
            return _first_line(text)
        if "LOAD REPORT" in text:
            rows = [
                line
                for line in text.splitlines()
                if "UNEXPECTED" in line or ("MISSING" in line and own in line)
            ]
            if rows:
                return "some text-encoder LoRA weights are missing or do not match a layer"
    return None


def count_adapted_layers(pipe: Any, adapter_name: str) -> int:
    """How many layers of the pipeline's UNet and text encoders carry ``adapter_name``."""
    total = 0
    for attr in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, attr, None)
        if module is None:
            continue
        total += sum(1 for m in module.modules() if hasattr(m, "lora_A") and adapter_name in m.lora_A)
    return total


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    if not lines:
        return "no details"
    return lines[0] if len(lines[0]) <= 300 else lines[0][:300] + "..."


def adapter_label(path: Path) -> str:
    """A short name for an adapter in labels: the file's stem, with its checkpoint step when it has one."""
    path = Path(path)
    if path.parent.name.startswith("step_"):
        return f"{path.stem} (step {path.parent.name.removeprefix('step_').lstrip('0') or '0'})"
    return path.stem


@dataclass
class RenderSettings:
    """How every image of one sampling call is made; None for width/height: the base model's native size."""

    steps: int
    guidance: float
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None


def render(bench: AdapterBench, prompt: str, seed: int, settings: RenderSettings) -> Any:
    """One PIL image with the adapters ``bench`` has active now; the seed alone fixes the starting noise."""
    from trainer.sampling import latent_generator, prompt_kwargs

    return bench.pipe(
        **prompt_kwargs(bench.model, prompt, settings.negative_prompt, bench.pipe.device),
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance,
        width=settings.width,
        height=settings.height,
        generator=latent_generator(seed),
    ).images[0]


def open_bench(
    base: str, adapters: list[AdapterFile], sampler: str, device: str
) -> tuple[AdapterBench, list[str]]:
    """Load ``base`` once, build its pipeline and load every adapter into it; returns the bench and their names.

    The clip skip is the first adapter's (``ss_clip_skip``): previews are made with the text-encoder layer
    it was trained against.
    """
    import torch

    from trainer.adapter_files import adapter_clip_skip
    from trainer.conditioning import set_clip_skip
    from trainer.config import ModelConfig
    from trainer.models.loading import load_base_model
    from trainer.sampling import build_pipeline

    target = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu")
    # Half precision on the GPU as every SD UI does; the CPU has no fast fp16 kernels.
    model = load_base_model(ModelConfig(base=base), dtype=torch.float16 if target.type == "cuda" else None)
    set_clip_skip(model, adapter_clip_skip(adapters[0].metadata if adapters else {}, model.family))
    bench = AdapterBench(build_pipeline(model, sampler).to(target), model, base)
    return bench, [bench.load(adapter) for adapter in adapters]
