"""Score a shapes model: does it draw what the caption says? ``python -m trainer.shapes.evaluate MODEL``.

For every held-out combination (never shown to the base in training) and, for comparison, as many
training combinations, one image is generated from the caption (one seed each) and read back by
``analyser.read_scene``. Reports how often shape, colour, both, size, position and background match, with
the chance level of each, writes the figures as JSON and a contact sheet of the images.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from trainer.models.builtin import RECOMMENDED_GUIDANCE
from trainer.shapes import analyser, world

GUIDANCE = RECOMMENDED_GUIDANCE["builtin:shapes-sd"]

CHANCE = {
    "shape": 1 / len(world.BASE_SHAPES),
    "colour": 1 / len(world.SHAPE_COLOURS),
    "shape+colour": 1 / (len(world.BASE_SHAPES) * len(world.SHAPE_COLOURS)),
    "size": 1 / len(world.SIZES),
    "position": 1 / len(world.POSITIONS),
    "background": 1 / len(world.BACKGROUNDS),
}


def load_pipeline(model: str, sampler: str = "euler_a"):
    import torch
    from diffusers import StableDiffusionPipeline

    from trainer.models.builtin import builtin_model_path
    from trainer.sampling import make_scheduler

    folder = builtin_model_path(model) if model.startswith("builtin:") else Path(model)
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts: list[str], seeds: list[int], steps: int = 20, guidance: float = GUIDANCE, batch: int = 32):
    import torch

    images = []
    for i in range(0, len(prompts), batch):
        generators = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch]]
        out = pipe(
            prompts[i : i + batch],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            height=world.IMAGE_SIZE,
            width=world.IMAGE_SIZE,
        )
        images += out.images
    return images


def score(images, scenes) -> dict[str, float]:
    totals = dict.fromkeys(CHANCE, 0)
    for image, scene in zip(images, scenes, strict=True):
        hit = analyser.matches(analyser.read_scene(image), scene)
        for key in ("shape", "colour", "size", "position", "background"):
            totals[key] += hit[key]
        totals["shape+colour"] += hit["shape"] and hit["colour"]
    return {k: round(v / len(scenes), 3) for k, v in totals.items()}


def contact_sheet(images, columns: int = 18):
    from PIL import Image

    size = world.IMAGE_SIZE
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * size, rows * size), (255, 255, 255))
    for i, image in enumerate(images):
        sheet.paste(image.resize((size, size)), ((i % columns) * size, (i // columns) * size))
    return sheet


def evaluate(model: str, out: Path | None = None, seed: int = 0, steps: int = 20, guidance: float = GUIDANCE) -> dict:
    pipe = load_pipeline(model)
    rng = random.Random(seed)
    held = [world.Scene(*c) for c in world.held_out_combinations()]
    seen = [world.Scene(*c) for c in rng.sample(world.training_combinations(), len(held))]
    report = {"model": model, "sampler": "euler_a", "steps": steps, "guidance": guidance, "chance": CHANCE}
    for name, scenes in (("held_out", held), ("trained", seen)):
        seeds = [seed * 10_000 + i for i in range(len(scenes))]
        images = generate(pipe, [s.caption() for s in scenes], seeds, steps=steps, guidance=guidance)
        report[name] = {"n": len(scenes), **score(images, scenes)}
        if out:
            out.mkdir(parents=True, exist_ok=True)
            contact_sheet(images).save(out / f"{name}.png")
    if out:
        (out / "quality.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.shapes.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="builtin:shapes-sd or a diffusers folder")
    parser.add_argument("--out", type=Path, default=None, help="folder for quality.json and contact sheets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=GUIDANCE, help=f"classifier-free guidance (default {GUIDANCE:g}, "
                        "the model's recommended; the README also gives SD's usual 7.5)")
    args = parser.parse_args(argv)
    if not args.model.startswith("builtin:") and not (Path(args.model) / "model_index.json").is_file():
        print(f"error: {args.model} is not a diffusers model folder (no model_index.json); "
              "pass builtin:shapes-sd or the folder base_training --out wrote", file=sys.stderr)
        return 2
    report = evaluate(args.model, args.out, args.seed, args.steps, args.guidance)
    print(json.dumps({k: report[k] for k in ("held_out", "trained", "chance")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
