"""Class images generated from the builtin model: cached by settings, then trained with prior_loss_weight."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from trainer.config import Config, validate
from trainer.data import build_train_dataset


def test_class_images_config_validation():
    cfg = Config()
    cfg.dataset.class_images = 3
    problems = "\n".join(validate(cfg))
    assert "`dataset.class_images` needs `dataset.reg_path`" in problems
    assert "`dataset.class_images` needs `dataset.class_prompt`" in problems


@pytest.mark.slow  # loads the builtin model and runs 2 tiny 2-step generations (~15 s on 2 busy cores)
def test_generate_reuse_and_train_with_class_images(tmp_path):
    from trainer.data.regularization import ensure_class_images
    from trainer.models.loading import load_base_model

    Image.new("RGB", (64, 64), (200, 0, 0)).save(tmp_path / "a.png")
    cfg = Config()
    cfg.dataset.path, cfg.dataset.reg_path = str(tmp_path), str(tmp_path / "reg")
    cfg.dataset.class_images, cfg.dataset.class_prompt, cfg.dataset.prior_loss_weight = 2, "a photo of a dog", 0.25
    cfg.dataset.repeats = 3
    cfg.sampling.steps = 2
    assert validate(cfg) == []
    before = build_train_dataset(cfg.dataset, seed=0)
    assert len(before) == 3, "a missing reg folder is fine while class images are pending"

    model = load_base_model(cfg.model)
    made = ensure_class_images(model, cfg, device="cpu")
    assert len(made.generated) == 2 and made.reused == []
    assert all(p.is_file() and p.with_suffix(".txt").read_text() == "a photo of a dog\n" for p in made.generated)
    again = ensure_class_images(model, cfg, device="cpu")
    assert again.generated == [] and again.reused == made.generated, "same settings reuse the cached images"
    made.generated[1].with_suffix(".txt").unlink()  # what a writer killed between image and caption left
    repaired = ensure_class_images(model, cfg, device="cpu")
    assert repaired.generated == [made.generated[1]], "an image without its caption is made again, never trusted"

    ds = build_train_dataset(cfg.dataset, seed=0)
    assert len(ds) == 6
    reg_items = [ds[i] for i in range(3, 6)]
    assert all(item["loss_weight"] == 0.25 and item["caption"] == "a photo of a dog" for item in reg_items)
    assert {Path(ds.records[item["record_index"]].path) for item in reg_items} == set(made.generated)
