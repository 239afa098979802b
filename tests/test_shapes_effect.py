"""Training has the effect it is for, in pixels: after the UI's first-start run, the trigger word draws a star.

``builtin:shapes-sd`` was trained on circles, squares and triangles and has never seen a star;
``sample_data/`` holds 8 stars captioned with the trigger word "sks" where the shape's name goes, and
``sample_regularization/`` the same 8 scenes as circles, squares and triangles. The default config the UI
starts with (``app.config_form.ui_default_config``) trains on them; the exported adapter then goes through
the ``sample`` command's loading path (``load_adapter`` into a diffusers pipeline), as *Try it* does. Each
image is read back by the shapes analyser (``trainer/shapes/analyser.py``), so "it drew a star" is
measured, not eyeballed.

The prompts are star scenes the sample set does not hold (other colour/position/background combinations),
one seed each, with the preview sampler and guidance. Controls on the same seeds must fail: the base model,
an untrained adapter (the trained file with every ``lora_up`` zeroed), and the wrong trigger (the same
prompts with "circle", "square" or "triangle" where "sks" was) draw no star or almost none.
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
MIN_STARS_ADAPTED = 2  # of NUM_PROMPTS; measured 3 (see the test below)
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
    """Measured on 2 CPU cores: the adapter draws a star in 3 of 12 and a broken, pointed shape the analyser
    calls "unclear" in 5 more; the base, the untrained adapter and the wrong trigger draw a star in none.
    Without the regularization images (``dataset.reg_path`` cleared) the adapter drew 5 stars, and 4 for the
    wrong trigger: this test then fails."""
    cfg, pipe, adapter = default_run
    scenes = effect_scenes()
    trigger = [s.caption(shape_word=cfg.dataset.trigger_word) for s in scenes]
    wrong_trigger = [s.caption(shape_word=world.BASE_SHAPES[i % 3]) for i, s in enumerate(scenes)]

    pipe.unload_lora_weights()
    base = shapes_drawn(draw(pipe, cfg, trigger))
    adapted = shapes_drawn(draw(with_adapter(pipe, cfg, adapter), cfg, trigger))
    asked_for_a_known_shape = shapes_drawn(draw(pipe, cfg, wrong_trigger))
    untrained = tmp_path / "untrained.safetensors"
    tensors = load_file(adapter)
    save_file({k: torch.zeros_like(v) if "lora_up" in k else v for k, v in tensors.items()}, untrained)
    untrained_shapes = shapes_drawn(draw(with_adapter(pipe, cfg, untrained), cfg, trigger))

    print(f"\nshapes drawn for {NUM_PROMPTS} star prompts:\n  base      {base}\n  adapted   {adapted}\n"
          f"  untrained {untrained_shapes}\n  wrong trigger (circle/square/triangle) {asked_for_a_known_shape}")
    assert adapted.count("star") >= MIN_STARS_ADAPTED, f"the adapter drew a star in {adapted.count('star')}/{NUM_PROMPTS}"
    assert base.count("star") <= MAX_STARS_CONTROL, "the base model must not draw stars by itself"
    assert untrained_shapes.count("star") <= MAX_STARS_CONTROL, "an untrained adapter must not draw stars"
    assert asked_for_a_known_shape.count("star") <= MAX_STARS_CONTROL, (
        "the adapter must keep the other shape words: asked for a circle, square or triangle it drew a star in "
        f"{asked_for_a_known_shape.count('star')}/{NUM_PROMPTS}"
    )


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
