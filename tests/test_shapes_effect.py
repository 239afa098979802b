"""Training has the effect it is for, in pixels: after the UI's first-start run, the trigger word draws a star.

``builtin:shapes-sd`` was trained on circles, squares and triangles and has never seen a star;
``sample_data/`` holds 8 stars captioned with the trigger word "sks" where the shape's name goes. The default
config the UI starts with (``app.config_form.ui_default_config``) trains on it; the exported adapter then goes
through the ``sample`` command's loading path (``load_adapter`` into a diffusers pipeline), as *Try it* does.
Each image is read back by the shapes analyser (``trainer/shapes/analyser.py``), so "it drew a star" is
measured, not eyeballed.

The prompts are star scenes the sample set does not hold (other colour/position/background combinations),
one seed each, with the preview sampler and guidance. Controls on the same seeds must fail: the base model
and an untrained adapter (the trained file with every ``lora_up`` zeroed) draw no star.

Measured (12 prompts): the adapted model draws a star the analyser recognises in 6-7 of 12, the base and the
untrained adapter in none. Short of the clear majority we aim for, and the adapter bleeds: asked for a
circle, it mostly draws a star as well. Both are open work (more varied sample images, regularisation images
of the base's own shapes, a longer-trained base).
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.config_form import ui_default_config
from trainer.commands.sample import load_adapter, open_adapter
from trainer.models.loading import load_base_model
from trainer.sampling import build_pipeline, latent_generator
from trainer.shapes import analyser, world
from trainer.train import train

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"
NUM_PROMPTS = 12
MIN_STARS_ADAPTED = 4  # of NUM_PROMPTS; measured 6-7 (see the module doc)
MAX_STARS_CONTROL = 1


def effect_scenes() -> list[world.Scene]:
    """Star scenes not in sample_data/ (fixed choice)."""
    spec = importlib.util.spec_from_file_location("make_sample_data", SAMPLE_DATA / "make_sample_data.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    seen = {(s.colour, s.position, s.background) for s in generator.STARS}
    candidates = [
        world.Scene("star", c, "large", p, b)
        for c in world.SHAPE_COLOURS
        for p in world.POSITIONS
        for b in world.BACKGROUNDS
        if (c, p, b) not in seen
    ]
    return random.Random(3).sample(candidates, NUM_PROMPTS)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default config's run on sample_data/, exactly as a newcomer starts it (previews off to save time)."""
    cfg = ui_default_config(tmp_path_factory.mktemp("runs"), SAMPLE_DATA)
    cfg.training.device = "cpu"
    cfg.sampling.every_n_steps, cfg.sampling.at_start, cfg.sampling.at_end = 0, False, False
    assert cfg.model.base == "builtin:shapes-sd"
    result = train(cfg, show_progress=False)
    assert result.status == "completed" and result.adapter_paths
    model = load_base_model(cfg.model)
    pipe = build_pipeline(model, cfg.sampling.sampler)
    return cfg, pipe, result.adapter_paths[0]


def draw(pipe, cfg, prompts: list[str]):
    generators = [latent_generator(cfg.sampling.seed + i) for i in range(len(prompts))]
    with torch.no_grad():
        return pipe(
            prompts,
            num_inference_steps=cfg.sampling.steps,
            guidance_scale=cfg.sampling.guidance_scale,
            width=world.IMAGE_SIZE,
            height=world.IMAGE_SIZE,
            generator=generators,
        ).images


def shapes_drawn(images) -> list[str]:
    return [analyser.read_scene(image).shape for image in images]


def with_adapter(pipe, cfg, path, strength: float = 1.0):
    pipe.unload_lora_weights()
    load_adapter(pipe, open_adapter(path), cfg.model.base, strength=strength)
    return pipe


@pytest.mark.slow
def test_the_trigger_word_draws_the_new_shape_and_controls_do_not(default_run, tmp_path):
    cfg, pipe, adapter = default_run
    scenes = effect_scenes()
    trigger = [s.caption(shape_word=cfg.dataset.trigger_word) for s in scenes]
    circle = [s.caption(shape_word="circle") for s in scenes]

    pipe.unload_lora_weights()
    base = shapes_drawn(draw(pipe, cfg, trigger))
    adapted = shapes_drawn(draw(with_adapter(pipe, cfg, adapter), cfg, trigger))
    asked_for_circle = shapes_drawn(draw(pipe, cfg, circle))
    untrained = tmp_path / "untrained.safetensors"
    tensors = load_file(adapter)
    save_file({k: torch.zeros_like(v) if "lora_up" in k else v for k, v in tensors.items()}, untrained)
    untrained_shapes = shapes_drawn(draw(with_adapter(pipe, cfg, untrained), cfg, trigger))

    print(f"\nshapes drawn for {NUM_PROMPTS} star prompts:\n  base      {base}\n  adapted   {adapted}\n"
          f"  untrained {untrained_shapes}\n  'circle'  {asked_for_circle}")
    assert adapted.count("star") >= MIN_STARS_ADAPTED, f"the adapter drew a star in {adapted.count('star')}/{NUM_PROMPTS}"
    assert base.count("star") <= MAX_STARS_CONTROL, "the base model must not draw stars by itself"
    assert untrained_shapes.count("star") <= MAX_STARS_CONTROL, "an untrained adapter must not draw stars"
    # Not asserted: the adapter leaving other words alone. Asked for a circle, the adapted model draws a star
    # too (bleed, as a LoRA trained on 8 images without regularisation images does); see the module doc.


@pytest.mark.slow
def test_strength_zero_reproduces_the_base_image(default_run):
    import numpy as np

    cfg, pipe, adapter = default_run
    prompts = [s.caption(shape_word=cfg.dataset.trigger_word) for s in effect_scenes()[:4]]
    pipe.unload_lora_weights()
    base = draw(pipe, cfg, prompts)
    zero = draw(with_adapter(pipe, cfg, adapter, strength=0.0), cfg, prompts)
    for a, b in zip(base, zero, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
