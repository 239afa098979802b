"""``sample``: generate images with one or several adapters, beside the base model's, or as a labelled grid.

This is the UI's "try it" panel and Test tab run out of the UI process: the same seed with the adapters
off and on gives base/adapted pairs, and ``--grid`` renders prompts × strengths (× adapters) as one PNG.
The base pipeline is loaded once and adapters are switched on it (``trainer.adapter_switching``);
files are checked before the model loads (``trainer.adapter_files``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainer.adapter_files import (  # noqa: F401  (re-exported: tests and callers import them from here)
    BASE_METADATA_KEY,
    DEFAULT_BASE,
    AdapterFile,
    adapter_clip_skip,
    default_base,
    open_adapter,
)
from trainer.adapter_grid import GRID_BY, parse_strengths
from trainer.adapter_switching import ADAPTER_NAME, count_adapted_layers, load_adapter, render  # noqa: F401
from trainer.config import SAMPLERS, SamplingConfig
from trainer.errors import UserFacingError
from trainer.models.builtin import recommended_guidance

NAME = "sample"
HELP = "generate images with adapters (LoRA, LoCon, DoRA, LoHa, LoKr): beside the base model's, or as a grid"
DESCRIPTION = HELP + (
    "\n\nThe base model defaults to the one in the run folder's config.toml, else the one recorded in the first "
    "adapter's metadata (ss_sd_model_name), else builtin:tiny-sd.\nExamples:\n"
    '  python -m trainer sample runs/my-lora/my-lora.safetensors --prompt "sks, a photo" --compare --json\n'
    '  python -m trainer sample --lora a.safetensors:0.8 --lora b.safetensors:0.5 --prompt "sks" --grid '
    "--strengths 0,0.5,1"
)
DEFAULT_STRENGTHS = "0,0.5,0.75,1"
_DEFAULTS = SamplingConfig()


@dataclass
class SampleOptions:
    """What to generate; None for width/height means the base model's native size.

    ``adapter`` (weight 1) and ``loras`` ((path, weight) pairs) together are the adapters; all act at once,
    each at ``weight × strength``.
    """

    adapter: Path | None
    prompts: list[str]
    loras: list[tuple[Path, float]] = field(default_factory=list)
    base: str | None = None
    seed: int = _DEFAULTS.seed
    strength: float = 1.0
    steps: int = _DEFAULTS.steps
    sampler: str = _DEFAULTS.sampler
    width: int | None = None
    height: int | None = None
    guidance: float | None = None  # None: the base model's recommended guidance (7.5 unless it names one)
    negative_prompt: str = ""
    compare: bool = False
    out: Path = field(default_factory=lambda: Path("samples"))
    device: str = "auto"
    grid: bool = False
    strengths: list[float] = field(default_factory=lambda: parse_strengths(DEFAULT_STRENGTHS))
    grid_by: str = "combined"
    events: Path | None = None

    def weighted(self) -> list[tuple[Path, float]]:
        return ([(Path(self.adapter), 1.0)] if self.adapter is not None else []) + [
            (Path(p), w) for p, w in self.loras
        ]


@dataclass
class SampledImage:
    path: Path
    prompt: str
    seed: int
    kind: str  # "base" or "adapted"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "adapter",
        type=Path,
        nargs="?",
        help="adapter .safetensors: LoRA/LoCon (kohya or diffusers format), DoRA, LoHa or LoKr (kohya/LyCORIS keys)",
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:WEIGHT]",
        help="an adapter with its weight (default 1); repeat to combine several (they act together)",
    )
    parser.add_argument("--prompt", action="append", required=True, help="prompt; repeat for several images")
    parser.add_argument("--negative-prompt", default="", help="negative prompt")
    parser.add_argument(
        "--base",
        help=f"base model (default: the run folder's config.toml, else the adapter's metadata, else {DEFAULT_BASE})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=_DEFAULTS.seed,
        help="seed of the first prompt; prompt i uses seed + i (with --grid every cell uses this seed)",
    )
    parser.add_argument("--strength", type=float, default=1.0, help="LoRA strength (0: the base model)")
    parser.add_argument("--steps", type=int, default=_DEFAULTS.steps, help="denoising steps")
    parser.add_argument("--sampler", choices=SAMPLERS, default=_DEFAULTS.sampler, help="sampler")
    parser.add_argument("--width", type=int, help="image width, a multiple of 8 (default: the model's size)")
    parser.add_argument(
        "--height", type=int, help="image height, a multiple of 8 (default: the model's size)"
    )
    parser.add_argument(
        "--guidance", type=float, default=None,
        help=f"classifier-free guidance scale (default: the base model's own, {_DEFAULTS.guidance_scale:g} unless it "
        "names one; builtin:shapes-sd 3)",
    )
    parser.add_argument(
        "--compare", action="store_true", help="also render the base model (adapter off, same seed)"
    )
    parser.add_argument(
        "--grid",
        action="store_true",
        help="one labelled PNG: a row per prompt, the base model, then a column per strength (same seed in every cell)",
    )
    parser.add_argument(
        "--strengths",
        default=DEFAULT_STRENGTHS,
        help=f"--grid: the strengths (default {DEFAULT_STRENGTHS}; 0 is the base column)",
    )
    parser.add_argument(
        "--grid-by",
        choices=GRID_BY,
        default="combined",
        help="--grid: combined = all adapters together per strength; adapter = a group of columns per adapter, "
        "each alone (to compare adapters or checkpoints)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("samples"), help="output folder (default: ./samples)"
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu"), default="auto", help="auto: the GPU if there is one"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the images (or the grid and its cells) as JSON"
    )
    parser.add_argument(
        "--events", type=Path, help="append progress as JSON lines to this file (what the UI follows)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from trainer.tools.common import parse_weighted

    loras = [(w.path, w.weight) for w in map(parse_weighted, args.lora)]
    options = SampleOptions(
        adapter=args.adapter, prompts=args.prompt, loras=loras, base=args.base, seed=args.seed,
        strength=args.strength, steps=args.steps, sampler=args.sampler, width=args.width, height=args.height,
        guidance=args.guidance, negative_prompt=args.negative_prompt, compare=args.compare, out=args.out,
        device=args.device, grid=args.grid, grid_by=args.grid_by, events=args.events,
    )  # fmt: skip
    progress = _progress(options.events, show_bar=not args.no_progress)
    try:
        options.strengths = parse_strengths(args.strengths)
        outcome = (
            _grid_outcome(sample_grid(options, progress))
            if options.grid
            else _images_outcome(sample_adapter(options, progress))
        )
    except (
        Exception
    ) as err:  # the events file must end with why; the CLI still prints the error (or traceback)
        progress.finish(
            False, None, str(err) if isinstance(err, UserFacingError) else f"{type(err).__name__}: {err}"
        )
        raise
    payload, output, message, lines = outcome
    progress.finish(True, output, message)
    print(json.dumps(payload) if args.json else "\n".join(lines))
    return 0


def _grid_outcome(result: Any) -> tuple[dict, Path, str, list[str]]:
    """(--json payload, output path, finished message, plain lines) of a grid."""
    payload = {
        "grid": str(result.path), "prompts": result.prompts, "columns": result.columns, "seed": result.seed,
        "cells": [asdict(c) for c in result.cells],
    }  # fmt: skip
    return (
        payload,
        result.path,
        f"grid of {len(result.prompts)} x {len(result.columns)}",
        [f"grid: {result.path}"],
    )


def _images_outcome(images: list[SampledImage]) -> tuple[dict, Path | None, str, list[str]]:
    payload = {"images": [{**asdict(i), "path": str(i.path)} for i in images]}
    lines = [f"{i.kind}: {i.path}" for i in images]
    return payload, (images[-1].path if images else None), f"{len(images)} images", lines


def _progress(events: Path | None, show_bar: bool = True) -> Any:
    from trainer.tools.progress import Progress

    return Progress(events, show_bar=show_bar)


def _open(options: SampleOptions, progress: Any) -> tuple[Any, list[str], list[float], str]:
    """Check the options and files, then load the base once with every adapter: (bench, names, weights, base)."""
    from trainer.adapter_switching import open_bench

    _check_options(options)
    weighted = options.weighted()
    files = [open_adapter(path) for path, _ in weighted]
    base = options.base or default_base(files[0])
    if options.guidance is None:
        options.guidance = recommended_guidance(base, _DEFAULTS.guidance_scale)
    progress.emit("progress", done=0, total=1, what="loading the base model and adapters")
    bench, names = open_bench(base, files, options.sampler, options.device)
    return bench, names, [w for _, w in weighted], base


def sample_adapter(options: SampleOptions, progress: Any = None) -> list[SampledImage]:
    """Generate every prompt with the adapters (and, with ``compare``, without them) and write PNGs."""
    progress = progress or _progress(options.events, show_bar=False)
    bench, names, weights, base = _open(options, progress)
    settings = _render_settings(options)
    kinds = ("base", "adapted") if options.compare else ("adapted",)
    plan = [(index, kind) for index in range(len(options.prompts)) for kind in kinds]
    images = []
    for index, kind in progress.stage(plan, len(plan), "sampling"):
        strength = options.strength if kind == "adapted" else 0.0
        bench.activate({name: w * strength for name, w in zip(names, weights, strict=True)})
        prompt, seed = options.prompts[index], options.seed + index
        image = _save(
            render(bench, prompt, seed, settings), options, base, prompt, seed, index, kind, strength
        )
        images.append(image)
    return images


def sample_grid(options: SampleOptions, progress: Any = None) -> Any:
    """``--grid``: one labelled PNG of prompts × (base, strengths) (× adapters); see ``trainer.adapter_grid``."""
    from trainer.adapter_grid import render_adapter_grid
    from trainer.adapter_switching import adapter_label

    progress = progress or _progress(options.events, show_bar=False)
    bench, names, weights, base = _open(options, progress)
    used = " + ".join(f"{adapter_label(p)}:{w:g}" for p, w in options.weighted())
    title = f"{used} · base {base} · seed {options.seed} · {options.sampler} {options.steps} steps · CFG {options.guidance:g}"
    return render_adapter_grid(
        bench, names, weights, options.prompts, options.strengths, by=options.grid_by, seed=options.seed,
        settings=_render_settings(options), out=options.out, title=title, progress=progress,
    )  # fmt: skip


def _render_settings(options: SampleOptions) -> Any:
    from trainer.adapter_switching import RenderSettings

    return RenderSettings(
        options.steps, options.guidance, options.negative_prompt, options.width, options.height
    )


def _save(
    image: Any,
    options: SampleOptions,
    base: str,
    prompt: str,
    seed: int,
    index: int,
    kind: str,
    strength: float,
) -> SampledImage:
    from trainer.sampling import save_png, settings_digest

    weighted = options.weighted()
    adapters = [(str(p), w) for p, w in weighted]
    settings = (base, prompt, options.negative_prompt, seed, strength, options.steps, options.sampler,
                options.guidance, image.size)  # fmt: skip
    if len(weighted) > 1:  # a single adapter keeps the file names it always had
        settings = (*settings, adapters)
    path = options.out / f"{weighted[0][0].stem}_{index:02d}_{settings_digest(*settings)}_{kind}.png"
    info = {
        "prompt": prompt,
        "seed": seed,
        "kind": kind,
        "strength": strength,
        "sampler": options.sampler,
        "adapter": ", ".join(f"{Path(p).name}:{w:g}" for p, w in adapters)
        if len(adapters) > 1
        else weighted[0][0].name,
    }
    save_png(image, path, info)
    return SampledImage(path=path.resolve(), prompt=prompt, seed=seed, kind=kind)


def _check_options(options: SampleOptions) -> None:
    """Raise one error listing every bad option; a lone --width or --height means a square image."""
    problems = []
    if not options.weighted():
        problems.append("give an adapter: ADAPTER or --lora PATH[:WEIGHT]")
    if not options.prompts or any(not p.strip() for p in options.prompts):
        problems.append("--prompt must be a non-empty prompt")
    if options.steps <= 0:
        problems.append(f"--steps must be a positive integer, got {options.steps}")
    if options.guidance is not None and options.guidance < 0:
        problems.append(f"--guidance must be 0 or more, got {options.guidance}")
    if options.grid_by not in GRID_BY:
        problems.append(f"--grid-by must be one of {', '.join(GRID_BY)}, got {options.grid_by!r}")
    if options.width is not None and options.height is None:
        options.height = options.width
    if options.height is not None and options.width is None:
        options.width = options.height
    for flag, size in (("--width", options.width), ("--height", options.height)):
        if size is not None and (size <= 0 or size % 8):
            problems.append(f"{flag} must be a positive multiple of 8, got {size}")
    if problems:
        raise UserFacingError("; ".join(problems))
