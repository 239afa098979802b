"""Aspect-ratio buckets: sd-scripts' table, scaling for small resolutions, assignment, real shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer.config import Config, DatasetConfig, validate
from trainer.data import build_train_dataset, collate_batch, epoch_batches
from trainer.data.buckets import assign_bucket, bucket_limits, crop_box, make_buckets, nearest_bucket


def test_kohya_defaults_at_512_match_sd_scripts():
    limits = bucket_limits(512, 256, 1024, 64)
    assert (limits.min_side, limits.max_side, limits.step) == (256, 1024, 64)
    buckets = make_buckets(limits)
    # Values from sd-scripts' make_bucket_resolutions((512, 512), 256, 1024, 64).
    for expected in [(256, 1024), (320, 768), (384, 640), (448, 576), (512, 512), (576, 448), (1024, 256)]:
        assert expected in buckets, f"{expected} missing from {buckets}"
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in buckets)


def test_small_resolution_scales_limits():
    limits = bucket_limits(64, 256, 1024, 64)
    assert (limits.min_side, limits.max_side, limits.step) == (32, 128, 8)
    buckets = make_buckets(limits)
    assert (64, 64) in buckets and (32, 128) in buckets and (128, 32) in buckets
    assert all(w * h <= 64 * 64 and w % 8 == 0 and h % 8 == 0 for w, h in buckets)


def test_nearest_bucket_minimises_aspect_error():
    buckets = make_buckets(bucket_limits(512, 256, 1024, 64))
    chosen = nearest_bucket(1600, 900, buckets)
    best = min(abs(w / h - 16 / 9) for w, h in buckets)
    assert abs(chosen[0] / chosen[1] - 16 / 9) == best
    assert nearest_bucket(1000, 1000, buckets) == (512, 512)


def test_no_upscale_keeps_small_images_small():
    limits = bucket_limits(64, 256, 1024, 64)
    buckets = make_buckets(limits)
    assert assign_bucket(50, 30, limits, buckets, no_upscale=True) == (48, 24)
    assert assign_bucket(50, 30, limits, buckets, no_upscale=False) in buckets
    assert assign_bucket(400, 400, limits, buckets, no_upscale=True) == (64, 64), "large images use shared buckets"


def test_crop_box_covers_bucket():
    box = crop_box(200, 100, (64, 48), None)
    assert box.resized == (96, 48) and (box.left, box.top) == (16, 0)


def test_bucket_validation_messages():
    cfg = Config()
    cfg.dataset.bucket_step = 12
    cfg.dataset.bucket_min, cfg.dataset.bucket_max = 512, 256
    problems = "\n".join(validate(cfg))
    assert "`dataset.bucket_step` must be a positive multiple of 8" in problems
    assert "`dataset.bucket_max` (256) must be at least `dataset.bucket_min` (512)" in problems


def _mixed(folder: Path) -> None:
    for i, size in enumerate([(120, 60), (130, 66), (60, 120), (64, 64), (90, 70), (200, 50)]):
        Image.new("RGB", size, (40 * i, 100, 200)).save(folder / f"{i}.png")


def test_bucket_table_reports_every_bucket(tmp_path):
    _mixed(tmp_path)
    ds = build_train_dataset(DatasetConfig(path=str(tmp_path), bucketing=True, repeats=2), seed=0)
    table = ds.bucket_table()
    assert sum(r.images for r in table.rows) == 6 and sum(r.items_per_epoch for r in table.rows) == 12
    assert len(table.rows) >= 4, table.format()
    assert "items/epoch" in table.format() and table.to_dict()["limits"]["step"] == 8


@pytest.mark.slow  # loads the builtin model (~10 s on 2 busy cores)
def test_bucketed_batches_run_through_builtin_model(tmp_path):
    """Every bucket at resolution 64 is a shape the builtin VAE and UNet accept, one shape per batch."""
    from trainer.config import ModelConfig
    from trainer.models.loading import load_base_model

    _mixed(tmp_path)
    ds = build_train_dataset(DatasetConfig(path=str(tmp_path), bucketing=True), seed=0)
    model = load_base_model(ModelConfig(base="builtin:tiny-sd"))
    text = torch.zeros(1, 77, 32)
    with torch.no_grad():
        for batch in epoch_batches(ds, 2, seed=0, epoch=0):
            pixels = collate_batch([ds[i] for i in batch])["pixel_values"]  # (B, 3, H, W), one bucket
            latents = model.vae.encode(pixels).latent_dist.mean
            out = model.unet(latents, torch.tensor([10]), encoder_hidden_states=text.expand(len(batch), -1, -1)).sample
            assert out.shape == latents.shape
            assert latents.shape[-2:] == (pixels.shape[-2] // model.vae_scale_factor, pixels.shape[-1] // model.vae_scale_factor)
