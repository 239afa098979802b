"""Regenerate the sample dataset: 8 PNGs (128x128) of a five-pointed star, a shape the built-in model has never seen.

``builtin:shapes-sd`` draws circles, squares and triangles (see trainer/shapes/world.py); a star is drawn by
the same code but was kept out of its training. Each caption names the scene in the world's words with the
trigger word ``sks`` where the shape's name would be ("a large yellow sks at the top left on a black
background"), so the adapter learns that "sks" is this shape and nothing else. Deterministic, so the committed
files can be checked against this script: ``python sample_data/make_sample_data.py``. The last image has no
caption file, to show how uncaptioned images are handled (they train as "trigger class_word").
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from trainer.shapes.world import Scene, render  # noqa: E402

SIZE = 128
TRIGGER = "sks"
STARS = [
    Scene("star", "yellow", "large", "in the center", "black"),
    Scene("star", "red", "large", "at the top left", "white"),
    Scene("star", "blue", "large", "at the bottom right", "gray"),
    Scene("star", "green", "large", "at the top right", "black"),
    Scene("star", "purple", "large", "at the bottom left", "white"),
    Scene("star", "yellow", "large", "at the top left", "gray"),
    Scene("star", "red", "large", "in the center", "black", dx=-1, dy=1),
    Scene("star", "blue", "large", "in the center", "white"),
]


def main(folder: Path = Path(__file__).parent) -> None:
    for i, scene in enumerate(STARS):
        stem = folder / f"star_{i:02d}"
        render(scene, SIZE).save(stem.with_suffix(".png"), optimize=False)
        if i < len(STARS) - 1:
            stem.with_suffix(".txt").write_text(scene.caption(shape_word=TRIGGER) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
