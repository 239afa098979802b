"""The dataset interface the training loop uses: items, determinism, batches, errors, sample_data."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.config import DatasetConfig
from trainer.data import DatasetError, build_train_dataset, collate_batch, epoch_batches

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
REGULARIZATION = REPO / "sample_regularization"


def make_image(path: Path, size: tuple[int, int] = (80, 80), color=(200, 30, 30), caption: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    # A left/right asymmetric stripe so flips and crops are visible in the pixels.
    image.paste((0, 0, 0), (0, 0, max(1, size[0] // 5), size[1]))
    image.save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def cfg_for(path: Path, **kw) -> DatasetConfig:
    return DatasetConfig(path=str(path), **kw)


def test_sample_data_is_committed_and_regenerates_identically(tmp_path):
    pngs = sorted(SAMPLE.glob("*.png"))
    assert len(pngs) == 8, "sample_data must hold 8 PNGs"
    assert len(list(SAMPLE.glob("*.txt"))) == 7, "exactly one sample image has no caption"
    for png in pngs:
        assert Image.open(png).size == (128, 128), f"{png.name} must be 128x128"
    sys.path.insert(0, str(SAMPLE))
    try:
        import make_sample_data
    finally:
        sys.path.remove(str(SAMPLE))
    make_sample_data.main(tmp_path, regularization=tmp_path / "reg")
    for png in pngs:
        assert (tmp_path / png.name).read_bytes() == png.read_bytes(), f"{png.name} differs from its generator"
    from trainer.shapes.analyser import read_scene

    assert all(read_scene(Image.open(png)).shape == "cross" for png in pngs), "every sample image must show a cross"

    # The first run's regularization images: each cross's scene as a circle, a square and a triangle.
    committed = sorted(REGULARIZATION.glob("*.png"))
    assert [p.name for p in committed] == sorted(p.name for p in (tmp_path / "reg").glob("*.png")) and len(committed) == 24
    for png in committed:
        assert (tmp_path / "reg" / png.name).read_bytes() == png.read_bytes(), f"{png.name} differs from its generator"
        caption = png.with_suffix(".txt").read_text(encoding="utf-8")
        shape = read_scene(Image.open(png)).shape
        assert shape == png.name.split("_")[0] and f" {shape} " in caption, f"{png.name} must show and name its shape"


def test_items_on_sample_data():
    ds = build_train_dataset(DatasetConfig(path=str(SAMPLE), class_word="circle", resolution=64), seed=0)
    assert len(ds.records) == 8 and len(ds) == 8
    item = ds[0]
    px = item["pixel_values"]
    assert px.dtype == torch.float32 and px.shape == (3, 64, 64)
    assert px.min() >= -1 and px.max() <= 1 and px.max() > 0.7, "pixels must be scaled to [-1, 1]"
    assert item["caption"] == "a large yellow sks in the center on a black background"  # holds the trigger: kept as is
    assert item["original_size"] == (128, 128) and item["target_size"] == (64, 64) and item["crop_top_left"] == (0, 0)
    assert item["loss_weight"] == 1.0 and item["record_index"] == 0
    uncaptioned = [i for i, r in enumerate(ds.records) if r.caption == ""]
    assert len(uncaptioned) == 1 and ds[uncaptioned[0]]["caption"] == "sks circle"
    assert ds.warnings == []


def test_repeats_multiply_length_and_trigger_not_doubled(tmp_path):
    make_image(tmp_path / "a.png", caption="sks, a dog")
    make_image(tmp_path / "b.png", caption="a cat")
    ds = build_train_dataset(cfg_for(tmp_path, repeats=3), seed=0)
    assert len(ds) == 6
    assert sorted({ds[i]["caption"] for i in range(6)}) == ["sks, a cat", "sks, a dog"]


def test_items_are_deterministic_per_seed_epoch_index(tmp_path):
    for i in range(3):
        make_image(tmp_path / f"{i}.png", size=(120 + 10 * i, 80), caption=f"tag{i}, red, blue, green, round")
    cfg = cfg_for(tmp_path, crop="random", flip=True, shuffle_captions=True, keep_tokens=1, caption_dropout=0.3, repeats=4)
    a, b = build_train_dataset(cfg, seed=7), build_train_dataset(cfg, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    order = list(range(len(a)))
    first = {i: a[i] for i in order}
    random.seed(123)
    torch.manual_seed(123)  # the global RNGs must not matter
    for i in reversed(order):  # nor the access order (a resumed run starts mid-epoch)
        assert torch.equal(b[i]["pixel_values"], first[i]["pixel_values"]), f"item {i} pixels differ"
        assert b[i]["caption"] == first[i]["caption"] and b[i]["crop_top_left"] == first[i]["crop_top_left"]
    b.set_epoch(3)
    assert any(b[i]["caption"] != first[i]["caption"] or not torch.equal(b[i]["pixel_values"], first[i]["pixel_values"])
               for i in order), "a new epoch must draw new crops/flips/captions"
    assert not a.cacheable_latents and not a.static_captions


def test_static_flags_and_load_pixels_match_items(tmp_path):
    make_image(tmp_path / "a.png", size=(100, 70), caption="one, two")
    ds = build_train_dataset(cfg_for(tmp_path), seed=0)
    assert ds.cacheable_latents and ds.static_captions
    assert torch.equal(ds.load_pixels(0), ds[0]["pixel_values"])
    assert ds.static_caption(0) == ds[0]["caption"] == "sks, one, two"
    assert ds[0]["crop_top_left"] == (0, (91 - 64) // 2), "centre crop of the 91x64 resize"


def test_shuffle_keeps_trigger_and_keep_tokens(tmp_path):
    make_image(tmp_path / "a.png", caption="first, b, c, d, e, f, g")
    ds = build_train_dataset(cfg_for(tmp_path, shuffle_captions=True, keep_tokens=2, repeats=20), seed=0)
    captions = [ds[i]["caption"] for i in range(len(ds))]
    assert all(c.startswith("sks, first, ") for c in captions), captions[:3]
    assert len(set(captions)) > 1 and all(sorted(c.split(", ")) == sorted(captions[0].split(", ")) for c in captions)


def test_caption_dropout_one_empties_every_caption(tmp_path):
    make_image(tmp_path / "a.png", caption="x")
    ds = build_train_dataset(cfg_for(tmp_path, caption_dropout=1.0, repeats=3), seed=0)
    assert [ds[i]["caption"] for i in range(3)] == ["", "", ""]


def test_epoch_batches_cover_each_item_once_never_mix_buckets(tmp_path):
    for i in range(5):
        make_image(tmp_path / f"wide{i}.png", size=(160, 80))
    for i in range(3):
        make_image(tmp_path / f"tall{i}.png", size=(60, 120))
    ds = build_train_dataset(cfg_for(tmp_path, bucketing=True), seed=0)
    batches = epoch_batches(ds, 2, seed=1, epoch=0)
    assert batches == epoch_batches(ds, 2, seed=1, epoch=0), "must be a function of (seed, epoch)"
    assert batches != epoch_batches(ds, 2, seed=1, epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert sorted(len(b) for b in batches) == [1, 1, 2, 2, 2], "each bucket's last partial batch is kept"
    for batch in batches:
        collated = collate_batch([ds[i] for i in batch])
        assert collated["pixel_values"].shape[0] == len(batch) and collated["loss_weight"].shape == (len(batch),)
        assert len({ds.item_bucket(i) for i in batch}) == 1


def test_missing_and_empty_folders_fail_before_any_model(tmp_path):
    with pytest.raises(DatasetError, match="`dataset.path` folder not found"):
        build_train_dataset(cfg_for(tmp_path / "nope"), seed=0)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="no usable images"):
        build_train_dataset(cfg_for(tmp_path), seed=0)


def test_bad_images_listed_or_skipped_with_warnings(tmp_path):
    make_image(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DatasetError) as err:
        build_train_dataset(cfg_for(tmp_path), seed=0)
    message = str(err.value)
    assert "empty.png" in message and "text.png" in message and "good.png" not in message
    assert "skip_bad_images" in message
    ds = build_train_dataset(cfg_for(tmp_path, skip_bad_images=True), seed=0)
    assert [r.path.name for r in ds.records] == ["good.png"]
    assert len(ds.warnings) == 2 and all("skipped unreadable image" in w for w in ds.warnings)


def test_regularization_items_carry_prior_loss_weight(tmp_path):
    make_image(tmp_path / "train" / "a.png", caption="a dog")
    make_image(tmp_path / "train" / "b.png")
    make_image(tmp_path / "reg" / "r.png", color=(10, 10, 10))
    cfg = DatasetConfig(path=str(tmp_path / "train"), reg_path=str(tmp_path / "reg"), prior_loss_weight=0.5,
                        class_word="dog", repeats=2)
    ds = build_train_dataset(cfg, seed=0)
    assert len(ds) == 8, "4 training items + as many regularization items"
    weights = [ds[i]["loss_weight"] for i in range(len(ds))]
    assert weights == [1.0] * 4 + [0.5] * 4
    assert ds[7]["caption"] == "dog", "regularization captions get no trigger word"
    assert ds[0]["caption"] == "sks, a dog" and ds[2]["caption"] == "sks dog"


def test_dataset_error_and_helpers_import_without_torch():
    code = (
        "import sys\n"
        "from trainer.data import DatasetError, ImageRecord\n"
        "from trainer.data import images, captions, scan, buckets\n"
        "from trainer.errors import user_facing_errors\n"
        "assert DatasetError in user_facing_errors()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_crop_top_left_matches_the_pixels_with_flips(tmp_path):
    """SDXL's crop conditioning must describe the crop actually taken, in the (possibly mirrored) image."""
    image = Image.linear_gradient("L").resize((100, 64)).convert("RGB")  # left-right asymmetric
    image.paste((255, 0, 0), (0, 0, 7, 64))
    image.save(tmp_path / "g.png")
    ds = build_train_dataset(cfg_for(tmp_path, crop="random", flip=True, repeats=12), seed=3)
    resized = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(127.5).sub(1.0)
    flips = 0
    for i in range(len(ds)):
        item = ds[i]
        top, left = item["crop_top_left"]
        plain = resized[:, top : top + 64, left : left + 64]
        mirrored = resized.flip(-1)[:, top : top + 64, left : left + 64]
        if torch.equal(item["pixel_values"], mirrored) and not torch.equal(item["pixel_values"], plain):
            flips += 1
        else:
            assert torch.equal(item["pixel_values"], plain), f"item {i}: pixels do not match crop {top, left}"
    assert 0 < flips < len(ds), "some but not all items should be flipped"


def test_pixels_key_changes_with_training_size(tmp_path):
    make_image(tmp_path / "a.png", size=(120, 60))
    keys = {build_train_dataset(cfg_for(tmp_path, **kw), seed=0).pixels_key(0)
            for kw in ({}, {"resolution": 32}, {"bucketing": True})}
    assert len(keys) == 3, f"latent cache keys must differ when the pixels differ: {keys}"
