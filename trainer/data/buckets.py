"""Aspect-ratio buckets (sd-scripts' scheme) and the resize-and-crop geometry. No torch.

Buckets follow sd-scripts' ``make_bucket_resolutions``: every (w, h) with sides on the step grid
between min and max and area at most resolution², plus the square; each image goes to the bucket whose
aspect ratio is nearest its own. Those limits (256/1024/64) are meant for 512-1024 px training, so
below resolution 512 they are scaled by resolution/512 (the step never below 8, a multiple of 8): the
builtin model's 64 px then gets 32..128 px buckets in steps of 8 instead of one degenerate bucket.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

REFERENCE_RESOLUTION = 512


@dataclass(frozen=True)
class BucketLimits:
    """The effective bucket settings after scaling for the resolution."""

    resolution: int
    min_side: int
    max_side: int
    step: int

    @property
    def max_area(self) -> int:
        return self.resolution * self.resolution


def bucket_limits(resolution: int, bucket_min: int, bucket_max: int, bucket_step: int) -> BucketLimits:
    scale = min(1.0, resolution / REFERENCE_RESOLUTION)
    step = max(8, int(bucket_step * scale) // 8 * 8)
    min_side = max(step, int(bucket_min * scale) // step * step)
    max_side = max(resolution, int(math.ceil(bucket_max * scale / step)) * step)
    return BucketLimits(resolution, min(min_side, resolution), max_side, step)


def make_buckets(limits: BucketLimits) -> list[tuple[int, int]]:
    """All (width, height) buckets for ``limits``, sorted; port of sd-scripts' make_bucket_resolutions."""
    buckets = {(limits.resolution, limits.resolution)}
    width = limits.min_side
    while width <= limits.max_side:
        height = min(limits.max_side, limits.max_area // width // limits.step * limits.step)
        if height >= limits.min_side:
            buckets.add((width, height))
            buckets.add((height, width))
        width += limits.step
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (first of equals, in sorted order)."""
    aspect = width / height
    return min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))


def assign_bucket(width: int, height: int, limits: BucketLimits, buckets: list[tuple[int, int]], no_upscale: bool) -> tuple[int, int]:
    """The training size of one image.

    With ``no_upscale`` an image with fewer than resolution² pixels gets its own bucket, its size
    rounded down to the step (sd-scripts' behaviour), so it is never enlarged; larger images use the
    shared buckets.
    """
    if no_upscale and width * height <= limits.max_area:
        step = limits.step
        return max(step, width // step * step), max(step, height // step * step)
    return nearest_bucket(width, height, buckets)


@dataclass(frozen=True)
class CropBox:
    """Resize the image to ``resized`` (w, h), then crop ``size`` (w, h) at (left, top)."""

    resized: tuple[int, int]
    left: int
    top: int
    size: tuple[int, int]


def crop_box(width: int, height: int, bucket: tuple[int, int], rng: random.Random | None) -> CropBox:
    """Scale so the image covers the bucket (shorter side to the bucket), then crop centre or random."""
    bw, bh = bucket
    scale = max(bw / width, bh / height)
    rw, rh = max(bw, round(width * scale)), max(bh, round(height * scale))
    if rng is None:
        left, top = (rw - bw) // 2, (rh - bh) // 2
    else:
        left, top = rng.randint(0, rw - bw), rng.randint(0, rh - bh)
    return CropBox((rw, rh), left, top, (bw, bh))


@dataclass
class BucketRow:
    width: int
    height: int
    images: int
    items_per_epoch: int


@dataclass
class BucketTable:
    """How many images (and items per epoch) each bucket holds; the loop reports it before training."""

    rows: list[BucketRow]
    limits: BucketLimits | None

    def to_dict(self) -> dict:
        return {
            "buckets": [vars(r) for r in self.rows],
            "limits": vars(self.limits) if self.limits else None,
        }

    def format(self) -> str:
        lines = ["bucket (w x h)   aspect  images  items/epoch"]
        for r in self.rows:
            lines.append(f"{r.width:>5} x {r.height:<6}  {r.width / r.height:6.2f}  {r.images:6d}  {r.items_per_epoch:11d}")
        return "\n".join(lines)


def summarize_buckets(sizes: list[tuple[int, int]], items: list[tuple[int, int]], limits: BucketLimits | None) -> BucketTable:
    """Build the table from each record's bucket and each epoch item's bucket."""
    images, per_epoch = Counter(sizes), Counter(items)
    rows = [BucketRow(w, h, images[(w, h)], per_epoch[(w, h)]) for (w, h) in sorted(images)]
    return BucketTable(rows, limits)


class _Sized(Protocol):
    width: int
    height: int
    bucket: tuple[int, int]


def assign_buckets(records: Sequence[_Sized], resolution: int, bucketing: bool, bucket_min: int, bucket_max: int,
                   bucket_step: int, no_upscale: bool) -> BucketLimits | None:
    """Set ``bucket`` on every record (the square resolution without bucketing); returns the limits used."""
    if not bucketing:
        for r in records:
            r.bucket = (resolution, resolution)
        return None
    limits = bucket_limits(resolution, bucket_min, bucket_max, bucket_step)
    buckets = make_buckets(limits)
    for r in records:
        r.bucket = assign_bucket(r.width, r.height, limits, buckets, no_upscale)
    return limits
