"""The shapes world behind ``builtin:shapes-sd``: captions, tokenizer, analyser, and a resumable base recipe."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import ImageFilter

from trainer.shapes import analyser, world
from trainer.shapes.tokenizer import world_words, write_shapes_tokenizer

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"


def test_held_out_split_is_fixed_and_disjoint():
    held, trained = world.held_out_combinations(), world.training_combinations()
    assert len(held) + len(trained) == len(world.all_combinations()) == 450
    assert not set(held) & set(trained)
    assert 30 <= len(held) <= 60  # about a tenth, the same on every machine (by hash, not by RNG)
    assert all(c[0] in world.BASE_SHAPES for c in trained), "the base never trains on a novel shape"


def test_every_world_word_is_one_token_and_a_trigger_word_is_not(tmp_path):
    from transformers import CLIPTokenizer

    write_shapes_tokenizer(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    for word in world_words():
        assert len(tokenizer(word).input_ids) == 3, word  # <start> word <end>
    assert len(tokenizer("sks").input_ids) > 3 and len(tokenizer("cross").input_ids) > 3
    caption = world.Scene("circle", "red", "small", "at the top left", "white").caption()
    assert len(tokenizer(caption).input_ids) == 2 + len(caption.split())


@pytest.mark.parametrize("blur", [0.0, 0.8])
def test_analyser_reads_back_every_scene(blur):
    """Every combination, the novel cross included, jittered, clean or slightly blurred (as a VAE decodes)."""
    rng = random.Random(0)
    misses = []
    for combination in world.all_combinations((*world.BASE_SHAPES, *world.NOVEL_SHAPES)):
        scene = world.jittered(combination, rng)
        image = world.render(scene)
        if blur:
            image = image.filter(ImageFilter.GaussianBlur(blur))
        hits = analyser.matches(analyser.read_scene(image), scene)
        misses += [(combination, key) for key, ok in hits.items() if not ok]
    assert misses == []


def test_analyser_says_none_for_an_empty_picture_and_unclear_for_a_blob():
    from PIL import Image, ImageDraw

    empty = Image.new("RGB", (64, 64), world.BACKGROUNDS["gray"])
    assert analyser.read_scene(empty).shape == "none"
    blob = empty.copy()
    ImageDraw.Draw(blob).line((5, 5, 60, 40), fill=(220, 40, 40), width=3)  # a stroke is no shape of the world
    assert analyser.read_scene(blob).shape == "unclear"


def test_generated_crosses_read_as_crosses_and_half_learned_ones_do_not():
    """Six 64 px images trained adapters drew (``tests/data/shapes_readings``): three clear crosses, and three
    half-learned shapes (a triangle with arms: not convex, not a cross). Those overlap the cross template by
    0.51-0.66 and would read "cross" under a threshold of 0.5; they must read "unclear"."""
    from PIL import Image

    folder = Path(__file__).parent / "data" / "shapes_readings"
    read = {p.stem: analyser.read_scene(Image.open(p)).shape for p in sorted(folder.glob("*.png"))}
    assert len(read) == 6
    assert {shape for name, shape in read.items() if name.startswith("cross")} == {"cross"}, read
    assert {shape for name, shape in read.items() if name.startswith("half")} == {"unclear"}, read


class _StopAfter:
    """A tqdm stand-in that kills the run (as Ctrl-C would) after ``n`` steps of any stage."""

    def __init__(self, n: int | None):
        self.n = n

    def __call__(self, total=None, initial=0, desc=""):
        outer = self

        class Bar:
            def update(self, k):
                if outer.n is not None:
                    outer.n -= k
                    if outer.n <= 0:
                        raise KeyboardInterrupt

            def set_postfix(self, **_):
                pass

            def close(self):
                pass

        return Bar()


@pytest.mark.slow
def test_base_recipe_resumed_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    """Kill the recipe mid-VAE and mid-UNet, run it again: the same weights as one uninterrupted run."""
    import torch

    from trainer.shapes import base_training as bt

    recipe = bt.Recipe(vae_steps=4, vae_batch=2, renders_per_combination=1, steps=6, batch=4, checkpoint_every=2)

    def run(work, stop_after):
        work.mkdir(exist_ok=True)
        tokenizer = bt.load_tokenizer(work)
        bt.train_vae(work, recipe, _StopAfter(stop_after))
        data = bt.encode_dataset(work, recipe, tokenizer, _StopAfter(None))
        return bt.train_diffusion(work, recipe, tokenizer, data, _StopAfter(stop_after))

    straight = run(tmp_path / "straight", None)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(resumed, 3)  # dies at VAE step 3, after the checkpoint at 2
    with pytest.raises(KeyboardInterrupt):
        run(resumed, 3 + 1)  # VAE finishes (2 more), the UNet dies at its step 2... after its checkpoint
    final = run(resumed, None)
    assert final["step"] == straight["step"] == recipe.steps
    for key, value in straight["unet"].items():
        assert torch.equal(value, final["unet"][key]), key
    assert all(torch.equal(a, b) for a, b in zip(straight["ema"], final["ema"], strict=True))


def test_the_recipe_tools_refuse_a_wrong_folder_by_name(tmp_path, capsys):
    from trainer.shapes import base_training, evaluate

    assert evaluate.main([str(tmp_path / "nope")]) == 2
    assert "nope is not a diffusers model folder" in capsys.readouterr().err
    assert base_training.main(["--work", str(tmp_path / "work"), "--export-now"]) == 2
    assert "holds no UNet checkpoint yet" in capsys.readouterr().err


def test_the_shipped_encoder_is_deterministic_as_the_base_was_trained():
    """The base UNet learned posterior *means*; trainers encode by sampling the posterior. The shipped VAE's
    posterior is pinned to its mean (``pin_posterior_to_mean``), so a sampled latent is the mean. Before the pin
    its std was 0.58 against a spread of 1.25, and the first run's adapters drew that noise as texture."""
    import numpy as np
    import torch
    from PIL import Image

    from trainer.config import ModelConfig
    from trainer.models.loading import load_base_model

    vae = load_base_model(ModelConfig(base="builtin:shapes-sd")).vae
    image = Image.open(SAMPLE_DATA / "cross_00.png").convert("RGB").resize((world.IMAGE_SIZE,) * 2, Image.LANCZOS)
    pixels = torch.tensor(np.asarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
    sampled = posterior.sample(torch.Generator().manual_seed(0))
    assert posterior.std.max() < 1e-5 * posterior.mean.std()
    assert torch.allclose(sampled, posterior.mean, atol=1e-5 * posterior.mean.std().item())
