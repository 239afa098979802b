"""Regenerate the sample dataset: 8 PNGs (96x96) of a bright red disk on a blue background.

Deterministic (Pillow only, no randomness), so the committed files can be checked against this script:
``python sample_data/make_sample_data.py``. The subject is deliberately distinctive — saturated red on
saturated blue — so a LoRA trained on it measurably pulls samples toward red-on-blue. The last image has
no caption file, to show how uncaptioned images are handled (they train as "trigger class_word").
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 96
RED = (230, 20, 20)
BLUE = (20, 40, 200)

# (centre x, centre y, radius, position words for the caption); None caption = no .txt file.
DISKS = [
    (48, 48, 30, "centered, large"),
    (48, 48, 16, "centered, small"),
    (26, 26, 18, "top left"),
    (70, 26, 18, "top right"),
    (26, 70, 18, "bottom left"),
    (70, 70, 18, "bottom right"),
    (48, 24, 14, "top, small"),
    (48, 70, 22, None),
]


def make_image(cx: int, cy: int, radius: int) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), BLUE)
    ImageDraw.Draw(image).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=RED)
    return image


def main(folder: Path = Path(__file__).parent) -> None:
    for i, (cx, cy, radius, where) in enumerate(DISKS):
        stem = folder / f"red_circle_{i:02d}"
        make_image(cx, cy, radius).save(stem.with_suffix(".png"), optimize=False)
        if where is not None:
            stem.with_suffix(".txt").write_text(f"a red circle on a blue background, {where}\n", encoding="utf-8")


if __name__ == "__main__":
    main()
