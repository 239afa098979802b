"""Preview images: a diffusers pipeline around the live model, run without touching training.

Previews are made from the very modules being trained (LoRA injected, mid-training), so what the user
sees is what the next step starts from. diffusers' pipelines do the denoising loop, CFG and decoding;
what is ours is the isolation: a preview must leave the training trajectory exactly as it found it —
every global RNG stream, every module's train/eval flag, no autograd graph, no hooks or progress bars.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.atomic import write_with
from trainer.config import SAMPLERS, Config
from trainer.prompt_options import PromptSpec, parse_prompt

SAMPLES_DIR = "samples"

# Sampler names as A1111/kohya users know them -> diffusers scheduler class and the options that make
# it that sampler. "DPM++ 2M" is DPMSolverMultistep with the dpmsolver++ algorithm at order 2
# (diffusers' scheduler docs give this A1111 mapping).
_SAMPLER_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
assert set(_SAMPLER_SPECS) == set(SAMPLERS), "every sampler the config accepts needs a scheduler here"


def make_scheduler(sampler: str, scheduler_config: Any) -> Any:
    """An inference scheduler for ``sampler`` built from the base model's scheduler config.

    ``from_config`` carries over the betas, ``prediction_type`` (epsilon / v) and timestep offsets, so
    a v-prediction model samples as v-prediction. Accepts a scheduler or its ``.config``.
    """
    import diffusers

    if sampler not in _SAMPLER_SPECS:
        raise ValueError(f"`sampling.sampler` must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    class_name, options = _SAMPLER_SPECS[sampler]
    config = getattr(scheduler_config, "config", scheduler_config)
    return getattr(diffusers, class_name).from_config(config, **options)


@dataclass
class SampleResult:
    """One preview image written to disk."""

    path: Path
    prompt: str
    seed: int
    index: int
    step: int

    def event_fields(self, run_dir: Path) -> dict[str, Any]:
        """The fields of a ``sample`` event (see trainer/events.py): path relative to the run folder."""
        return {
            "step": self.step,
            "path": self.path.relative_to(run_dir).as_posix(),
            "prompt": self.prompt,
            "seed": self.seed,
            "index": self.index,
        }


def preview_prompts(cfg: Config) -> list[str]:
    """``sampling.prompts`` with ``{trigger}`` replaced (plain replace: prompts may hold other braces)."""
    return [p.replace("{trigger}", cfg.dataset.trigger_word) for p in cfg.sampling.prompts]


def preview_specs(cfg: Config) -> list[PromptSpec]:
    """Each prompt with its sd-scripts options (``--n --w --h --d --s --l``) filled in from ``[sampling]``.

    Without ``--d`` prompt i gets ``sampling.seed + i``, as before options existed.
    """
    smp = cfg.sampling
    specs = []
    for index, line in enumerate(preview_prompts(cfg)):
        spec = parse_prompt(line)
        specs.append(PromptSpec(
            prompt=spec.prompt,
            negative=spec.negative if spec.negative is not None else smp.negative_prompt,
            width=spec.width or smp.width or cfg.dataset.resolution,
            height=spec.height or smp.height or cfg.dataset.resolution,
            seed=spec.seed if spec.seed is not None else smp.seed + index,
            steps=spec.steps or smp.steps,
            guidance=spec.guidance if spec.guidance is not None else smp.guidance_scale,
        ))
    return specs


def generate_previews(
    model: Any, cfg: Config, run_dir: Path, step: int, *, device: Any, dtype: Any = None
) -> list[SampleResult]:
    """Render ``cfg.sampling.prompts`` with the live model into ``run_dir/samples``, one fixed seed each.

    ``dtype`` is the autocast dtype (the trainer passes its weight dtype): fp16/bf16 autocast on any
    device, fp32 none; None takes it from ``training.mixed_precision`` on CUDA and uses none on the CPU.
    Paths in the results are ``run_dir``-based; ``SampleResult.event_fields`` makes them relative.
    """
    smp = cfg.sampling
    device = torch.device(device)
    results = []
    with isolated_from_training(model, device):
        pipe = build_pipeline(model, smp.sampler)
        for index, spec in enumerate(preview_specs(cfg)):
            prompt, seed = spec.prompt, spec.seed
            with _autocast(device, _autocast_dtype(cfg, device, dtype)):
                image = pipe(
                    num_inference_steps=spec.steps,
                    guidance_scale=spec.guidance,
                    width=spec.width,
                    height=spec.height,
                    generator=latent_generator(seed),
                    **prompt_kwargs(model, prompt, spec.negative, device),
                ).images[0]
            path = Path(run_dir) / SAMPLES_DIR / f"step_{step:06d}_{index:02d}.png"
            save_png(image, path, {"prompt": prompt, "seed": seed, "step": step, "sampler": smp.sampler})
            results.append(SampleResult(path=path, prompt=prompt, seed=seed, index=index, step=step))
    return results


def prompt_kwargs(model: Any, prompt: str, negative: str, device: torch.device) -> dict[str, Any]:
    """The prompt as text, or — with ``training.clip_skip`` — as embeddings made exactly as training makes them
    (``conditioning.encode_text``), so previews show what the adapter learnt against."""
    clip_skip = getattr(model, "extra", {}).get("clip_skip", 1)
    if clip_skip <= 1:
        return {"prompt": prompt, "negative_prompt": negative or None}
    from trainer.conditioning import encode_text

    return {
        "prompt_embeds": encode_text(model, [prompt], device).hidden_states,
        "negative_prompt_embeds": encode_text(model, [negative], device).hidden_states,
    }


def build_pipeline(model: Any, sampler: str) -> Any:
    """A diffusers pipeline sharing (not copying) the model's modules; SDXL gets its own pipeline class.

    Nothing is moved, cast or hooked here: the modules stay exactly where training keeps them.
    """
    from accelerate.utils import extract_model_from_parallel

    # The trainer may hold DDP- or torch.compile-wrapped modules; the pipeline needs the plain ones.
    unet = extract_model_from_parallel(model.unet, keep_torch_compile=False)
    encoders = [extract_model_from_parallel(te, keep_torch_compile=False) for te in model.text_encoders]
    scheduler = make_scheduler(sampler, model.noise_scheduler.config)
    if model.family == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(
            vae=model.vae,
            text_encoder=encoders[0],
            text_encoder_2=encoders[1],
            tokenizer=model.tokenizers[0],
            tokenizer_2=model.tokenizers[1],
            unet=unet,
            scheduler=scheduler,
            add_watermarker=False,  # the watermark needs an extra package and alters previews
        )
    else:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=model.vae,
            text_encoder=encoders[0],
            tokenizer=model.tokenizers[0],
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)  # the trainer's own progress bar owns the terminal
    return pipe


def latent_generator(seed: int) -> torch.Generator:
    """A private CPU generator: the same seed gives the same latents on any device, and the global
    RNG streams the training loop draws from are never consumed."""
    return torch.Generator("cpu").manual_seed(seed)


def save_png(image: Any, path: Path, info: dict[str, Any]) -> None:
    """Write a PIL image as PNG atomically, with its generation settings as PNG text chunks."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    for key, value in info.items():
        meta.add_text(f"lora-studio.{key}", str(value))
    write_with(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=meta))


def settings_digest(*values: Any) -> str:
    """Short stable hash of generation settings, for file names that differ when the settings do."""
    return hashlib.sha1(repr(values).encode("utf-8")).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------
# Isolation from the training loop


@contextlib.contextmanager
def isolated_from_training(model: Any, device: torch.device) -> Iterator[None]:
    """Everything a preview needs switched on, and everything it could disturb put back afterwards."""
    modules = [model.unet, model.vae, *model.text_encoders]
    with preserved_rng_state(), preserved_modes(modules), on_device(modules, device), torch.no_grad():
        for module in modules:
            module.eval()  # LoRA dropout off, and no BatchNorm-style statistics updated
        yield


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Save and restore torch (CPU and every CUDA device), numpy and python ``random`` RNG states.

    Anything inside (a library drawing from the global generator, dropout left on) then cannot shift
    the noise, timesteps or augmentations of the following training steps.
    """
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


@contextlib.contextmanager
def preserved_modes(modules: list[Any]) -> Iterator[None]:
    """Restore every submodule's own ``training`` flag: a frozen text encoder stays in eval while
    the UNet around it trains, so one flag per top-level module would not be enough."""
    saved = [(sub, sub.training) for module in modules for sub in module.modules()]
    try:
        yield
    finally:
        for sub, training in saved:
            sub.training = training


@contextlib.contextmanager
def on_device(modules: list[Any], device: torch.device) -> Iterator[None]:
    """Bring modules the trainer parked elsewhere (e.g. the VAE on the CPU after latent caching) to
    ``device`` for the preview, and put them back. ``Module.to`` keeps parameter identity, so an
    optimizer's references stay valid."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # parameters report "cuda:0"
    moved = []
    for module in modules:
        param = next(module.parameters(), None)
        if param is not None and param.device != device:
            moved.append((module, param.device))
            module.to(device)
    try:
        yield
    finally:
        for module, previous in moved:
            module.to(previous)


def _autocast_dtype(cfg: Config, device: torch.device, dtype: Any) -> torch.dtype | None:
    if dtype is not None:
        return None if dtype == torch.float32 else dtype
    if device.type != "cuda":
        return None
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.training.mixed_precision)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    # Mixed-precision training keeps LoRA weights in fp32 beside fp16/bf16 base weights; autocast
    # runs the matmuls in the low dtype as the training forward does.
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
