"""Generate regularization (class) images from the base model, for DreamBooth prior preservation.

DreamBooth (Ruiz et al. 2022, §3.3) preserves the class prior by also training on the base model's own
images of the class prompt. They are written into ``dataset.reg_path`` as
``class_<settings digest>_<index>.png`` with the prompt as caption, so a later run with the same model,
prompt and settings reuses them and changed settings generate a fresh set beside the old one.
Call it after the model loads and before LoRA injection (or at least before training), then rebuild
the dataset so the new images are included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.atomic import write_text
from trainer.config import Config


@dataclass
class ClassImages:
    folder: Path
    generated: list[Path] = field(default_factory=list)
    reused: list[Path] = field(default_factory=list)


def class_prompt(cfg: Config) -> str:
    return cfg.dataset.class_prompt.strip() or cfg.dataset.class_word.strip()


def class_image_paths(cfg: Config) -> list[Path]:
    """Where the ``dataset.class_images`` images for these settings live (existing or not)."""
    from trainer.sampling import settings_digest

    smp, ds = cfg.sampling, cfg.dataset
    digest = settings_digest(cfg.model.base, class_prompt(cfg), smp.negative_prompt, ds.resolution, smp.steps,
                             smp.guidance_scale, smp.sampler, cfg.training.seed)
    return [Path(ds.reg_path) / f"class_{digest}_{i:04d}.png" for i in range(ds.class_images)]


def ensure_class_images(model: Any, cfg: Config, *, device: Any = None,
                        on_progress: Callable[[int, int], None] | None = None) -> ClassImages:
    """Generate the missing ``dataset.class_images`` images; existing ones are kept (the cache)."""
    import torch

    from trainer.sampling import build_pipeline, isolated_from_training, latent_generator, save_png

    paths = class_image_paths(cfg)
    result = ClassImages(Path(cfg.dataset.reg_path))
    # An image is complete with its caption; each is written atomically, the caption first, so a writer
    # killed between the two leaves a caption without an image, which is made again (never an uncaptioned image).
    todo = [(i, p) for i, p in enumerate(paths) if not (p.is_file() and p.with_suffix(".txt").is_file())]
    result.reused = [p for i, p in enumerate(paths) if (i, p) not in todo]
    if not todo:
        return result
    device = torch.device(device) if device is not None else next(model.unet.parameters()).device
    prompt, smp, res = class_prompt(cfg), cfg.sampling, cfg.dataset.resolution
    with isolated_from_training(model, device):
        pipe = build_pipeline(model, smp.sampler)
        for done, (index, path) in enumerate(todo, start=1):
            seed = cfg.training.seed + index
            image = pipe(prompt, negative_prompt=smp.negative_prompt or None, num_inference_steps=smp.steps,
                         guidance_scale=smp.guidance_scale, width=res, height=res,
                         generator=latent_generator(seed)).images[0]
            write_text(path.with_suffix(".txt"), prompt + "\n")
            save_png(image, path, {"prompt": prompt, "seed": seed, "base": cfg.model.base})
            result.generated.append(path)
            if on_progress:
                on_progress(done, len(todo))
    return result
