"""Perceptual hashes for near-duplicate detection (dHash and aHash, 64 bits each). No torch.

Hand-written because they are a few lines on top of Pillow and the usual package (imagehash) would
pull numpy/scipy/PyWavelets into the UI for two functions. dHash follows Neal Krawetz's "Kind of
Like That" (2013): shrink to 9x8 grayscale, one bit per horizontal gradient sign; aHash ("Looks Like
It", 2011): shrink to 8x8, one bit per pixel above the mean. Two images count as near duplicates only
when BOTH hashes are close, which keeps flat, similar-coloured images from matching on dHash alone, and
their aspect ratios agree: both hashes squash the image to a square first, so the same centred shape at
1:1, 3:1 and 1:3 hashes alike although no one would call those images copies of each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# Bits (of 64) that may differ for a near duplicate: tolerant of re-encoding, resizing and small
# colour shifts; a crop or a moved subject changes far more (checked on the sample set in the tests).
DEFAULT_THRESHOLD = 6
# Relative difference of width/height that a copy may show: a resized copy rounds its sides to whole
# pixels (80x79 for 96x95 is 1.3 %); a different crop or shape differs by far more.
ASPECT_TOLERANCE = 0.05


def dhash(image: Image.Image) -> int:
    small = image.convert("L").resize((9, 8), Image.Resampling.LANCZOS)
    px = small.load()
    bits = 0
    for y in range(8):
        for x in range(8):
            bits = (bits << 1) | (px[x, y] > px[x + 1, y])
    return bits


def ahash(image: Image.Image) -> int:
    small = image.convert("L").resize((8, 8), Image.Resampling.LANCZOS)
    values = list(small.getdata())
    mean = sum(values) / len(values)
    bits = 0
    for v in values:
        bits = (bits << 1) | (v > mean)
    return bits


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


@dataclass(frozen=True)
class ImageHash:
    path: Path
    dhash: int
    ahash: int
    aspect: float = 1.0  # width / height


def image_hash(path: Path, image: Image.Image) -> ImageHash:
    return ImageHash(path, dhash(image), ahash(image), image.width / image.height)


def same_shape(a: ImageHash, b: ImageHash, tolerance: float = ASPECT_TOLERANCE) -> bool:
    """Whether two images have the same aspect ratio, within a resize's rounding."""
    return max(a.aspect, b.aspect) / min(a.aspect, b.aspect) <= 1 + tolerance


def near_duplicate_groups(hashes: list[ImageHash], threshold: int = DEFAULT_THRESHOLD) -> list[list[Path]]:
    """Groups (size >= 2) of images of the same aspect ratio whose dHash and aHash both differ by at most
    ``threshold`` bits.

    All pairs are compared (O(n²) integer ops; about a second for 2,000 images) and joined
    transitively with a small union-find.
    """
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(hashes):
        for j in range(i + 1, len(hashes)):
            b = hashes[j]
            close = hamming(a.dhash, b.dhash) <= threshold and hamming(a.ahash, b.ahash) <= threshold
            if close and same_shape(a, b):
                parent[find(j)] = find(i)
    groups: dict[int, list[Path]] = {}
    for i, h in enumerate(hashes):
        groups.setdefault(find(i), []).append(h.path)
    return [g for g in groups.values() if len(g) > 1]
