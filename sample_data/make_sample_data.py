"""Regenerate the sample dataset: 8 PNGs (128x128) of a cross (a plus sign), a shape the built-in model has never seen.

``builtin:shapes-sd`` draws circles, squares and triangles (see trainer/shapes/world.py); a cross is drawn by
the same code but was kept out of its training. Each caption names the scene in the world's words with the
trigger word ``sks`` where the shape's name would be ("a large yellow sks at the top left on a black
background"), so the adapter learns that "sks" is this shape and nothing else. Deterministic, so the committed
files can be checked against this script: ``python sample_data/make_sample_data.py``. The last image has no
caption file, to show how uncaptioned images are handled (they train as "trigger class_word").

``sample_regularization/`` (beside this folder) holds the regularization images of the first run
(DreamBooth's prior preservation, ``dataset.reg_path``): each cross's scene drawn as a circle, a square and a
triangle, captioned with those words. They differ from the crosses in the shape and its word only, so
the adapter learns that "sks" means a cross while "circle" keeps meaning a circle; without them it
draws crosses for every shape word.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from trainer.presets import DEMO_REGULARIZATION  # noqa: E402
from trainer.shapes.world import BASE_SHAPES, Scene, render  # noqa: E402

SIZE = 128
TRIGGER = "sks"
REGULARIZATION = DEMO_REGULARIZATION  # the folder beside sample_data/ that the demo's `dataset.reg_path` names
CROSSES = [
    Scene("cross", "yellow", "large", "in the center", "black"),
    Scene("cross", "red", "large", "at the top left", "white"),
    Scene("cross", "blue", "large", "at the bottom right", "gray"),
    Scene("cross", "green", "large", "at the top right", "black"),
    Scene("cross", "purple", "large", "at the bottom left", "white"),
    Scene("cross", "yellow", "large", "at the top left", "gray"),
    Scene("cross", "red", "large", "in the center", "black", dx=-1, dy=1),
    Scene("cross", "blue", "large", "in the center", "white"),
]


def regularization_scenes() -> list[Scene]:
    """Each cross's scene with the shapes the base knows: same colour, size, place and background."""
    return [replace(cross, shape=shape) for cross in CROSSES for shape in BASE_SHAPES]


def main(folder: Path = Path(__file__).parent, regularization: Path | None = None) -> None:
    """Write the crosses into ``folder`` and their regularization images into ``regularization``
    (default: ``sample_regularization/`` beside ``folder``)."""
    for i, scene in enumerate(CROSSES):
        stem = folder / f"cross_{i:02d}"
        render(scene, SIZE).save(stem.with_suffix(".png"), optimize=False)
        if i < len(CROSSES) - 1:
            stem.with_suffix(".txt").write_text(scene.caption(shape_word=TRIGGER) + "\n", encoding="utf-8")
    regularization = regularization or folder.parent / REGULARIZATION
    regularization.mkdir(exist_ok=True)
    for i, scene in enumerate(regularization_scenes()):
        stem = regularization / f"{scene.shape}_{i // len(BASE_SHAPES):02d}"
        render(scene, SIZE).save(stem.with_suffix(".png"), optimize=False)
        stem.with_suffix(".txt").write_text(scene.caption() + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
