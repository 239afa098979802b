"""Training has the effect it is for, in pixels: after the UI's first-start run, the trigger word draws a cross.

``builtin:shapes-sd`` was trained on circles, squares and triangles and has never seen a cross (a plus sign);
``sample_data/`` holds 8 crosses captioned with the trigger word "sks" where the shape's name goes, and
``sample_regularization/`` the same 8 scenes as circles, squares and triangles. The default config the UI
starts with (``app.config_form.ui_default_config``) trains on them; the exported adapter then goes through
the ``sample`` command's loading path (``load_adapter`` into a diffusers pipeline), as *Try it* does. Each
image is read back by the shapes analyser (``trainer/shapes/analyser.py``), so "it drew a cross" is
measured, not eyeballed.

Two measures, with the preview sampler and guidance: the preview prompt over 12 seeds (what a newcomer
watches), and 12 cross scenes the sample set does not hold (other colour/position/background combinations),
one seed each. Controls on the same seeds must fail: the base model, an untrained adapter (the trained
file with every ``lora_up`` zeroed), and the wrong trigger ("circle", "square" or "triangle" where "sks"
was) draw no cross or almost none.
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
NOVEL = world.NOVEL_SHAPES[0]
MIN_PREVIEW_CROSSES = 9  # of NUM_PROMPTS seeds: a clear majority; measured 12 (see the test below)
MIN_NOVEL_CROSSES = 7  # of NUM_PROMPTS unseen scenes: a majority; measured 9
MAX_CONTROL_CROSSES = 1


def effect_scenes() -> list[world.Scene]:
    """Cross scenes not in sample_data/ (fixed choice)."""
    spec = importlib.util.spec_from_file_location("make_sample_data", SAMPLE_DATA / "make_sample_data.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    seen = {(s.colour, s.position, s.background) for s in generator.CROSSES}
    candidates = [
        world.Scene(NOVEL, c, "large", p, b)
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


def draw(pipe, cfg, prompts: list[str], seeds: list[int] | None = None):
    """One image per prompt; by default prompt i gets seed ``sampling.seed + i``, as the sample command does."""
    seeds = seeds if seeds is not None else [cfg.sampling.seed + i for i in range(len(prompts))]
    with torch.no_grad():
        return pipe(
            prompts,
            num_inference_steps=cfg.sampling.steps,
            guidance_scale=cfg.sampling.guidance_scale,
            width=world.IMAGE_SIZE,
            height=world.IMAGE_SIZE,
            generator=[latent_generator(seed) for seed in seeds],
        ).images


def shapes_drawn(images) -> list[str]:
    return [analyser.read_scene(image).shape for image in images]


def with_adapter(pipe, cfg, path, strength: float = 1.0):
    pipe.unload_lora_weights()
    load_adapter(pipe, open_adapter(path), cfg.model.base, strength=strength)
    return pipe


def untrained_copy(adapter: Path, folder: Path) -> Path:
    """The trained file with every ``lora_up`` zeroed: the same layers and keys, no learned change."""
    untrained = folder / "untrained.safetensors"
    save_file({k: torch.zeros_like(v) if "lora_up" in k else v for k, v in load_file(adapter).items()}, untrained)
    return untrained


def crosses_with_controls(pipe, cfg, adapter, untrained, trigger, wrong_trigger, seeds=None) -> dict[str, list[str]]:
    pipe.unload_lora_weights()
    drawn = {"base": shapes_drawn(draw(pipe, cfg, trigger, seeds))}
    drawn["adapted"] = shapes_drawn(draw(with_adapter(pipe, cfg, adapter), cfg, trigger, seeds))
    drawn["wrong trigger"] = shapes_drawn(draw(pipe, cfg, wrong_trigger, seeds))
    drawn["untrained"] = shapes_drawn(draw(with_adapter(pipe, cfg, untrained), cfg, trigger, seeds))
    print("\n" + "\n".join(f"  {name:14} {shapes}" for name, shapes in drawn.items()))
    return drawn


def assert_controls_fail(drawn: dict[str, list[str]]) -> None:
    assert drawn["base"].count(NOVEL) <= MAX_CONTROL_CROSSES, "the base model must not draw crosses by itself"
    assert drawn["untrained"].count(NOVEL) <= MAX_CONTROL_CROSSES, "an untrained adapter must not draw crosses"
    assert drawn["wrong trigger"].count(NOVEL) <= MAX_CONTROL_CROSSES, (
        "the adapter must keep the other shape words: asked for a circle, square or triangle it drew a cross in "
        f"{drawn['wrong trigger'].count(NOVEL)}/{NUM_PROMPTS}"
    )


@pytest.mark.slow
def test_the_preview_prompt_draws_a_cross_in_a_clear_majority_of_seeds(default_run, tmp_path):
    """What a newcomer watches: the preview prompt ("a large red sks in the center on a white background"),
    seeds 0-11. Measured on 2 CPU cores: the adapter draws a cross at all 12 seeds; the base and the untrained
    adapter a circle at all 12, the wrong trigger the shape it names at 11 (one unclear) and a cross at none.
    With ``dataset.reg_path`` cleared the wrong trigger drew crosses too, and this test failed."""
    cfg, pipe, adapter = default_run
    prompt = cfg.sampling.prompts[0]
    assert "{trigger}" in prompt
    trigger = [prompt.format(trigger=cfg.dataset.trigger_word)] * NUM_PROMPTS
    wrong_trigger = [prompt.format(trigger=world.BASE_SHAPES[i % 3]) for i in range(NUM_PROMPTS)]
    seeds = list(range(NUM_PROMPTS))
    drawn = crosses_with_controls(pipe, cfg, adapter, untrained_copy(adapter, tmp_path), trigger, wrong_trigger, seeds)
    assert drawn["adapted"].count(NOVEL) >= MIN_PREVIEW_CROSSES, (
        f"the adapter drew a cross in {drawn['adapted'].count(NOVEL)}/{NUM_PROMPTS} seeds")
    assert_controls_fail(drawn)


@pytest.mark.slow
def test_unseen_scenes_draw_crosses_and_controls_do_not(default_run, tmp_path):
    """12 cross scenes the sample set does not hold (other colours, corners, backgrounds), one seed each.
    Measured on 2 CPU cores: the adapter draws a cross in 9 (the others a circle or a triangle); the base and
    the untrained adapter in none, the wrong trigger in 1 (the other 11 the shape named)."""
    cfg, pipe, adapter = default_run
    scenes = effect_scenes()
    trigger = [s.caption(shape_word=cfg.dataset.trigger_word) for s in scenes]
    wrong_trigger = [s.caption(shape_word=world.BASE_SHAPES[i % 3]) for i, s in enumerate(scenes)]
    drawn = crosses_with_controls(pipe, cfg, adapter, untrained_copy(adapter, tmp_path), trigger, wrong_trigger)
    assert drawn["adapted"].count(NOVEL) >= MIN_NOVEL_CROSSES, (
        f"the adapter drew a cross in {drawn['adapted'].count(NOVEL)}/{NUM_PROMPTS} unseen scenes")
    assert_controls_fail(drawn)


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
