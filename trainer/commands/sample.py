"""``sample``: generate images with a finished adapter, optionally beside the base model's.

This is the UI's "try it" panel run out of the UI process: the same seed with the adapter disabled
and enabled gives a base/adapted pair to show side by side. diffusers' ``load_lora_weights`` reads
both kohya and diffusers/PEFT LoRA files; what we add is checking that the file really fits the base model
(diffusers only warns about keys it cannot place) and the JSON the UI reads. LoHa, LoKr and DoRA files,
which diffusers cannot load for SD, are applied by merging each module's ΔW into the weights
(``export.merge``), as ComfyUI and AUTOMATIC1111 apply them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import SAMPLERS, SamplingConfig
from trainer.errors import UserFacingError

NAME = "sample"
HELP = "generate images with an adapter: LoRA, LoCon, DoRA, LoHa or LoKr (with --compare also the base model's, same seed)"
DESCRIPTION = HELP + (
    "\n\nThe base model defaults to the one in the run folder's config.toml, else the one recorded in "
    "the adapter's metadata (ss_sd_model_name), else builtin:tiny-sd.\nExample: python -m trainer sample runs/my-lora/my-lora.safetensors "
    '--prompt "sks, a photo" --compare --json'
)
ADAPTER_NAME = "adapter"
DEFAULT_BASE = "builtin:tiny-sd"
BASE_METADATA_KEY = "ss_sd_model_name"  # sd-scripts' key for the base model a LoRA was trained on
# One key per adapted layer in each format diffusers reads: kohya, PEFT, and diffusers' older one.
_LORA_DOWN_KEY = re.compile(r"(\.lora_down\.weight|\.lora_A(\.[^.]+)?\.weight|\.lora\.down\.weight)$")
_LORA_UP_KEY = re.compile(r"(\.lora_up\.weight|\.lora_B(\.[^.]+)?\.weight|\.lora\.up\.weight)$")
_DEFAULTS = SamplingConfig()


@dataclass
class SampleOptions:
    """What to generate; None for width/height means the base model's native size."""

    adapter: Path
    prompts: list[str]
    base: str | None = None
    seed: int = _DEFAULTS.seed
    strength: float = 1.0
    steps: int = _DEFAULTS.steps
    sampler: str = _DEFAULTS.sampler
    width: int | None = None
    height: int | None = None
    guidance: float = _DEFAULTS.guidance_scale
    negative_prompt: str = ""
    compare: bool = False
    out: Path = field(default_factory=lambda: Path("samples"))
    device: str = "auto"


@dataclass
class SampledImage:
    path: Path
    prompt: str
    seed: int
    kind: str  # "base" or "adapted"


@dataclass
class AdapterFile:
    """An adapter file opened enough to check it: its path, metadata and number of adapted layers."""

    path: Path
    metadata: dict[str, str]
    num_lora_layers: int
    merged: bool = False  # LoHa/LoKr/DoRA: applied by merging ΔW (see ``_switch``)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "adapter", type=Path,
        help="adapter .safetensors: LoRA/LoCon (kohya or diffusers format), DoRA, LoHa or LoKr (kohya/LyCORIS keys)",
    )
    parser.add_argument("--prompt", action="append", required=True, help="prompt; repeat for several images")
    parser.add_argument("--negative-prompt", default="", help="negative prompt")
    parser.add_argument(
        "--base",
        help=f"base model (default: the run folder's config.toml, else the adapter's metadata, else {DEFAULT_BASE})",
    )
    parser.add_argument(
        "--seed", type=int, default=_DEFAULTS.seed, help="seed of the first prompt; prompt i uses seed + i"
    )
    parser.add_argument("--strength", type=float, default=1.0, help="LoRA strength (0: the base model)")
    parser.add_argument("--steps", type=int, default=_DEFAULTS.steps, help="denoising steps")
    parser.add_argument("--sampler", choices=SAMPLERS, default=_DEFAULTS.sampler, help="sampler")
    parser.add_argument("--width", type=int, help="image width, a multiple of 8 (default: the model's size)")
    parser.add_argument(
        "--height", type=int, help="image height, a multiple of 8 (default: the model's size)"
    )
    parser.add_argument(
        "--guidance", type=float, default=_DEFAULTS.guidance_scale, help="classifier-free guidance scale"
    )
    parser.add_argument(
        "--compare", action="store_true", help="also render the base model (adapter off, same seed)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("samples"), help="output folder (default: ./samples)"
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu"), default="auto", help="auto: the GPU if there is one"
    )
    parser.add_argument("--json", action="store_true", help='print {"images": [{path, prompt, seed, kind}]}')


def run(args: argparse.Namespace) -> int:
    options = SampleOptions(
        adapter=args.adapter,
        prompts=args.prompt,
        base=args.base,
        seed=args.seed,
        strength=args.strength,
        steps=args.steps,
        sampler=args.sampler,
        width=args.width,
        height=args.height,
        guidance=args.guidance,
        negative_prompt=args.negative_prompt,
        compare=args.compare,
        out=args.out,
        device=args.device,
    )
    images = sample_adapter(options)
    if args.json:
        print(json.dumps({"images": [{**asdict(i), "path": str(i.path)} for i in images]}))
    else:
        for image in images:
            print(f"{image.kind}: {image.path}")
    return 0


def sample_adapter(options: SampleOptions) -> list[SampledImage]:
    """Generate every prompt with the adapter (and, with ``compare``, without it) and write PNGs."""
    import torch

    from trainer.conditioning import set_clip_skip
    from trainer.models.loading import load_base_model
    from trainer.sampling import build_pipeline

    _check_options(options)
    adapter = open_adapter(options.adapter)
    base = options.base or default_base(adapter)
    device = torch.device("cuda" if options.device == "auto" and torch.cuda.is_available() else "cpu")
    # Half precision on the GPU as every SD UI does; the CPU has no fast fp16 kernels.
    dtype = torch.float16 if device.type == "cuda" else None
    model = load_base_model(_model_config(base), dtype=dtype)
    set_clip_skip(model, adapter_clip_skip(adapter.metadata, model.family))
    pipe = build_pipeline(model, options.sampler).to(device)
    switch = _switch(pipe, model, adapter, base, options.strength)
    images = []
    for index, prompt in enumerate(options.prompts):
        seed = options.seed + index
        kinds = ("base", "adapted") if options.compare else ("adapted",)
        for kind in kinds:
            switch(kind == "adapted")
            images.append(_generate(pipe, model, options, adapter.path, base, prompt, seed, index, kind))
    return images


def adapter_clip_skip(metadata: dict[str, str], family: str) -> int:
    """The clip skip an adapter was trained with (``ss_clip_skip``, as sd-scripts writes it); 1 when absent.

    Sampling with the same text-encoder layer the adapter learnt against is what A1111's "CLIP skip" setting
    is for; SDXL ignores it (its encoders always give the penultimate layer)."""
    try:
        value = int(metadata.get("ss_clip_skip", "1"))
    except ValueError:  # sd-scripts writes "None" when it was not set
        return 1
    return value if value > 1 and family != "sdxl" else 1


def _switch(pipe: Any, model: Any, adapter: AdapterFile, base: str, strength: float) -> Any:
    """Load the adapter and return ``on(bool)`` that turns it on or off: diffusers' LoRA layers for plain
    LoRA files, ΔW merged into the weights (``export.merge``) for LoHa, LoKr and DoRA, which diffusers
    cannot load for Stable Diffusion."""
    if adapter.merged:
        from trainer.export.merge import merge_adapter

        merged = merge_adapter(model, adapter.path)
        return lambda on: merged.apply(strength) if on else merged.remove()
    load_adapter(pipe, adapter, base, strength)
    return lambda on: (pipe.enable_lora if on else pipe.disable_lora)()


def _generate(
    pipe: Any, model: Any, options: SampleOptions, adapter: Path, base: str, prompt: str, seed: int, index: int,
    kind: str,
) -> SampledImage:
    from trainer.sampling import latent_generator, prompt_kwargs, save_png, settings_digest

    image = pipe(
        **prompt_kwargs(model, prompt, options.negative_prompt, pipe.device),
        num_inference_steps=options.steps,
        guidance_scale=options.guidance,
        width=options.width,
        height=options.height,
        generator=latent_generator(seed),
    ).images[0]
    strength = options.strength if kind == "adapted" else 0.0
    settings = (
        base,
        prompt,
        options.negative_prompt,
        seed,
        strength,
        options.steps,
        options.sampler,
        options.guidance,
        image.size,
    )
    path = options.out / f"{adapter.stem}_{index:02d}_{settings_digest(*settings)}_{kind}.png"
    info = {
        "prompt": prompt,
        "seed": seed,
        "kind": kind,
        "strength": strength,
        "sampler": options.sampler,
        "adapter": adapter.name,
    }
    save_png(image, path, info)
    return SampledImage(path=path.resolve(), prompt=prompt, seed=seed, kind=kind)


def _check_options(options: SampleOptions) -> None:
    """Raise one error listing every bad option; a lone --width or --height means a square image."""
    problems = []
    if not options.prompts or any(not p.strip() for p in options.prompts):
        problems.append("--prompt must be a non-empty prompt")
    if options.steps <= 0:
        problems.append(f"--steps must be a positive integer, got {options.steps}")
    if options.guidance < 0:
        problems.append(f"--guidance must be 0 or more, got {options.guidance}")
    if options.width is not None and options.height is None:
        options.height = options.width
    if options.height is not None and options.width is None:
        options.width = options.height
    for flag, size in (("--width", options.width), ("--height", options.height)):
        if size is not None and (size <= 0 or size % 8):
            problems.append(f"{flag} must be a positive multiple of 8, got {size}")
    if problems:
        raise UserFacingError("; ".join(problems))


def _model_config(base: str) -> Any:
    from trainer.config import ModelConfig

    return ModelConfig(base=base)


def open_adapter(path: Path) -> AdapterFile:
    """Check that ``path`` is a readable safetensors file holding LoRA weights."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir() and (path / "pytorch_lora_weights.safetensors").is_file():
        path = path / "pytorch_lora_weights.safetensors"  # a folder written by diffusers' save_lora_weights
    if not path.is_file():
        raise UserFacingError(f"adapter file not found: {path}")
    if path.suffix.lower() != ".safetensors":
        raise UserFacingError(
            f"adapter {path} is not a .safetensors file; export the adapter as .safetensors"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            keys = list(handle.keys())
    except Exception as err:  # safetensors raises its own error type or OSError for a damaged header
        raise UserFacingError(
            f"adapter {path} is not a valid safetensors file ({err}); is the file complete?"
        ) from None
    lycoris = _lycoris_modules(keys)
    if lycoris:
        return AdapterFile(path=path, metadata=metadata, num_lora_layers=lycoris, merged=True)
    num_layers = sum(1 for k in keys if _LORA_DOWN_KEY.search(k))
    if not num_layers:
        raise UserFacingError(
            f"adapter {path} holds no LoRA weights (no lora_down / lora_A / hada_ / lokr_ keys among its "
            f"{len(keys)} tensors); is it a full checkpoint rather than an adapter?"
        )
    num_up = sum(1 for k in keys if _LORA_UP_KEY.search(k))
    if num_up != num_layers:
        raise UserFacingError(
            f"adapter {path} is incomplete: {num_layers} lora_down/lora_A but {num_up} lora_up/lora_B tensors; "
            "export it again"
        )
    return AdapterFile(path=path, metadata=metadata, num_lora_layers=num_layers)


def _lycoris_modules(keys: list[str]) -> int:
    """How many modules are LoHa, LoKr, DoRA or whole ΔW (any makes the file one diffusers cannot load); 0 otherwise."""
    modules = {k.partition(".")[0] for k in keys if re.search(r"\.(hada_w1_a|lokr_w1|lokr_w1_a|lokr_w2|lokr_w2_a|dora_scale|diff)$", k)}
    if not modules:
        return 0
    return len({k.partition(".")[0] for k in keys if not k.endswith(".alpha")})


def default_base(adapter: AdapterFile) -> str:
    """The base model to use when ``--base`` is not given.

    First the run folder's ``config.toml`` (an adapter in a run folder or its checkpoints), which has
    the full model path; then ``ss_sd_model_name``, which sd-scripts writes as a bare name; else the
    builtin model.
    """
    from trainer.models.loading import ModelLoadError, resolve_model_source

    from_run = _run_config_base(adapter.path)
    if from_run:
        return from_run
    recorded = adapter.metadata.get(BASE_METADATA_KEY, "").strip()
    if not recorded:
        return DEFAULT_BASE
    try:
        resolve_model_source(recorded)
    except ModelLoadError as err:
        raise UserFacingError(
            f"adapter {adapter.path.name} was trained on {recorded!r} ({BASE_METADATA_KEY}), which is not "
            f"available here ({err}); pass --base with that model's folder or file"
        ) from None
    return recorded


def _run_config_base(adapter_path: Path) -> str | None:
    import tomllib

    from trainer.run_folder import CONFIG_FILE

    # run_dir/NAME.safetensors or run_dir/checkpoints/STEP/NAME.safetensors
    for folder in list(adapter_path.resolve().parents)[:3]:
        config = folder / CONFIG_FILE
        if config.is_file():
            try:
                base = tomllib.loads(config.read_text(encoding="utf-8")).get("model", {}).get("base")
            except (tomllib.TOMLDecodeError, UnicodeDecodeError, AttributeError):
                return None
            return base if isinstance(base, str) and base.strip() else None
    return None


def load_adapter(pipe: Any, adapter: AdapterFile, base: str, strength: float) -> None:
    """``load_lora_weights`` + ``set_adapters``, failing loudly when the keys do not fit the base model.

    diffusers raises on shape mismatches but only logs keys it could not place; those log records
    are caught here and, with a count of the layers that received the adapter, turned into an error.
    """
    mismatch = f"adapter {adapter.path} does not fit base model {base!r}; pass --base with the model it was trained on"
    with _library_logs() as records:
        try:
            pipe.load_lora_weights(str(adapter.path), adapter_name=ADAPTER_NAME)
        except (ValueError, RuntimeError, KeyError, IndexError) as err:
            raise UserFacingError(f"{mismatch} ({_first_line(str(err))})") from None
    placed = count_adapted_layers(pipe, ADAPTER_NAME)
    if placed < adapter.num_lora_layers:
        raise UserFacingError(
            f"{mismatch}: only {placed} of its {adapter.num_lora_layers} LoRA layers match a layer of the model"
        )
    unplaced = _unplaced_keys_message(records)
    if unplaced:
        raise UserFacingError(f"{mismatch} ({unplaced})")
    pipe.set_adapters([ADAPTER_NAME], adapter_weights=[strength])


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


def _unplaced_keys_message(records: list[logging.LogRecord]) -> str | None:
    # diffusers: "... led to unexpected/missing keys ..."; transformers: a LOAD REPORT table.
    for record in records:
        text = record.getMessage()
        if "unexpected keys" in text or "missing keys" in text:
            return _first_line(text)
        if "LOAD REPORT" in text and ("MISSING" in text or "UNEXPECTED" in text):
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
